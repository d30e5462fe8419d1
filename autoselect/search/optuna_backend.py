"""The local backend: an Optuna study with three objectives, stored in SQLite so that a killed search resumes.

The backend sees parameters, plans and an evaluation callable, never a model: ``make_plan(params) -> Plan`` and
``evaluate(plan, report) -> Outcome`` come from :mod:`autoselect.search.run`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from tqdm.auto import tqdm

from autoselect.errors import AutoselectError
from autoselect.search.interrupt import TrialInterrupt
from autoselect.search.objective import Outcome, Pruned
from autoselect.search.pruning import Finished, ParetoPruner

__all__ = ["SAMPLERS", "finished_trials", "open_study", "requeue_unfinished", "run_optuna", "trials_frame"]

SAMPLERS = ("tpe", "random", "nsga2")
DIRECTIONS: list[Any] = ["maximize", "minimize", "minimize"]  # top-1, retrained fraction, latency
METRIC_NAMES = ("int8_top1", "retrained_fraction", "latency")


def _sampler(name: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, startup))
    raise AutoselectError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def open_study(storage_path: str | Path, *, resume: bool, sampler: str = "tpe", seed: int = 0, startup: int = 8,
               study_name: str = "autoselect") -> optuna.Study:
    """Create the study in ``storage_path`` (SQLite), or reopen it with ``resume``. A fresh search refuses a
    file that already holds trials; a resumed one marks trials a killed run left RUNNING as failed and queues
    their parameters again."""
    path = Path(storage_path)
    exists = path.is_file()
    if resume and not exists:
        raise AutoselectError(f"nothing to resume: {path} does not exist")
    url = f"sqlite:///{path.resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if exists and not resume:
        try:
            old = optuna.load_study(study_name=study_name, storage=url)
            n = len(old.trials)
        except KeyError:
            n = 0
        if n:
            raise AutoselectError(f"{path} already holds a study with {n} trials: pass --resume to continue it, "
                                  "or choose another --out")
    study = optuna.create_study(study_name=study_name, storage=url, directions=DIRECTIONS, load_if_exists=True,
                                sampler=_sampler(sampler, seed, startup))
    with warnings.catch_warnings():  # experimental in Optuna; names the axes in optuna-dashboard
        warnings.simplefilter("ignore")
        study.set_metric_names(list(METRIC_NAMES))
    if resume:
        requeue_unfinished(study)
    return study


def requeue_unfinished(study: optuna.Study) -> list[int]:
    """Queue again, once each, the trials a previous run did not finish: those a killed run left RUNNING (marked
    failed now) and those stopped by Ctrl-C (failed, with ``interrupted``). Returns their numbers."""
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    again = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)):
        if t.number in retried or (t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("interrupted")):
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        attrs = {"retry_of": t.number, **({"source": "prior"} if t.user_attrs.get("source") == "prior" else {})}
        study.enqueue_trial(t.params, user_attrs=attrs)
        again.append(t.number)
    return again


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure (with the KeyboardInterrupt's traceback, then "failed
    with value None") before it re-raises it; the CLI says "interrupted" in one line instead, and ``--resume``
    runs that trial again. Once ``interrupted`` is set, Optuna's lines about the failed trial are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        self.interrupted = self.interrupted or isinstance(exc, KeyboardInterrupt)
        return not (self.interrupted and record.getMessage().startswith("Trial "))


def finished_trials(study: optuna.Study) -> list[Finished]:
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        hist = {int(k): float(v) for k, v in t.user_attrs.get("history", {}).items()}
        out.append(Finished(retrained=t.values[1], latency=t.values[2], history=hist))
    return out


def run_optuna(
    study: optuna.Study,
    *,
    parameters: Mapping[str, Sequence[Any]],
    make_plan: Callable[[Mapping[str, Any]], Any],
    evaluate: Callable[[Any, Callable[[int, float, float, float], bool]], Outcome],
    n_trials: int,
    warm_start: Sequence[Mapping[str, Any]] = (),
    pruner: ParetoPruner | None = None,
    progress: bool = True,
    describe: Callable[[optuna.Study], str] | None = None,
    on_finish: Callable[[optuna.Study], None] | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished (complete or pruned) ones; returns how many ran now.
    ``on_finish(study)`` is called after each trial (the search writes ``trials.csv`` there).

    ``warm_start`` parameter sets are queued first (on a fresh study only) and are never pruned: they anchor the
    front at the prior's parameter budgets, and the larger ones learn slowest at first. A trial whose parameters
    repeat a completed one reuses its values instead of training again.
    """
    pruner = pruner or ParetoPruner()
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if not study.trials:
        for params in list(warm_start)[:n_trials]:
            study.enqueue_trial(dict(params), user_attrs={"source": "prior"}, skip_if_exists=True)
    finished = len(study.get_trials(deepcopy=False, states=done_states))
    remaining = max(0, n_trials - finished)

    guard = TrialInterrupt()

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        # every parameter is drawn before a Ctrl-C can land (one held meanwhile is raised just after), so that the
        # interrupted trial records its whole plan and --resume reruns that plan, not a half-drawn one
        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in parameters.items()}
        try:
            with guard.trial():
                return _objective(trial, params)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # --resume runs it again (requeue_unfinished)
            raise

    def _objective(trial: optuna.Trial, params: dict[str, Any]) -> tuple[float, float, float]:
        key = json.dumps(params, sort_keys=True)
        with guard.held():  # a Ctrl-C inside an SQLite call breaks it ("interrupted"): held until it returns
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for t in done:
            if t.user_attrs.get("key") == key:
                with guard.held(raise_after=False):
                    trial.set_user_attr("key", key)
                    trial.set_user_attr("duplicate_of", t.number)
                    for k in ("history", "ptq_top1", "steps", "size_mb", "correct"):
                        if k in t.user_attrs:
                            trial.set_user_attr(k, t.user_attrs[k])
                    trial.set_user_attr("seconds", 0.0)
                return t.values[0], t.values[1], t.values[2]
        plan = make_plan(params)
        history: dict[str, float] = {}

        def report(step: int, top1: float, retrained: float, latency: float) -> bool:
            history[str(step)] = top1
            with guard.held():  # the study's reads and writes, here and in the pruner
                trial.set_user_attr("history", history)
                trial.set_user_attr("retrained", retrained)
                trial.set_user_attr("latency", latency)
                if trial.user_attrs.get("source") == "prior":
                    return False
                return pruner.should_prune(step, top1, retrained, latency, finished_trials(study))

        try:
            out = evaluate(plan, report)
        except Pruned as p:
            with guard.held(raise_after=False):
                trial.set_user_attr("pruned_at", p.step)
            raise optuna.TrialPruned(str(p)) from None
        with guard.held(raise_after=False):  # the work is done: a Ctrl-C now waits for the next trial
            trial.set_user_attr("key", key)
            trial.set_user_attr("ptq_top1", out.ptq_top1)
            trial.set_user_attr("seconds", out.seconds)
            trial.set_user_attr("calib_seconds", out.calib_seconds)
            trial.set_user_attr("train_seconds", out.train_seconds)
            trial.set_user_attr("size_mb", out.size_mb)
            trial.set_user_attr("steps", out.steps)
            if out.correct is not None:
                trial.set_user_attr("correct", out.correct)
        return out.top1, out.retrained, out.latency

    bar = tqdm(total=n_trials, initial=finished, desc="search", unit="trial", disable=not progress)

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(1)
        if on_finish is not None:
            on_finish(study)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            v = trial.values
            line = f"trial {trial.number}: top-1 {v[0]:.2f}%  retrained {100 * v[1]:.1f}%  latency {v[2]:.4g}"
            if "duplicate_of" in trial.user_attrs:
                line += f"  (same plan as trial {trial.user_attrs['duplicate_of']})"
        else:
            hist = trial.user_attrs.get("history", {})
            last = max(hist, key=int) if hist else None
            line = f"trial {trial.number}: {trial.state.name.lower()}"
            if last is not None:
                line += f" at step {last} (top-1 {hist[last]:.2f}%)"
        if progress:
            bar.write(line)
            if describe is not None:
                bar.set_postfix_str(describe(study))
    quiet = _NoInterruptTraceback()
    handlers = logging.getLogger("optuna").handlers  # records from optuna's modules reach these by propagation
    for h in handlers:
        h.addFilter(quiet)
    try:
        with guard.installed():
            study.optimize(objective, n_trials=remaining, callbacks=[on_trial], gc_after_trial=False)
    finally:
        for h in handlers:
            h.removeFilter(quiet)
        bar.close()
        if on_finish is not None:  # also after Ctrl-C: the interrupted trial is listed
            on_finish(study)
    return remaining


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial: number, state, the three objectives (the last reported top-1 for pruned ones), timing,
    where it came from (the trial it reruns, after a kill or Ctrl-C; whether Ctrl-C stopped it), (ray backend)
    its retries and the Ray node it ran on, its parameters as JSON, and its per-image validation results
    (``val_correct``, :func:`autoselect.search.noise.pack`; complete trials only)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.WAITING:
            continue
        hist = t.user_attrs.get("history", {})
        if t.state == optuna.trial.TrialState.COMPLETE:
            top1, retrained, latency = t.values
        elif t.state == optuna.trial.TrialState.PRUNED and hist:
            top1 = hist[max(hist, key=int)]
            retrained, latency = t.user_attrs.get("retrained"), t.user_attrs.get("latency")
        else:
            top1 = retrained = latency = None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "top1": top1, "retrained": retrained,
                     "latency": latency, "ptq_top1": t.user_attrs.get("ptq_top1"),
                     "seconds": t.user_attrs.get("seconds"), "calib_seconds": t.user_attrs.get("calib_seconds"),
                     "train_seconds": t.user_attrs.get("train_seconds"), "size_mb": t.user_attrs.get("size_mb"),
                     "source": t.user_attrs.get("source", "sampler"),
                     "duplicate_of": t.user_attrs.get("duplicate_of"), "retry_of": t.user_attrs.get("retry_of"),
                     "interrupted": bool(t.user_attrs.get("interrupted", False)),
                     "retries": t.user_attrs.get("retries", 0),
                     "node": t.user_attrs.get("node"), "params": json.dumps(t.params, sort_keys=True),
                     "val_correct": t.user_attrs.get("correct")})
    return pd.DataFrame(rows, columns=["trial", "state", "top1", "retrained", "latency", "ptq_top1", "seconds",
                                       "calib_seconds", "train_seconds", "size_mb", "source", "duplicate_of",
                                       "retry_of", "interrupted", "retries", "node", "params", "val_correct"])
