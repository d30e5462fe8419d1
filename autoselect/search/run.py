"""``search()``: profile → space → prior → study → Pareto front → chosen plan. The wiring behind
``autoselect search``; each stage lives in its own module.

Outputs in ``out``: ``study.db`` (Optuna SQLite; opens in optuna-dashboard), ``profile/`` (the sensitivity report,
reused on ``--resume``), ``latency_cache.json``, ``trials.csv``, ``pareto.csv``, ``pareto.png``, ``plan.json``
(the chosen plan), ``plans/trial_N.json`` (every complete trial's plan), ``plans/all_frozen.json`` and
``plans/full_qat.json`` (the references of ``autoselect confirm``), ``fidelity.csv`` / ``fidelity.png`` (how well
each profile metric predicted the groups' measured QAT benefit: :mod:`autoselect.search.fidelity`) and
``summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from autoselect._io import atomic_path, output_dir
from autoselect.data.sources import MEMORY_BYTES
from autoselect.errors import AutoselectError
from autoselect.quant.methods import with_defaults
from autoselect.search.bits import BitBudget
from autoselect.search.latency import LatencyModel
from autoselect.search.objective import ProxyBudget, TrialEvaluator, measure_export_latency
from autoselect.search.noise import unpack
from autoselect.search.pareto import Constraints, choose, hypervolume, near_best, pareto_mask, verdict
from autoselect.search.prior import group_sensitivity, narrow, smooth_candidates, warm_starts
from autoselect.search.pruning import ParetoPruner
from autoselect.space import Group, SearchSpace, find_space, load_space

__all__ = ["RayOptions", "SearchConfig", "SearchResult", "search"]

BACKENDS = ("optuna", "ray")


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How ``--backend ray`` runs the trials (see :mod:`autoselect.search.ray_backend`)."""

    address: str | None = None  # auto | HOST:PORT | ray://HOST:PORT (Ray Client); None: a local Ray instance
    max_concurrent: int | None = None  # default: as many trials as the cluster's CPUs fit
    cpus_per_trial: float = 1.0  # also the torch threads of each trial
    gpus_per_trial: float = 0.0
    max_failures: int = 1  # retries of a trial whose worker died, before it is recorded as failed

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0 or self.max_failures < 0:
            raise AutoselectError("ray: --cpus-per-trial must be > 0, --gpus-per-trial and --max-failures >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise AutoselectError("ray: --max-concurrent must be at least 1")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    model: str = "mobilenet_v2"
    weights: str | None = None
    data: str = "digits"
    data_mode: str = "auto"  # auto | memory | stream (directories; see autoselect.data.load_images)
    workers: int | None = None  # DataLoader processes of a streamed set (default: up to 4)
    num_classes: int | None = None
    input_size: int | None = None
    target: str | None = None  # default: the space's
    weight_bits: int | tuple[int, ...] | None = None  # several: each group chooses one (see max_model_bits)
    act_bits: int | None = None  # 4-8 for every quantized layer (generic targets: simulation only)
    max_model_bits: int | None = None  # sets constraints.max_model_mb to the model's size with every weight at this
    #                                     bit-width (the memory of a uniform plan, for mixed-precision searches)
    no_train: bool = False  # post-training choices only (freeze / fp32, bit-widths): nothing is retrained
    space: str | None = None  # file or built-in name; default: the model family's
    trials: int = 24
    proxy: ProxyBudget = field(default_factory=ProxyBudget)
    train_images: int | None = None
    val_images: int | None = None  # default: min(1000, a quarter of the train split)
    profile_images: int = 512
    # fraction of AdaRound's / block reconstruction's steps the profile runs where it learns a rounding (its
    # sensitivities rank the groups; the chosen plan is calibrated at full length): the profile's largest cost
    profile_rounding_effort: float = 1.0
    constraints: Constraints = field(default_factory=Constraints)
    sampler: str = "tpe"
    prior: bool = True
    prune_margin: float | None = 1.5  # None: no pruning
    latency: str = "auto"  # auto | measure | cost
    latency_runs: int = 100
    backend: str = "optuna"
    ray: RayOptions = field(default_factory=RayOptions)
    baseline_epochs: int = 15
    out: str = "runs/search"
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    confirm: int = 0  # after the search, retrain this many of the front's best plans at the full budget

    def __post_init__(self) -> None:
        if not 0 < self.profile_rounding_effort <= 1:
            raise AutoselectError(f"--profile-rounding-effort must be in (0, 1], got {self.profile_rounding_effort}")


@dataclass
class SearchResult:
    out: Path
    trials: pd.DataFrame
    front: pd.DataFrame
    chosen: pd.Series
    plan_path: Path
    fp32_top1: float
    ptq_top1: float
    latency_unit: str
    summary: dict[str, Any]


def _say(cfg: SearchConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def _val_count(cfg: SearchConfig, n_train: int) -> int:
    n_val = cfg.val_images if cfg.val_images is not None else min(1000, n_train // 4)
    if not 0 < n_val < n_train:
        raise AutoselectError(f"--val-images {n_val} must leave training images ({n_train} in all)")
    return n_val


def search_split(cfg: SearchConfig, prep: Any) -> tuple[Any, Any]:
    """The proxy's training images and the validation images of a search (the caller's own validation loader,
    else a seeded split of the train split): ``autoselect confirm`` scores on the same images."""
    if prep.val is not None:
        train, val = prep.train, prep.val
    else:
        train, val = prep.train.split(_val_count(cfg, len(prep.train)), seed=cfg.seed)
    return train.subset(cfg.train_images, seed=cfg.seed), val


def _prepare(cfg: SearchConfig, out: Path):
    from autoselect.prepare import prepare

    weights = cfg.weights
    if weights is None:
        weights = str(out / "fp32.pt")
        if not Path(weights).is_file():
            _say(cfg, f"no --weights: training an FP32 {cfg.model} on {cfg.data} first ({cfg.baseline_epochs} "
                      f"epochs) -> {weights}")
            from autoselect.models import save_checkpoint
            from autoselect.train import train_baseline

            prep = prepare(cfg.model, weights=None, data=cfg.data, num_classes=cfg.num_classes,
                           input_size=cfg.input_size, seed=cfg.seed, warn_untrained=False, data_mode=cfg.data_mode,
                           workers=cfg.workers)
            assert prep.train is not None and prep.test is not None
            lm = prep.loaded
            # the validation images stay out of the baseline's training, as they stay out of the proxy's: a model
            # that has memorised them scores them high in FP32 and "forgets" them in QAT, against every QAT plan
            fit, _ = prep.train.split(_val_count(cfg, len(prep.train)), seed=cfg.seed)
            res = train_baseline(lm.model, fit, prep.test, epochs=cfg.baseline_epochs, batch_size=128,
                                 device=cfg.device, seed=cfg.seed, progress=cfg.progress)
            lm.model.load_state_dict(res.best_state)
            save_checkpoint(weights, lm.model, model_name=lm.name, num_classes=lm.num_classes,
                            input_size=lm.input_size, normalize=prep.train.normalize, test_acc=res.best_acc,
                            epoch=res.best_epoch, data=cfg.data, history=res.history)
    return prepare(cfg.model, weights=weights, data=cfg.data, num_classes=cfg.num_classes, input_size=cfg.input_size,
                   splits=("train",), seed=cfg.seed, data_mode=cfg.data_mode, workers=cfg.workers)


def post_training_only(space: SearchSpace) -> SearchSpace:
    """``space`` without its QAT actions, for users who cannot retrain: what is left to choose is freeze or FP32 and
    the bit-widths, each frozen layer getting the default post-training methods."""
    def keep(actions: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(a for a in actions if not a.startswith("qat")) or ("freeze",)

    return replace(space, actions=keep(space.actions), roles={r: keep(a) for r, a in space.roles.items()})


def _space(cfg: SearchConfig, target_name: str | None) -> tuple[SearchSpace, Any]:
    from autoselect.quant.targets import get_target, resolve_target

    space = load_space(cfg.space) if cfg.space else find_space(cfg.model)
    if cfg.weight_bits is not None:
        bits = (cfg.weight_bits,) if isinstance(cfg.weight_bits, int) else tuple(cfg.weight_bits)
        space = replace(space, weight_bits=bits)
    if cfg.act_bits is not None:
        space = replace(space, act_bits=(cfg.act_bits,))
    if cfg.no_train:
        space = post_training_only(space)
    name, why = resolve_target(target_name or space.target)
    if why is not None:
        _say(cfg, f"target {target_name or space.target} -> {name} ({why})")
    target = get_target(name)
    space.check_target(target)
    return space, target


def search(cfg: SearchConfig, *, train: Any = None, val: Any = None) -> SearchResult:
    """Run (or resume) a search; see the module docstring for what it writes. ``cfg.out`` is checked before any
    work; a search that fails leaves no output folder behind, unless it holds what a rerun continues from.

    ``train`` / ``val``: the caller's own data instead of ``cfg.data`` — image sets, DataLoaders or loader factories
    (:func:`autoselect.data.as_images`; a factory is what the Ray backend should get: each trial builds its own
    loader). ``val`` is required with a loader (a loader cannot be split), and ``cfg.weights`` with either."""
    if cfg.backend not in BACKENDS:
        raise AutoselectError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    if cfg.max_model_bits is not None and cfg.constraints.max_model_mb is not None:
        raise AutoselectError("give --max-model-mb or --max-model-bits, not both")
    prepared = _callers_data(cfg, train, val) if train is not None or val is not None else None
    if cfg.confirm < 0 or (cfg.confirm and prepared is not None):
        raise AutoselectError("confirm: a number of plans >= 0, and the search's data given by --data (a "
                              "caller's loaders cannot be rebuilt from the run's folder)")
    with output_dir(cfg.out, worth_keeping=_resumable):
        if cfg.backend == "ray":  # connect first: an unreachable cluster should fail before the profile, not after
            from autoselect.search.ray_backend import ray_session
            from autoselect.search.ray_client import is_client_address, search_via_client

            if is_client_address(cfg.ray.address):
                if prepared is not None:
                    raise AutoselectError("a Ray Client search loads its data on the cluster: pass --data, not "
                                          "train=/val= loaders")
                result = search_via_client(cfg)
            else:
                with ray_session(cfg.ray.address):
                    result = _search(cfg, prepared)
        else:
            result = _search(cfg, prepared)
        if cfg.confirm:  # the front's best plans at the full budget, on this machine
            from autoselect.search.confirm import confirm

            result.summary["confirm"] = confirm(result.out, top=cfg.confirm, device=cfg.device,
                                                progress=cfg.progress).summary
        return result


def _callers_data(cfg: SearchConfig, train: Any, val: Any):
    from autoselect.data import LoaderImages, as_images
    from autoselect.models import load_model
    from autoselect.prepare import Prepared

    if train is None:
        raise AutoselectError("search: val= was given without train=")
    if cfg.weights is None:
        raise AutoselectError("search with the caller's own data needs cfg.weights (a trained FP32 checkpoint)")
    tr = as_images(train)
    va = as_images(val) if val is not None else None
    if va is None and isinstance(tr, LoaderImages):
        raise AutoselectError("search: a training loader cannot be split; pass val= (a validation loader) too")
    lm = load_model(cfg.model, weights=cfg.weights, num_classes=cfg.num_classes, input_size=cfg.input_size)
    return Prepared(loaded=lm, train=tr.with_normalize(lm.normalize), test=None,
                    val=va.with_normalize(lm.normalize) if va is not None else None)


def _resumable(out: Path) -> str | None:
    """What a failed or interrupted search leaves that a rerun continues from, in words; None if nothing."""
    import sqlite3

    db = out / "study.db"
    if db.is_file():
        try:
            with sqlite3.connect(db) as con:
                n = con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.Error:
            n = 0
        if n:
            return f"its study holds {n} finished trial{'s' if n > 1 else ''}: --resume continues it"
    if (out / "fp32.pt").is_file():
        return "it holds the FP32 baseline trained for this search (fp32.pt), which a rerun with this --out reuses"
    return None


def _search(cfg: SearchConfig, prepared: Any = None) -> SearchResult:
    """The search itself, on a connected Ray or none; ``prepared``: the model and data, when a Ray Client has
    loaded them already (:mod:`autoselect.search.ray_client`)."""
    if cfg.latency not in ("auto", "measure", "cost"):
        raise AutoselectError(f"latency must be auto, measure or cost, got {cfg.latency!r}")
    from autoselect.evaluate import resolve_device
    from autoselect.models import build_layer_graph
    from autoselect.plan import ModelRef, save_plan
    from autoselect.profiling import SensitivityReport, profile
    from autoselect.search.optuna_backend import open_study, run_optuna, trials_frame

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, device=str(device))
    space, target = _space(cfg, cfg.target)
    study = open_study(out / "study.db", resume=cfg.resume, sampler=cfg.sampler, seed=cfg.seed,
                       startup=len(space.prior_budgets) + 4)
    prep = prepared if prepared is not None else _prepare(cfg, out)
    prepare_s = time.perf_counter() - t_start  # model and data listed (and an FP32 baseline trained, if it was)
    assert prep.train is not None
    lm = prep.loaded
    size = lm.input_size
    train, val = search_split(cfg, prep)
    graph = build_layer_graph(lm.model, (1, 3, size, size))

    # 1. the profile (reused when out/profile holds one), under the post-training methods a frozen layer gets: the
    # prior then ranks groups by the error those methods leave, so a layer they already repair draws no QAT
    t0 = time.perf_counter()
    prof_dir = out / "profile"
    # several bit-widths: profiled at the lowest, where the groups differ most (the bit allocation scales from it),
    # with rounding to nearest (see _profile_methods)
    target_bits = _target_bits(target)
    bit_choices = tuple(sorted({target_bits if b is None else b for b in space.weight_bits}))
    spec = with_defaults(target.spec(weight_bits=bit_choices[0], act_bits=cfg.act_bits), _profile_methods(bit_choices),
                         observer_named=False)
    reuse: dict = {}  # learned roundings: the profile's, then each trial's (see MethodContext.reuse)
    if (prof_dir / "summary.json").is_file():
        report = SensitivityReport.load(prof_dir)
        _say(cfg, f"profile: reusing {prof_dir}")
    else:
        _say(cfg, f"profile: {spec.describe()} on {min(cfg.profile_images, len(train))} images")
        profile_set = train.subset(cfg.profile_images, seed=cfg.seed).in_memory(MEMORY_BYTES)  # read 2-3 times
        report = profile(lm.model, profile_set.batches(128, device=device),
                         spec=spec, graph=graph, device=device, progress=cfg.progress, model_name=cfg.model,
                         reuse=reuse, effort=cfg.profile_rounding_effort)
        report.save(prof_dir)
    profile_s = time.perf_counter() - t0

    # 2. the space, narrowed and warm-started by the profile
    groups = space.groups(graph.layers)
    scores = dict(zip(report.layers["path"], report.layers[report.rank_by].astype(float)))
    sens = group_sensitivity(groups, scores)
    searched, fixed = narrow(groups, sens, space.search_top)
    parameters: dict[str, tuple[Any, ...]] = {}
    for g in searched:
        parameters.update(space.parameters(g))
    if not parameters:
        raise AutoselectError(f"search space {space.name} leaves nothing to choose for {cfg.model}")
    spread = dict(zip(report.layers["path"], report.layers["w_channel_spread"].astype(float))) \
        if "w_channel_spread" in report.layers else {}
    smooth = smooth_candidates(searched, spread, per_channel_weights=bool(spec.weight and spec.weight.per_channel))
    starts = warm_starts(space, searched, sens, graph.total_params, space.prior_budgets, smooth) if cfg.prior else []
    ref = ModelRef(name=cfg.model, num_classes=lm.num_classes, input_size=size, weights_sha256=lm.weights_sha256)

    def raw_plan(params: Any, provenance: dict[str, Any] | None = None):
        return space.plan(groups, params, target=target.name, model=ref, fixed=fixed, provenance=provenance)

    # 2b. bit-widths under a memory limit (--max-model-mb / --max-model-bits): see autoselect.search.bits
    frozen = {k: ("freeze" if k.endswith(".action") and "freeze" in v else v[0]) for k, v in parameters.items()}
    cfg, bit_budget = _bit_budget(cfg, space, groups, sens, bit_choices, frozen, raw_plan, lm.model, graph)
    fixed_bits: dict[str, Any] = {}  # groups the search does not choose for: the allocation's bits
    if bit_budget is not None:
        allocated = _with_bits(frozen, bit_budget.allocate([g.name for g in groups]))
        frozen = {k: v for k, v in allocated.items() if k in parameters}
        fixed_bits = {k: v for k, v in allocated.items() if k.endswith(".bits") and k not in parameters}
        starts = [{**s, **{k: v for k, v in allocated.items() if k.endswith(".bits") and k in parameters}}
                  for s in starts]
        _say(cfg, f"bit-widths: {len(bit_choices)} choices per group under {cfg.constraints.max_model_mb:.4f} MB; "
                  f"the prior's allocation holds {_bits_summary(allocated)}")

    def make_plan(params: Any, provenance: dict[str, Any] | None = None):
        if bit_budget is not None:  # a draw over the memory limit is lowered until it fits, sized with its own
            merged = {**fixed_bits, **params}  # actions (an FP32 group weighs 32 bits)
            sized = replace(bit_budget, size=lambda b: _plan_bytes(_with_bits(merged, b), raw_plan, lm.model, graph))
            params = _with_bits(merged, sized.fit(_bits_of(merged, groups, space.weight_bits[0], target_bits)))
        return raw_plan(params, provenance)

    # 3. latency: measured on the exported model where the target runs here, else the cost model
    calib = train.subset(cfg.proxy.calib_images, seed=cfg.seed)
    measure = None
    if cfg.latency == "measure" or (cfg.latency == "auto" and target.runs_here):
        if not target.runs_here:
            raise AutoselectError(f"target {target.name} has no integer kernels here: use --latency cost")
        if any(b != 8 for b in bit_choices):
            raise AutoselectError(f"{bit_choices[0]}-bit weights cannot be exported for {target.name}: "
                                  "use --latency cost")
        measure = measure_export_latency(lm.model, graph, calib.batches(128), target=target.name,
                                         work_dir=str(out / "latency_export"), runs=cfg.latency_runs)
    latency = LatencyModel(graph.layers, measure=measure, cache_path=out / "latency_cache.json")
    _say(cfg, f"latency: {latency.unit}")

    # 4. the study
    t0 = time.perf_counter()
    evaluator = TrialEvaluator(lm.model, graph, train, val, cfg.proxy, latency, device=device, seed=cfg.seed,
                               reuse=reuse)
    fp32_top1, fp32_correct = evaluator.val_result(lm.model)
    ptq_plan = make_plan(frozen)
    ptq_top1, ptq_correct = evaluator.ptq_result(ptq_plan)  # cached: the prior's all-frozen trial costs nothing more
    references_s = time.perf_counter() - t0  # validation and calibration images decoded, FP32 and PTQ scored
    _say(cfg, f"{cfg.model}: {len(groups)} groups ({len(searched)} searched), {len(parameters)} parameters; "
              f"validation ({len(val)} images): FP32 {fp32_top1:.2f}%, all frozen (PTQ) {ptq_top1:.2f}%; "
              f"{cfg.trials} trials of {cfg.proxy.steps} steps x {cfg.proxy.batch_size}")

    def describe(st) -> str:
        df = trials_frame(st)
        done = df[df["state"] == "complete"]
        pruned = int((df["state"] == "pruned").sum())
        if done.empty:
            return f"pruned {pruned}"
        best = done.sort_values("top1", ascending=False).iloc[0]
        return f"pruned {pruned}, best {best['top1']:.2f}% @ {100 * best['retrained']:.1f}% retrained"

    pruner = ParetoPruner(margin=cfg.prune_margin or 0.0, enabled=cfg.prune_margin is not None,
                          warmup_steps=cfg.proxy.steps // 2)

    def write_trials(st) -> pd.DataFrame:  # after every trial: a killed search still shows its progress
        frame = trials_frame(st)
        with atomic_path(out / "trials.csv") as tmp:
            frame.to_csv(tmp, index=False)
        return frame
    t0 = time.perf_counter()
    ray_run = None
    if cfg.backend == "ray":
        from autoselect.search.ray_backend import TrialSetup, run_ray

        setup = TrialSetup(model=lm.model, graph=graph, train=train, val=val, budget=cfg.proxy, make_plan=make_plan,
                           seed=cfg.seed, ptq_cache=evaluator.ptq_cache, reuse=reuse)
        r = cfg.ray
        ray_run = run_ray(study, parameters=parameters, setup=setup, latency=latency, n_trials=cfg.trials,
                          warm_start=starts, pruner=pruner, address=r.address, max_concurrent=r.max_concurrent,
                          cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial,
                          max_failures=r.max_failures, storage_path=str((out / "ray").resolve()),
                          progress=cfg.progress, describe=describe, on_finish=write_trials)
        ran = ray_run.ran
        _say(cfg, f"ray: {ray_run.setup_bytes / 2**20:.2f} MB put in the object store once for all trials, "
                  f"{ray_run.data_bytes / 2**20:.2f} MB of it data (training images {train.storage})")
    else:
        ran = run_optuna(study, parameters=parameters, make_plan=make_plan, evaluate=evaluator.evaluate,
                         n_trials=cfg.trials, warm_start=starts, pruner=pruner, progress=cfg.progress,
                         describe=describe, on_finish=write_trials)
    trials_s = time.perf_counter() - t0

    # 5. results
    df = write_trials(study)
    done = df[df["state"] == "complete"].reset_index(drop=True)
    front = done[pareto_mask(done)] if not done.empty else done
    with atomic_path(out / "pareto.csv") as tmp:
        front.sort_values("retrained").to_csv(tmp, index=False)
    chosen = choose(done, cfg.constraints, fp32_top1=fp32_top1)
    feasible = done[cfg.constraints.feasible(done, fp32_top1)]
    tied = int(near_best(feasible, cfg.constraints).sum())  # the plans the choice could not tell from the best
    for _, row in done.iterrows():  # every complete trial's plan (`autoselect confirm` may retrain any of them)
        save_plan(_trial_plan(make_plan, row, cfg, latency.unit), out / "plans" / f"trial_{int(row['trial'])}.json")
    plan_path = save_plan(_trial_plan(make_plan, chosen, cfg, latency.unit), out / "plan.json")
    save_plan(ptq_plan, out / "plans" / "all_frozen.json")  # the references `autoselect confirm` retrains
    save_plan(_all_qat(ptq_plan), out / "plans" / "full_qat.json")
    from autoselect.search.plots import plot_pareto

    plot_pareto(done, front, out / "pareto.png", latency_unit=latency.unit, chosen=int(chosen["trial"]),
                title=f"{cfg.model} on {cfg.data}: {len(df)} trials ({target.name})")
    fidelity = _fidelity(cfg, report, groups, df, out, unpack(ptq_correct))
    ref_latency = latency.reference()
    summary = {
        "model": cfg.model, "data": cfg.data, "target": target.name, "space": space.name, "trials": len(df),
        "ran_now": ran, "complete": len(done), "pruned": int((df["state"] == "pruned").sum()),
        "failed": int((df["state"] == "fail").sum()), "fp32_top1": fp32_top1, "ptq_top1": ptq_top1,
        "latency_unit": latency.unit, "latency_measured": latency.measured, "fp32_latency": ref_latency,
        "latency_exports": latency.measurements,
        "hypervolume": hypervolume(done, ref_top1=ptq_top1, ref_latency=ref_latency),
        "hypervolume_ref": {"top1": ptq_top1, "retrained": 1.0, "latency": ref_latency},
        "chosen_trial": int(chosen["trial"]), "chosen": {k: float(chosen[k]) for k in ("top1", "retrained", "latency")},
        "verdict": verdict(chosen, fp32_top1=fp32_top1, ptq_top1=ptq_top1, constraints=cfg.constraints,
                           proxy_steps=cfg.proxy.steps, fp32_correct=unpack(fp32_correct),
                           ptq_correct=unpack(ptq_correct)),
        "tolerance": cfg.constraints.describe_tolerance(), "tied_with_best": tied,
        "profile_fidelity": fidelity,
        "config": {**asdict(cfg), "progress": True},
        "fp32_val_correct": fp32_correct, "ptq_val_correct": ptq_correct,
        "proxy": asdict(cfg.proxy), "val_images": len(val), "train_images": len(train),
        "constraints": asdict(cfg.constraints), "sampler": cfg.sampler, "prior": cfg.prior, "seed": cfg.seed,
        "backend": cfg.backend, "ray": ray_run.as_dict() if ray_run is not None else None,
        "seconds": {"prepare": prepare_s, "profile": profile_s, "references": references_s, "trials": trials_s,
                    "total": time.perf_counter() - t_start,
                    "trial_sum": float(df["seconds"].fillna(0).sum()),
                    # calibration with the post-training methods, this run's configurations (the all-frozen
                    # reference's before the first trial included; trials.csv has each trial's share)
                    "calibration": evaluator.calib_seconds},
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return SearchResult(out=out, trials=df, front=front, chosen=chosen, plan_path=plan_path, fp32_top1=fp32_top1,
                        ptq_top1=ptq_top1, latency_unit=latency.unit, summary=summary)


def _fidelity(cfg: SearchConfig, report: Any, groups: Sequence[Group], trials: pd.DataFrame, out: Path,
              ptq_correct: Any) -> dict[str, Any] | None:
    """The profile's fidelity from this search's trials (``fidelity.csv``, ``fidelity.png``, one output line); None
    when no complete trial retrained anything."""
    from autoselect.search.fidelity import describe, profile_fidelity
    from autoselect.search.plots import plot_fidelity

    fid = profile_fidelity(report.layers, groups, trials, ptq_correct=ptq_correct)
    if fid["groups"] == 0:
        return None
    with atomic_path(out / "fidelity.csv") as tmp:
        fid["table"].to_csv(tmp, index=False)
    plot_fidelity(fid, out / "fidelity.png", rank_by=report.rank_by,
                  title=f"{cfg.model}: profile metrics against each group's measured QAT benefit "
                        f"({fid['groups']} groups, {fid['trials']} trials)")
    _say(cfg, describe(fid, report.rank_by))
    return {"spearman": fid["spearman"], "interval": fid["interval"], "groups": fid["groups"], "trials": fid["trials"],
            "rank_by": report.rank_by}


def _all_qat(plan: Any) -> Any:
    """``plan`` with every frozen layer retrained (the same bit-widths and quantizers): full QAT of its
    configuration."""
    layers = {k: replace(a, kind="qat") if a.kind == "freeze" else a for k, a in plan.layers.items()}
    return replace(plan, layers=layers, provenance={**plan.provenance, "description": "full QAT reference"})


def _profile_methods(bit_choices: Sequence[int]) -> dict[str, str] | None:
    """The profile's methods besides the defaults: with several bit-widths to choose from, rounding to nearest. The
    bit allocation extrapolates each group's profiled error from the lowest bit-width to the others as
    ``4^(b_low - b)``, the scaling of rounding noise, and every width but the lowest rounds to nearest anyway; a
    learned rounding at the lowest width would also cost most of the search (the 4-bit AdaRound of all 53 layers of
    MobileNetV2 took 107 of 233 s) for the few layers that end there, whose trials learn it once each
    (``MethodContext.reuse``). One bit-width: the defaults, which is what a frozen layer gets."""
    return {"rounding": "nearest"} if len(bit_choices) > 1 else None


def _target_bits(target: Any) -> int:
    spec = target.spec()
    assert spec.weight is not None
    return int(spec.weight.bits)


def _bits_of(params: Mapping[str, Any], groups: Sequence[Group], first: int | None, target_bits: int) -> dict[str, int]:
    """Each group's weight bit-width in ``params``: its own, else the space's first (``None``: the target's)."""
    bits = {g.name: params.get(f"{g.name}.bits", first) for g in groups}
    return {g: target_bits if b is None else int(b) for g, b in bits.items()}


def _with_bits(params: Mapping[str, Any], bits: Mapping[str, int]) -> dict[str, Any]:
    return {**params, **{f"{g}.bits": b for g, b in bits.items()}}


def _bits_summary(params: Mapping[str, Any]) -> str:
    counts = Counter(v for k, v in params.items() if k.endswith(".bits"))
    return ", ".join(f"{n} group{'s' if n > 1 else ''} at {b} bits" for b, n in sorted(counts.items()))


def _plan_bytes(params: Mapping[str, Any], raw_plan: Callable[..., Any], model: Any, graph: Any) -> int:
    from autoselect.quant.apply import plan_specs, planned_size_bytes

    specs, _ = plan_specs(raw_plan(params), graph)
    return planned_size_bytes(model, graph, specs)


def _bit_budget(cfg: SearchConfig, space: SearchSpace, groups: Sequence[Group], sens: Mapping[str, float],
                choices: tuple[int, ...], frozen: Mapping[str, Any], raw_plan: Callable[..., Any], model: Any,
                graph: Any) -> tuple[SearchConfig, BitBudget | None]:
    """``cfg`` with ``--max-model-bits`` turned into its limit in MB, and the :class:`BitBudget` that allocates and
    fits bit-widths where the space offers several and a memory limit is set (else None)."""
    if cfg.max_model_bits is not None:
        uniform = _with_bits(frozen, {g.name: cfg.max_model_bits for g in groups})
        mb = _plan_bytes(uniform, raw_plan, model, graph) / 1e6
        cfg = replace(cfg, constraints=replace(cfg.constraints, max_model_mb=mb))
    if cfg.constraints.max_model_mb is None:
        return cfg, None
    smallest = _plan_bytes(_with_bits(frozen, {g.name: choices[0] for g in groups}), raw_plan, model, graph) / 1e6
    if smallest > cfg.constraints.max_model_mb:
        raise AutoselectError(f"the model takes {smallest:.4f} MB with every weight at {choices[0]} bits, over the "
                              f"{cfg.constraints.max_model_mb:.4f} MB limit: no plan of this space fits")
    if len(choices) < 2:
        return cfg, None
    weights = {g.name: sum(model.get_submodule(p).weight.numel() for p in g.layers) for g in groups}
    budget = BitBudget(choices=choices, weights=weights, sensitivity=sens, ref_bits=choices[0],
                       size=lambda bits: _plan_bytes(_with_bits(frozen, bits), raw_plan, model, graph),
                       limit=int(cfg.constraints.max_model_mb * 1e6))
    return cfg, budget


def _trial_plan(make_plan, row: pd.Series, cfg: SearchConfig, unit: str):
    plan = make_plan(json.loads(row["params"]), {
        "made_by": "autoselect search", "trial": int(row["trial"]), "data": cfg.data, "sampler": cfg.sampler,
        "proxy": asdict(cfg.proxy), "latency_unit": unit,
        "description": f"search trial {int(row['trial'])}"})
    return replace(plan, objectives={"top1_proxy_val": float(row["top1"]), "retrained": float(row["retrained"]),
                                      "latency": float(row["latency"])})
