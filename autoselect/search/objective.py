"""One trial of the search: apply a plan, run the short QAT proxy, and measure the three objectives.

The proxy: ``steps`` SGD steps of batch ``batch_size`` on the training images, the trainer's recipe (warm-up
then cosine), simulated INT8 top-1 on held-out validation images (taken from the train split, never the test
split). Every ``eval_every`` steps the validation top-1 is passed to ``report(step, top1, retrained, latency)``; when it returns True
the trial is abandoned (:class:`Pruned`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from autoselect.data.sources import MEMORY_BYTES
from autoselect.data.types import Images, as_images
from autoselect.errors import AutoselectError
from autoselect.evaluate import correct
from autoselect.models.graph import LayerGraph
from autoselect.plan import Plan
from autoselect.quant.apply import calibrated_model, finish_plan, plan_specs, quantized_size_bytes, retrained_fraction
from autoselect.search.latency import LatencyModel
from autoselect.search.noise import pack
from autoselect.train.qat import QATConfig, train_qat

__all__ = ["CALIBRATED_CACHE", "Outcome", "ProxyBudget", "Pruned", "TrialEvaluator", "measure_export_latency"]

CALIBRATED_CACHE = 8  # calibrated models kept per evaluator (one per quantization configuration, least recent out)


class Pruned(Exception):
    """Raised by :meth:`TrialEvaluator.evaluate` when ``report`` asks to stop; carries the last step."""

    def __init__(self, step: int, top1: float) -> None:
        super().__init__(f"pruned at step {step} (top-1 {top1:.2f}%)")
        self.step, self.top1 = step, top1


@dataclass(frozen=True, kw_only=True)
class ProxyBudget:
    """The short QAT run that scores a trial. Its learning rate is never above a full run's: measured on CIFAR-10
    (experiments/RESULTS.md, issue 4), 100 steps at the full recipe's lr of that time (0.01) ranked ten plans
    against their full-budget results with Spearman 0.09 (the disruption of a high rate, not recovered in 100 steps,
    hits plans that retrain more hardest), while lr 0.003 ranked them with 0.91. With learned steps the full run's
    rate is 0.001, and the proxy's with it (the W4 per-channel search of issue 14 ran at 0.001 and its choice met
    the issue's goal at the full budget; the rank correlation was not re-measured)."""

    steps: int = 60
    batch_size: int = 64
    lr: float = 0.001
    warmup_steps: int = 5
    eval_every: int = 20
    calib_images: int = 256
    # the fraction of a learned rounding's steps (AdaRound, block reconstruction) a trial runs where it learns one
    # (roundings the profile learned are reused at full length): 0.2, as the proxy trains 60 of the full run's 300
    # steps. Matters in a bit-width search, whose trials learn the roundings of the layers they put at low bit-widths
    # (experiments/RESULTS.md, issue 14). The emitted plan is calibrated at full length by train, ptq and export.
    rounding_effort: float = 0.2

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.eval_every < 1 or self.calib_images < 1:
            raise AutoselectError("proxy budget: steps >= 0, batch size, eval interval and calibration images >= 1")
        if not 0 < self.rounding_effort <= 1:
            raise AutoselectError(f"proxy budget: rounding effort must be in (0, 1], got {self.rounding_effort}")


@dataclass
class Outcome:
    top1: float
    retrained: float
    latency: float
    ptq_top1: float
    steps: int
    seconds: float
    history: list[tuple[int, float]]
    calib_seconds: float = 0.0  # calibration and post-training methods (0 when the configuration was cached)
    train_seconds: float = 0.0  # the QAT proxy, its evaluations included
    size_mb: float = 0.0  # deployed weights at each layer's bit-width (autoselect.quant.apply.quantized_size_bytes)
    correct: str | None = None  # per-image validation results of the final top-1 (autoselect.search.noise.pack)


class TrialEvaluator:
    """Holds the FP32 model, its layer graph and the data; :meth:`evaluate` runs one plan."""

    def __init__(self, model: nn.Module, graph: LayerGraph, train: Images, val: Images, budget: ProxyBudget,
                 latency: LatencyModel, *, device: torch.device | str = "cpu", seed: int = 0,
                 ptq_cache: dict[str, tuple[float, str]] | None = None, reuse: dict | None = None,
                 train_seed: int | None = None) -> None:
        self.model = model.eval()
        self.graph = graph
        # validation and calibration images are read at every evaluation: decoded once where they fit in memory
        # (here, not before: the Ray backend ships a streamed set's paths, and each trial decodes its own copy)
        self.train, self.val = as_images(train), as_images(val).in_memory(MEMORY_BYTES)
        self.budget = budget
        self.latency = latency
        self.device = device
        self.seed = seed  # draws the calibration images
        # seeds the QAT (batch order, augmentation): another training seed, same calibration and validation images
        self.train_seed = seed if train_seed is None else train_seed
        self.calib = self.train.subset(budget.calib_images, seed=seed).in_memory(MEMORY_BYTES)
        # step-0 (PTQ) top-1 per quantization configuration: before training, freeze and QAT layers are quantized
        # alike from the same calibration images, so plans that differ only in what they retrain share it
        # (``ptq_cache`` passes one evaluator's cache to another: the Ray backend's trials start from the driver's)
        self._ptq_top1: dict[str, tuple[float, str]] = dict(ptq_cache or {})  # (top-1, per-image results)
        self._calibrated: dict[str, nn.Module] = {}
        # learned roundings (AdaRound) by layer, spec and weight, shared between configurations: in a bit-width
        # search a layer's 4-bit rounding is learned once, not once per trial that puts it at 4 bits
        self._reuse: dict = {} if reuse is None else reuse
        self.calib_seconds = 0.0  # spent by _base in calibration and post-training methods, all calls together

    def val_top1(self, model: nn.Module) -> float:
        return self.val_result(model)[0]

    def val_result(self, model: nn.Module) -> tuple[float, str]:
        """Validation top-1 and the per-image results behind it (packed, for paired comparisons)."""
        hits = correct(model, self.val.batches(256, device=self.device), device=self.device).cpu().numpy()
        return 100.0 * float(hits.mean()), pack(hits)

    def apply(self, plan: Plan) -> nn.Module:
        """``apply_plan`` of ``plan``; the calibrated model (post-training methods included: AdaRound takes
        minutes) is computed once per quantization configuration and copied for each plan that shares it."""
        specs, actions = plan_specs(plan, self.graph)
        return finish_plan(copy.deepcopy(self._base(plan, specs)), plan, actions, self.graph)

    def _base(self, plan: Plan, specs: dict) -> nn.Module:
        """The calibrated, all-frozen model of a quantization configuration (cached; never trained)."""
        key = repr(sorted(specs.items()))
        base = self._calibrated.pop(key, None)
        if base is None:
            t0 = time.perf_counter()
            base = calibrated_model(self.model, specs, self.graph, self.calib.batches(128, device=self.device),
                                    target=plan.target, device=self.device, reuse=self._reuse,
                                    effort=self.budget.rounding_effort)
            self.calib_seconds += time.perf_counter() - t0
        self._calibrated[key] = base  # most recently used last
        while len(self._calibrated) > CALIBRATED_CACHE:
            self._calibrated.pop(next(iter(self._calibrated)))
        return base

    @property
    def ptq_cache(self) -> dict[str, tuple[float, str]]:
        return dict(self._ptq_top1)

    def ptq_top1(self, plan: Plan) -> float:
        """Validation top-1 of ``plan``'s quantization configuration with every layer frozen, before any training
        (computed once per configuration)."""
        return self.ptq_result(plan)[0]

    def ptq_result(self, plan: Plan) -> tuple[float, str]:
        """:meth:`ptq_top1` and its per-image results."""
        specs, _ = plan_specs(plan, self.graph)
        return self._step0(specs, lambda: self._base(plan, specs))

    def _step0(self, specs: dict, quantized: Callable[[], nn.Module]) -> tuple[float, str]:
        key = repr(sorted(specs.items()))  # every quantizer setting of every layer
        if key not in self._ptq_top1:
            self._ptq_top1[key] = self.val_result(quantized())
        return self._ptq_top1[key]

    def evaluate(self, plan: Plan, report: Callable[[int, float, float, float], bool] | None = None) -> Outcome:
        t0 = time.perf_counter()
        calib0 = self.calib_seconds
        specs, _ = plan_specs(plan, self.graph)
        latency = self.latency(specs)
        torch.manual_seed(self.train_seed)
        qmodel = self.apply(plan)
        frac = retrained_fraction(qmodel)
        size_mb = quantized_size_bytes(qmodel) / 1e6
        # step 0 is the configuration's all-frozen PTQ (what a retrained layer with learned steps starts from)
        ptq, ptq_correct = self._step0(specs, lambda: self._base(plan, specs))
        history = [(0, ptq)]
        if report is not None and report(0, ptq, frac, latency):
            raise Pruned(0, ptq)
        b = self.budget
        calib_s = self.calib_seconds - calib0
        if frac == 0.0 or b.steps == 0:
            return Outcome(top1=ptq, retrained=frac, latency=latency, ptq_top1=ptq, steps=0,
                           seconds=time.perf_counter() - t0, history=history, calib_seconds=calib_s,
                           size_mb=size_mb, correct=ptq_correct)
        t_train = time.perf_counter()
        pruned: list[Pruned] = []

        def callback(step: int) -> bool:
            if step % b.eval_every or step >= b.steps:
                return False
            top1 = self.val_top1(qmodel)
            qmodel.train()
            history.append((step, top1))
            if report is not None and report(step, top1, frac, latency):
                pruned.append(Pruned(step, top1))
                return True
            return False

        cfg = QATConfig(steps=b.steps, batch_size=b.batch_size, lr=b.lr, warmup_steps=min(b.warmup_steps, b.steps),
                        seed=self.train_seed)
        train_qat(qmodel, self.train, None, cfg, callback=callback, device=self.device,
                  calibration=self.calib.batches(128, device=self.device))
        if pruned:
            raise pruned[0]
        top1, hits = self.val_result(qmodel)
        history.append((b.steps, top1))
        if report is not None:
            report(b.steps, top1, frac, latency)
        return Outcome(top1=top1, retrained=frac, latency=latency, ptq_top1=ptq, steps=b.steps,
                       seconds=time.perf_counter() - t0, history=history, calib_seconds=calib_s,
                       train_seconds=time.perf_counter() - t_train, size_mb=size_mb, correct=hits)


def measure_export_latency(model: nn.Module, graph: LayerGraph, calibration: Iterable, *, target: str,
                           work_dir: str, runs: int = 100) -> Callable[[dict | None], float]:
    """A ``measure(specs) -> ms`` for :class:`LatencyModel`: quantize ``model`` with ``specs`` (PTQ: latency does
    not depend on the weights' values), export to ONNX QDQ and time it in onnxruntime at batch 1; ``specs=None``
    times the FP32 model in onnxruntime."""
    from pathlib import Path

    from autoselect.export import export, ort_latency_ms
    from autoselect.quant.simulate import calibrate, quantize_model

    shape = tuple(graph.input_shape)

    def measure(specs: dict | None) -> float:
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process, once per export
        try:
            return _measure(specs)
        finally:
            root.setLevel(level)

    def _measure(specs: dict | None) -> float:
        if specs is None:
            from autoselect.export.onnx_export import export_fp32_onnx

            path = export_fp32_onnx(model, Path(work_dir) / "reference_fp32.onnx", (1, *shape[1:]))
            return ort_latency_ms(path, (1, *shape[1:]), runs=runs)
        qmodel = quantize_model(copy.deepcopy(model), specs, graph=graph, integer_graph=True)
        calibrate(qmodel, calibration)
        res = export(qmodel.cpu(), calibration, Path(work_dir), target=target, input_shape=(1, *shape[1:]),
                     calibration_images=128)
        return ort_latency_ms(res.int8_path, (1, *shape[1:]), runs=runs)

    return measure

