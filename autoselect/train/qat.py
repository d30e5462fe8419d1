"""Selective QAT: train the plan's ``qat`` layers of a model made by :func:`autoselect.apply_plan`.

SGD with momentum and weight decay for the weights and biases, a linear warm-up then cosine or step decay (seed
001's recipe, shortened to a CPU budget); Adam, on the same schedule, for the learned quantizer steps and zero-points
of layers that learn them (LSQ, :mod:`autoselect.quant.lsq`, the plans' default for ``qat`` layers); optionally
distillation from the FP32 model. Checkpoints are written atomically every ``checkpoint_every`` steps and at the
end; ``resume=True`` continues from the checkpoint at the same step, with the same data order, as if never interrupted.
Given the calibration images, the frozen layers' sequential bias corrections are matched again after the last step,
with the retrained layers in place (:func:`~autoselect.quant.methods.bias_correction.recorrect_frozen`).

Frozen layers cost nothing in backward: autograd computes no weight gradient for them and stops at the first
trainable layer (nothing before it requires a gradient).

On CPU the model and batches are trained in channels-last memory format (oneDNN then needs no layout reorders
around each convolution: about 1.2x more steps per second for MobileNetV2 on CIFAR-10 here); the model is put back
in the default format afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoselect._io import atomic_path
from autoselect.data.types import Images, as_images
from autoselect.errors import AutoselectError, first_line
from autoselect.evaluate import accuracy
from autoselect.quant.apply import quantizer_params as _quantizer_params
from autoselect.quant.methods.bias_correction import recorrect_frozen, recorrectable

__all__ = ["QATConfig", "QATResult", "dampening_loss", "load_qat_checkpoint", "train_qat", "uses_autocast",
           "uses_channels_last"]


@dataclass(frozen=True, kw_only=True)
class QATConfig:
    steps: int = 300
    batch_size: int = 128
    # 0.001: full QAT of the reference MobileNetV2 from its post-training state, 300 steps x 128, ended +0.13 (W5
    # per-tensor) and +0.56 (W4 per-channel) above that start at 0.001, and -0.44 / -0.03 at 0.01, the rate before
    # learned steps (experiments/RESULTS.md, issue 14)
    lr: float = 0.001
    momentum: float = 0.9
    # none: from the post-training state, full QAT at W4 per-tensor ended below its start with 5e-4 (79.13 +- 0.07
    # against 79.21, three seeds) and above it without (79.26 +- 0.10); at W4 per-channel 79.59 +- 0.10 without
    # against 79.68 +- 0.10 with, a tie (experiments/RESULTS.md, issue 14)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"  # "cosine" | "step" (x0.1 at 50% and 75% of the steps)
    # knowledge distillation from the FP32 model (``teacher`` of train_qat): the loss is
    # (1 - distill) * cross-entropy with the labels + distill * KL(teacher || student) at temperature 1;
    # 1.0 trains on the teacher's outputs alone (no labels needed)
    distill: float = 0.0
    # learned quantizer steps (as logarithms) and zero-points (LSQ/LSQ+): Adam at this rate, on the same schedule
    step_lr: float = 1e-3
    # oscillation dampening (Nagel et al. 2022): + dampen(t) * sum over retrained weights of (w_q - clip(w))^2, the
    # latent weights pulled to the grid point they round to; dampen(t) rises from 0 to ``dampen`` on a cosine
    dampen: float = 0.0
    checkpoint: str | None = None
    checkpoint_every: int = 100
    seed: int = 0
    # mixed precision for the layers kept in float (plan action fp32, everything between layers) and the teacher:
    # "auto" uses bfloat16 autocast on CUDA devices that support it, "off" never, "bf16" on any device (CPU too);
    # quantized layers always compute in float32 (QuantLayer leaves autocast), so their grids stay exact
    autocast: str = "auto"
    # after the last step, re-match the frozen layers' sequential bias correction (when train_qat is given the
    # calibration images): what it compensated of the retrained layers before them is stale once they are trained
    recorrect: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise AutoselectError(f"steps must be at least 1, got {self.steps}")
        if not (self.lr > 0 and self.step_lr >= 0):
            raise AutoselectError(f"lr must be positive and step_lr non-negative, got {self.lr} and {self.step_lr}")
        if self.dampen < 0:
            raise AutoselectError(f"dampen must be non-negative, got {self.dampen}")
        if not 0.0 <= self.distill <= 1.0:
            raise AutoselectError(f"distill must be between 0 and 1, got {self.distill}")
        if self.autocast not in ("auto", "off", "bf16"):
            raise AutoselectError(f"autocast must be auto, off or bf16, got {self.autocast!r}")
        if self.schedule not in ("cosine", "step"):
            raise AutoselectError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0


@dataclass
class QATResult:
    steps: int
    top1: float | None
    resumed_from: int
    history: list[dict[str, Any]] = field(default_factory=list)
    recorrected: list[str] = field(default_factory=list)  # the frozen layers whose bias correction was re-matched
    top1_before_recorrect: float | None = None  # top-1 on ``test`` before that (when some layer was re-matched)


def uses_channels_last(device: torch.device | str) -> bool:
    """Whether training on ``device`` runs in channels-last memory format (CPU: yes; elsewhere: the default)."""
    return torch.device(device).type == "cpu"


class _Optimizers:
    """SGD with momentum for the weights and biases; Adam for the learned quantizer steps and zero-points (their
    gradients differ from the weights' by orders of magnitude between layers; Adam's updates do not depend on
    that). One object with ``zero_grad``, ``step``, the schedule and a state dict, for the loop and checkpoints."""

    def __init__(self, qmodel: nn.Module, cfg: QATConfig) -> None:
        params = [p for p in qmodel.parameters() if p.requires_grad]
        if not params:
            raise AutoselectError("the plan has no qat layer: nothing to train (score it with `autoselect ptq --plan`)")
        steps = _quantizer_params(qmodel)
        decay = [p for p in params if p.dim() > 1 and id(p) not in steps]
        no_decay = [p for p in params if p.dim() <= 1 and id(p) not in steps]
        self.cfg = cfg
        self.sgd = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum)
        learned = [p for p in params if id(p) in steps]
        self.adam = torch.optim.Adam(learned, lr=cfg.step_lr) if learned else None

    def schedule(self, step: int) -> float:
        factor = self.cfg.lr_factor(step)
        for group in self.sgd.param_groups:
            group["lr"] = self.cfg.lr * factor
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] = self.cfg.step_lr * factor
        return self.cfg.lr * factor

    def zero_grad(self) -> None:
        self.sgd.zero_grad(set_to_none=True)
        if self.adam is not None:
            self.adam.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.sgd.step()
        if self.adam is not None:
            self.adam.step()

    def state_dict(self) -> dict[str, Any]:
        return {"sgd": self.sgd.state_dict(), "adam": self.adam.state_dict() if self.adam is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sgd", "adam"} or (state["adam"] is None) != (self.adam is None):
            raise ValueError("optimizer state of another kind (a checkpoint from before learned steps?)")
        self.sgd.load_state_dict(state["sgd"])
        if self.adam is not None:
            self.adam.load_state_dict(state["adam"])


def _rng_devices(dev: torch.device) -> list[int]:
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


def _rng_state(dev: torch.device) -> list[torch.Tensor]:
    """The random state training draws from (dropout): the CPU generator's, and the CUDA device's where it runs."""
    return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in _rng_devices(dev)]


@contextmanager
def _training_rng(dev: torch.device, seed: int, state: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Training draws its random numbers (dropout masks) from ``seed``, or from ``state`` (from :func:`_rng_state`;
    a device it lacks, such as a GPU resuming a CPU run, draws from ``seed``), so that the same seed trains the
    same model whatever ran before. Only the generators training uses are seeded, and the caller's states of
    them are restored afterwards."""
    devices = _rng_devices(dev)
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        if state is not None:
            torch.set_rng_state(state[0])
            for d, saved in zip(devices, state[1:]):
                torch.cuda.set_rng_state(saved, d)
        yield


def _save(path: str, qmodel: nn.Module, opt: _Optimizers, step: int, history: list, cfg: QATConfig,
          rng: list[torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        plan = getattr(qmodel, "autoselect_plan", None)
        torch.save({"kind": "autoselect-qat", "step": step, "model": qmodel.state_dict(),
                    "target": plan.target if plan is not None else None,
                    "optimizer": opt.state_dict(), "history": history, "steps": cfg.steps, "seed": cfg.seed,
                    "rng": rng}, tmp)


def load_qat_checkpoint(path: str | Path, qmodel: nn.Module, *, target: str | None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_qat` into ``qmodel``; refuse one that is not ours, was trained
    for another target (its activation grids would not fit), or does not fit the model. Returns the whole dict."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AutoselectError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001
        raise AutoselectError(f"cannot read QAT checkpoint {path}: {first_line(exc)}") from None
    if not isinstance(ck, dict) or ck.get("kind") != "autoselect-qat":
        raise AutoselectError(f"{path} is not an autoselect QAT checkpoint")
    if ck.get("target") != target:
        raise AutoselectError(f"checkpoint {path} was trained for target {ck.get('target')!r}, not {target!r}: "
                              f"train with --target {target} to use it there")
    try:
        qmodel.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise AutoselectError(f"checkpoint {path} does not fit this plan/model: {detail}") from None
    return ck


def _load(path: str, qmodel: nn.Module, opt: _Optimizers, cfg: QATConfig) -> tuple[int, list, Any]:
    plan = getattr(qmodel, "autoselect_plan", None)
    ck = load_qat_checkpoint(path, qmodel, target=plan.target if plan is not None else None)
    if ck.get("seed") != cfg.seed or ck.get("steps") != cfg.steps:
        raise AutoselectError(f"checkpoint {path} was trained with seed {ck.get('seed')} for {ck.get('steps')} steps; "
                              f"resume with the same settings (here: seed {cfg.seed}, {cfg.steps} steps)")
    try:
        opt.load_state_dict(ck["optimizer"])
    except (KeyError, ValueError) as exc:
        raise AutoselectError(f"checkpoint {path} does not fit this plan/model: {first_line(exc)}") from None
    return int(ck["step"]), list(ck.get("history", [])), ck.get("rng")


def _teacher_probs(teacher: nn.Module | None, x: torch.Tensor, distill: float) -> torch.Tensor | None:
    if distill <= 0 or teacher is None:
        return None
    with torch.no_grad():
        return F.softmax(teacher(x).float(), dim=1)


def _loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, distill: float = 0.0) -> torch.Tensor:
    if target is None:
        return F.cross_entropy(logits, y)
    kd = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
    return kd if distill >= 1 else (1 - distill) * F.cross_entropy(logits, y) + distill * kd


def uses_autocast(cfg: QATConfig, device: torch.device) -> bool:
    """Whether training runs the float parts in bfloat16 (see ``QATConfig.autocast``)."""
    if cfg.autocast == "bf16":
        return True
    return cfg.autocast == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def dampening_loss(qmodel: nn.Module) -> torch.Tensor:
    """Oscillation dampening's regularizer: the squared distance of every retrained latent weight (clipped to its
    grid's range) from the grid point it rounds to, summed. The grid (step, zero-point) is held fixed here, so the
    term moves the weights only, not learned steps."""
    from autoselect.quant.simulate import quant_layers

    total = torch.zeros(())
    for ql in quant_layers(qmodel).values():
        tq = ql.spec.weight if ql.spec is not None else None
        if tq is None or not ql.layer.weight.requires_grad:
            continue
        w = ql.effective_weight()
        with torch.no_grad():
            target = ql.quantized_weight().detach()
            scale, zp = ql.weight_qparams()
            shape = [-1] + [1] * (w.dim() - 1) if scale.dim() else []
            s, z = scale.view(shape).to(w), zp.view(shape).to(w)
            lo, hi = (tq.qmin - z) * s, (tq.qmax - z) * s
        total = total.to(w.device) + (target - torch.maximum(torch.minimum(w, hi), lo)).pow(2).sum()
    return total


def train_qat(
    qmodel: nn.Module,
    train: Images | Any,
    test: Images | Any | None = None,
    config: QATConfig | None = None,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    callback: Callable[[int], bool] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    teacher: nn.Module | None = None,
    calibration: Iterable | None = None,
) -> QATResult:
    """Train ``qmodel`` in place for ``config.steps`` steps; returns the simulated-INT8 top-1 on ``test``.

    ``stop_at`` ends this run after that global step (checkpoint written, schedule unchanged), for time-sliced
    training; a later call with ``resume=True`` goes on from there. ``callback(step)`` is called after every
    optimizer step (the model is in train mode; it may evaluate and must leave it in train mode); when it returns
    True, training stops there and ``top1`` is None (the search uses it to prune). ``teacher`` (the FP32 model, in
    eval mode, never trained) is required when ``config.distill`` is above 0. ``calibration``: the batches the
    model was calibrated on; with ``config.recorrect``, once the last step is done the frozen layers' sequential
    bias corrections are re-matched on them (before the checkpoint is written and the model scored).
    """
    cfg = config or QATConfig()
    train = as_images(train)
    test = as_images(test) if test is not None else None
    if cfg.distill > 0 and teacher is None:
        raise AutoselectError("distillation (distill > 0) needs the FP32 model as teacher")
    if cfg.distill <= 0:
        teacher = None  # not run, and left as it was
    channels_last = uses_channels_last(device)
    dev = torch.device(device)
    mixed = uses_autocast(cfg, dev)
    for m in (qmodel, teacher):
        if m is not None:
            m.to(device)
            if channels_last:
                m.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.eval()
    opt = _Optimizers(qmodel, cfg)
    start, history = 0, []  # type: tuple[int, list[dict[str, Any]]]
    loaded_rng: Any = None
    if resume:
        if cfg.checkpoint is None:
            raise AutoselectError("resume needs a checkpoint path")
        if Path(cfg.checkpoint).is_file():
            start, history, loaded_rng = _load(cfg.checkpoint, qmodel, opt, cfg)
    per_epoch = max(1, len(train.batches(cfg.batch_size, device=device)))
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    step = start
    stopped = False
    # resumed without a saved state (a checkpoint from before it was kept): reproducible, not exact
    with _training_rng(dev, cfg.seed + start, loaded_rng):
        bar = tqdm(total=cfg.steps, initial=start, desc="qat", disable=not progress)
        qmodel.train()
        while step < end:
            epoch, skip = divmod(step, per_epoch)
            batches = train.batches(cfg.batch_size, device=device, shuffle=True, augment=True, seed=cfg.seed + epoch)
            for i, (x, y) in enumerate(batches):
                if i < skip:
                    continue
                if step >= end:
                    break
                lr = opt.schedule(step)
                opt.zero_grad()
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mixed):
                    logits = qmodel(x)
                    target = _teacher_probs(teacher, x, cfg.distill)
                loss = _loss(logits.float(), y, target, cfg.distill)
                if cfg.dampen > 0:
                    ramp = 0.5 * (1.0 - math.cos(math.pi * min(1.0, step / max(1, cfg.steps - 1))))
                    loss = loss + cfg.dampen * ramp * dampening_loss(qmodel)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                if step % 10 == 0:
                    history.append({"step": step, "loss": loss.item(), "lr": lr})
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if cfg.checkpoint and step % cfg.checkpoint_every == 0 and step < end:
                    _save(cfg.checkpoint, qmodel, opt, step, history, cfg, _rng_state(dev))
                if callback is not None and callback(step):
                    end = step
                    stopped = True
                    break
        bar.close()
        rng_state = _rng_state(dev)  # the checkpoint's: a resumed run draws what this one would have
    qmodel.eval()
    if channels_last:  # both models back in the default format (the teacher is the caller's FP32 model)
        for m in (qmodel, teacher):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)
    done = step >= cfg.steps and not stopped
    before: float | None = None
    recorrected: list[str] = []
    # a run resumed from its final checkpoint trains nothing: that checkpoint already holds the re-match
    if done and start < cfg.steps and cfg.recorrect and calibration is not None:
        if test is not None and recorrectable(qmodel):
            before = accuracy(qmodel, test.batches(512, device=device), device=device)
        recorrected = recorrect_frozen(qmodel, calibration, device=device, progress=progress)
    if cfg.checkpoint:
        _save(cfg.checkpoint, qmodel, opt, step, history, cfg, rng_state)
    top1 = accuracy(qmodel, test.batches(512, device=device), device=device) if test is not None and done else None
    return QATResult(steps=step, top1=top1, resumed_from=start, history=history, recorrected=recorrected,
                     top1_before_recorrect=before)
