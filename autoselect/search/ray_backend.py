"""The cluster backend: the same study, run through Ray Tune with Optuna as its search algorithm.

What differs from the local backend is only who runs the trials:

* **Search algorithm**: Tune's ``OptunaSearch`` over the same parameters, the same sampler and the same SQLite
  study (``study.db``) as the local backend, so that the outputs, ``--resume`` and optuna-dashboard are the same.
  Resuming goes through the Optuna storage: finished trials stay, trials a killed run left running are marked
  failed and queued again (:func:`autoselect.search.optuna_backend.open_study`).
* **Data**: the FP32 model, its layer graph, the data sets and the plan builder reach the trials through Ray's
  object store (``tune.with_parameters``: put once, fetched once per node). Data in memory travels there as pixels;
  a streamed folder (:class:`~autoselect.data.FileImageSet`) by reference: its root and relative paths only, read
  by each trial from a path every node must mount at the same place (shared storage, as clusters have), and a
  caller's loader factory as the factory. ``summary.json`` gives the bytes shipped (``ray.setup_bytes``, of which
  ``ray.data_bytes`` are the data).
  Latency is served by one actor on the driver's node, which owns the per-configuration cache (measuring on the
  exported model where the target runs here, else the cost model), so that each configuration is timed once for
  the whole cluster.
* **Pruning**: trials report their intermediate validation top-1 to Tune; a Tune scheduler applies the same Pareto
  rule as the local backend (:class:`autoselect.search.pruning.ParetoPruner`) and stops losing trials.
* **Faults**: a trial whose worker process or node dies is retried (``max_failures`` times) from the start, then
  recorded as failed; the search goes on and every finished trial is in the results.

Ray is imported here only; ``autoselect search`` without ``--backend ray`` never imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from tqdm.auto import tqdm

from autoselect.errors import AutoselectError
from autoselect.search.latency import LatencyModel
from autoselect.search.objective import ProxyBudget, TrialEvaluator
from autoselect.search.optuna_backend import finished_trials
from autoselect.search.pruning import ParetoPruner
from autoselect.search.ray_auth import local_instance_auth
from autoselect.search.ray_client import is_client_address

__all__ = ["RayRun", "TrialSetup", "connect", "ray_session", "run_ray"]

METRICS = ["top1", "retrained", "latency"]
MODES = ["max", "min", "min"]


@dataclass
class TrialSetup:
    """Everything a trial needs, shipped once to the object store and shared by every trial on every node."""

    model: Any
    graph: Any
    train: Any
    val: Any
    budget: ProxyBudget
    make_plan: Callable[[Mapping[str, Any]], Any]
    seed: int
    threads: int = 1  # torch threads per trial (run_ray sets it from the trial's CPUs)
    gpus: float = 0.0
    ptq_cache: dict[str, tuple[float, str]] | None = None  # the driver's step-0 results per configuration
    # the driver's learned roundings (the profile's, MethodContext.reuse): a trial reuses them as it would locally,
    # instead of learning them again at the proxy's shorter rounding effort
    reuse: dict | None = None


@dataclass
class RayRun:
    """What the Ray run adds to the summary."""

    ran: int
    address: str
    nodes: int
    nodes_used: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    retried: int
    errored: int
    seconds: float
    setup_bytes: int = 0  # the TrialSetup put in the object store, once for all trials
    data_bytes: int = 0  # of which the training and validation sets

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _LatencyService:
    """One per search, on the driver's node: the latency cache of the whole cluster."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model

    def latency(self, specs: Mapping[str, Any]) -> float:
        return self.model(specs)

    def state(self) -> tuple[dict[str, float], int]:
        return dict(self.model.cache), self.model.measurements


class _RemoteLatency:
    """Looks like a :class:`LatencyModel` to :class:`TrialEvaluator`; asks the driver-side actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __call__(self, specs: Mapping[str, Any]) -> float:
        return float(ray.get(self.actor.latency.remote(specs)))


def _trainable(config: dict[str, Any], setup: TrialSetup, latency: Any) -> None:
    """One trial on a Ray worker: apply the plan, run the QAT proxy, report every evaluation to Tune."""
    import torch

    torch.set_num_threads(max(1, setup.threads))
    device = "cuda" if setup.gpus > 0 and torch.cuda.is_available() else "cpu"
    evaluator = TrialEvaluator(setup.model, setup.graph, setup.train, setup.val, setup.budget,
                               _RemoteLatency(latency), device=device, seed=setup.seed,  # type: ignore[arg-type]
                               ptq_cache=setup.ptq_cache, reuse=dict(setup.reuse or {}))
    node = ray.get_runtime_context().get_node_id()
    for data in (setup.train, setup.val):
        check = getattr(data, "check_readable", None)
        if check is not None:
            check(f"Ray node {node}")
    last = setup.budget.steps

    def report(step: int, top1: float, retrained: float, latency_: float) -> bool:
        if step > 0 and step >= last:  # the final evaluation is reported below, with the trial's totals
            return False
        tune.report({"step": step, "top1": top1, "retrained": retrained, "latency": latency_, "final": False,
                     "node": node})
        return False  # the scheduler, not the trial, decides to stop it

    out = evaluator.evaluate(setup.make_plan(config), report)
    tune.report({"step": out.steps, "top1": out.top1, "retrained": out.retrained, "latency": out.latency,
                 "final": True, "ptq_top1": out.ptq_top1, "seconds": out.seconds, "steps": out.steps, "node": node,
                 "calib_seconds": out.calib_seconds, "train_seconds": out.train_seconds, "size_mb": out.size_mb,
                 "correct": out.correct})


class _StudySearch(OptunaSearch):
    """Tune's OptunaSearch writing what the local backend writes into the study: each trial's history of
    intermediate top-1, its timing, the node it ran on, its retries; a trial stopped by the scheduler is
    PRUNED (OptunaSearch would record its last intermediate values as a COMPLETE result)."""

    def __init__(self, study: optuna.Study, parameters: Mapping[str, Sequence[Any]]) -> None:
        space: dict[str, optuna.distributions.BaseDistribution] = {
            k: optuna.distributions.CategoricalDistribution(list(v)) for k, v in parameters.items()}
        super().__init__(space=space, metric=list(METRICS), mode=list(MODES), sampler=study.sampler,
                         study_name=study.study_name, storage=study._storage)
        self._history: dict[str, dict[str, float]] = {}

    def ot_trial(self, trial_id: str) -> optuna.Trial | None:
        return self._ot_trials.get(trial_id)

    def is_prior(self, trial_id: str) -> bool:
        t = self.ot_trial(trial_id)
        return t is not None and t.user_attrs.get("source") == "prior"

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        t = self.ot_trial(trial_id)
        if t is None or "top1" not in result:
            return
        hist = self._history.setdefault(trial_id, {})
        hist[str(int(result["step"]))] = float(result["top1"])
        t.set_user_attr("history", hist)
        t.set_user_attr("retrained", float(result["retrained"]))
        t.set_user_attr("latency", float(result["latency"]))
        t.set_user_attr("node", result.get("node"))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        t = self.ot_trial(trial_id)
        if t is None or trial_id in self._completed_trials:
            return
        if result and "top1" in result:  # Tune does not pass on the result that made its scheduler stop a trial
            self.on_trial_result(trial_id, result)
        if result and result.get("final") and not error:
            t.set_user_attr("key", json.dumps(t.params, sort_keys=True))
            for k in ("ptq_top1", "seconds", "steps", "calib_seconds", "train_seconds", "size_mb", "correct"):
                if k in result:
                    t.set_user_attr(k, result[k])
        elif result and "top1" in result and not error:  # stopped by the scheduler
            t.set_user_attr("pruned_at", int(result["step"]))
            assert self._ot_study is not None
            self._ot_study.tell(t, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        else:
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)

    def note_retry(self, trial_id: str) -> None:
        t = self.ot_trial(trial_id)
        if t is not None:
            t.set_user_attr("retries", int(t.user_attrs.get("retries", 0)) + 1)

    # The study lives in SQLite and resumes from there; Tune's pickled copy of the searcher is not needed.
    def save(self, checkpoint_path: str) -> None:  # noqa: D401
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None


class _ParetoScheduler(FIFOScheduler):
    """Stops a trial that is losing to a finished, no-more-costly one (the local backend's rule)."""

    def __init__(self, pruner: ParetoPruner, searcher: _StudySearch, study: optuna.Study) -> None:
        super().__init__()
        self.pruner, self.searcher, self.study = pruner, searcher, study

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("final") or "top1" not in result or self.searcher.is_prior(trial.trial_id):
            return TrialScheduler.CONTINUE
        stop = self.pruner.should_prune(int(result["step"]), float(result["top1"]), float(result["retrained"]),
                                        float(result["latency"]), finished_trials(self.study))
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE


class _Progress(tune.Callback):
    """The local backend's progress: a bar of finished trials, a line per trial, the best so far."""

    def __init__(self, searcher: _StudySearch, study: optuna.Study, bar: tqdm, progress: bool,
                 describe: Callable[[optuna.Study], str] | None,
                 on_finish: Callable[[optuna.Study], None] | None = None) -> None:
        self.searcher, self.study, self.bar, self.progress, self.describe = searcher, study, bar, progress, describe
        self.on_finish = on_finish
        self.retried = 0
        self.errored = 0

    def _done(self, trial: Any, what: str) -> None:
        self.bar.update(1)
        if self.on_finish is not None:
            self.on_finish(self.study)
        t = self.searcher.ot_trial(trial.trial_id)
        number = t.number if t is not None else trial.trial_id
        if self.progress:
            self.bar.write(f"trial {number}: {what}")
            if self.describe is not None:
                self.bar.set_postfix_str(self.describe(self.study))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        if r.get("final"):
            what = (f"top-1 {r['top1']:.2f}%  retrained {100 * r['retrained']:.1f}%  latency {r['latency']:.4g}")
        elif "top1" in r:
            what = f"pruned at step {int(r['step'])} (top-1 {r['top1']:.2f}%)"
        else:
            what = "stopped"
        self._done(trial, what)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retried += 1
        self.searcher.note_retry(trial.trial_id)
        if self.progress:
            self.bar.write(f"trial {trial.trial_id}: its worker failed; retrying it")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errored += 1
        self._done(trial, "failed (retries exhausted)")


def _resolve(address: str) -> str:
    """``auto`` as Ray resolves it: $RAY_ADDRESS, else the cluster last started on this machine."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS", "")
    if not found:
        import tempfile
        from pathlib import Path

        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        found = current.read_text().strip() if current.is_file() else ""
    if not found:
        raise AutoselectError("--address auto: no Ray cluster was started on this machine (run `ray start --head`, "
                              "or give HOST:PORT)")
    return found


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init waits for minutes on an address where no cluster listens: fail fast on a closed port."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise AutoselectError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise AutoselectError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                              "(is `ray start --head` running there?)") from None


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray connected for the duration of a search (see :func:`connect`); shut down after if this started it."""
    with contextlib.ExitStack() as stack:
        if not address:  # a local instance: its own token, not one written into ~/.ray (see ray_auth)
            stack.enter_context(local_instance_auth())
        started = connect(address)
        try:
            yield
        finally:
            if started:
                ray.shutdown()


def _init_client(address: str, kw: dict[str, Any], attempts: int = 3) -> None:
    """Ray Client's server sometimes refuses a first connection with an empty "Initialization failure" while the
    process that will serve this client starts (seen on a loaded 2-core machine): try again a few times."""
    for attempt in range(attempts):
        try:
            ray.init(address=address, **kw)
            return
        except ConnectionAbortedError:
            if attempt == attempts - 1:
                raise
            time.sleep(5.0)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), or start a local Ray instance when it is None.
    Returns whether this call started Ray (and the caller should shut it down)."""
    if ray.is_initialized():
        return False
    client = is_client_address(address)
    if address:
        _check_reachable(address.removeprefix("ray://") if client else _resolve(address))
    # a Ray Client's search runs in a task on the head node: its progress reaches this terminal as worker logs
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": client}
    if not client:
        kw["include_dashboard"] = False
    try:
        if client:
            _init_client(str(address), kw)
        elif address:
            ray.init(address=address, **kw)
        else:
            ray.init(address="local", **kw)  # a new instance, whatever the address file says
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ""
        if "auth" in repr(exc.__cause__).lower() or "token" in str(exc).lower():
            hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and give this machine the "
                    "cluster's token: RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)")
        msg = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise AutoselectError(f"cannot start or reach {where}: {msg}{hint}") from None
    return True


def run_ray(
    study: optuna.Study,
    *,
    parameters: Mapping[str, Sequence[Any]],
    setup: TrialSetup,
    latency: LatencyModel,
    n_trials: int,
    warm_start: Sequence[Mapping[str, Any]] = (),
    pruner: ParetoPruner | None = None,
    address: str | None = None,  # for the summary only: the connection is ray_session's
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_failures: int = 1,
    storage_path: str,
    progress: bool = True,
    describe: Callable[[optuna.Study], str] | None = None,
    on_finish: Callable[[optuna.Study], None] | None = None,
) -> RayRun:
    """Run trials through Ray Tune until the study holds ``n_trials`` finished ones. ``latency``'s cache is
    updated with what the cluster measured."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    t0 = time.perf_counter()
    if not ray.is_initialized():
        raise AutoselectError("run_ray needs a Ray connection: use it inside ray_session(address)")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune status tables: the search prints its own progress
    total_cpus = float(ray.cluster_resources().get("CPU", 0))
    total_gpus = float(ray.cluster_resources().get("GPU", 0))
    if total_cpus < cpus_per_trial:
        raise AutoselectError(f"the cluster has {total_cpus:g} CPUs, fewer than --cpus-per-trial "
                              f"{cpus_per_trial:g}")
    if gpus_per_trial > total_gpus:
        raise AutoselectError(f"the cluster has {total_gpus:g} GPUs, fewer than --gpus-per-trial "
                              f"{gpus_per_trial:g}")
    concurrent = max_concurrent or max(1, int(total_cpus // cpus_per_trial))  # more than fit: Tune queues
    if not study.trials:
        for params in list(warm_start)[:n_trials]:
            study.enqueue_trial(dict(params), user_attrs={"source": "prior"}, skip_if_exists=True)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=done_states))
    remaining = max(0, n_trials - finished)

    here = ray.get_runtime_context().get_node_id()
    service: Any = ray.remote(num_cpus=0)(_LatencyService).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote(latency)
    searcher = _StudySearch(study, parameters)
    bar = tqdm(total=n_trials, initial=finished, desc="search (ray)", unit="trial", disable=not progress)
    callback = _Progress(searcher, study, bar, progress, describe, on_finish)
    setup = replace(setup, threads=max(1, int(cpus_per_trial)), gpus=gpus_per_trial)
    from ray import cloudpickle

    setup_bytes = len(cloudpickle.dumps(setup))
    data_bytes = len(cloudpickle.dumps(setup.train)) + len(cloudpickle.dumps(setup.val))
    trainable = tune.with_resources(tune.with_parameters(_trainable, setup=setup, latency=service),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    nodes_used: set[str] = set()
    try:
        if remaining:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                            # reusing trial actors kept every trial on one node of a two-node
                                            # cluster (tests/test_ray.py): a fresh worker per trial spreads them
                                            max_concurrent_trials=concurrent, reuse_actors=False,
                                            scheduler=_ParetoScheduler(pruner or ParetoPruner(), searcher, study)),
                run_config=tune.RunConfig(storage_path=storage_path, verbose=0, callbacks=[callback],
                                          failure_config=tune.FailureConfig(max_failures=max_failures)),
            )
            grid = tuner.fit()
            for i in range(len(grid)):
                r = grid[i]
                if r.metrics and r.metrics.get("node"):
                    nodes_used.add(r.metrics["node"])
    finally:
        bar.close()
    cache, measured = ray.get(service.state.remote())
    latency.cache.update(cache)
    latency.measurements += measured
    ray.kill(service)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return RayRun(ran=remaining, address=address or "local", nodes=nodes, nodes_used=len(nodes_used),
                  max_concurrent=concurrent, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                  retried=callback.retried, errored=callback.errored, seconds=time.perf_counter() - t0,
                  setup_bytes=setup_bytes, data_bytes=data_bytes)
