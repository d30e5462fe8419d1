"""FP32 baseline training / fine-tuning, for users who have no checkpoint.

The recipe of the reference fixtures: SGD (momentum 0.9, Nesterov), one-cycle LR, weight decay 5e-4, reflect-pad-4
random crop and horizontal flip.

Before each evaluation the BatchNorm running statistics are re-estimated on training images (without augmentation,
the weights unchanged): a model whose BatchNorm momentum is small (torchvision's MobileNetV3 uses 0.01) otherwise
keeps statistics that lag the weights by hundreds of steps, and is scored and saved with them (issue 18: a
MobileNetV3-large baseline at about 10% test accuracy, 88.9% once its statistics were recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoselect.data.types import Images, as_images
from autoselect.evaluate import accuracy
from autoselect.models.checkpoint import cpu_state_dict
from autoselect.quant.dwconv import fast_depthwise
from autoselect.train.qat import uses_channels_last

__all__ = ["BN_IMAGES", "BaselineResult", "reestimate_bn", "train_baseline"]

BN_IMAGES = 2048  # training images per re-estimation of the BatchNorm statistics
GAP_WARNING = 25.0  # points of test top-1 below the last epoch's training top-1 that earn a warning


@dataclass
class BaselineResult:
    test_acc: float
    best_acc: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    warning: str | None = None  # set when the best test top-1 is far below the training top-1


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches, *, device: torch.device | str = "cpu", channels_last: bool = False) -> int:
    """Recompute every BatchNorm layer's running mean and variance as the average over ``batches`` (weights and
    every other module untouched; the model is left in eval mode). Returns the images seen (0: no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    seen = 0
    try:
        for x, _ in batches:
            x = x.to(device)
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return seen


def train_baseline(
    model: nn.Module,
    train: Images | Any,
    test: Images | Any,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    augment: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    bn_images: int = BN_IMAGES,
) -> BaselineResult:
    """Train ``model`` in place; keeps the best test-accuracy weights in ``best_state``. Before each evaluation the
    BatchNorm statistics are re-estimated on ``bn_images`` training images (0: not).

    On CPU it trains in channels-last memory format with the fast depthwise weight gradient (see
    :mod:`autoselect.quant.dwconv`), and gives the model back in the default format."""
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    train, test = as_images(train), as_images(test)
    torch.manual_seed(seed)
    model.to(device)
    channels_last = uses_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        with fast_depthwise(model):
            return _train(model, train, test, epochs=epochs, lr=lr, batch_size=batch_size,
                          weight_decay=weight_decay, augment=augment, device=device, seed=seed, progress=progress,
                          channels_last=channels_last, bn_images=bn_images)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def _train(model: nn.Module, train: Images, test: Images, *, epochs: int, lr: float, batch_size: int,
           weight_decay: float, augment: bool, device: torch.device | str, seed: int, progress: bool,
           channels_last: bool, bn_images: int) -> BaselineResult:
    batches = train.batches(batch_size, device=device, shuffle=True, augment=augment, seed=seed)
    bn_batches = train.subset(min(bn_images, len(train)), seed=seed).batches(batch_size, device=device) \
        if bn_images > 0 else None
    evaluation = test.batches(512, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(batches))
    result = BaselineResult(test_acc=0.0, best_acc=-1.0, best_epoch=0)
    for epoch in range(1, epochs + 1):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for x, y in bar:
            opt.zero_grad(set_to_none=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{100 * correct / total:.1f}")
        if bn_batches is not None:
            reestimate_bn(model, bn_batches, device=device, channels_last=channels_last)
        acc = accuracy(model, evaluation, device=device)
        result.history.append({"epoch": epoch, "train_loss": loss_sum / total, "train_acc": 100 * correct / total,
                               "test_acc": acc})
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: loss {loss_sum / total:.3f}, test top-1 {acc:.2f}%")
        if acc > result.best_acc:
            result.best_acc, result.best_epoch = acc, epoch
            result.best_state = cpu_state_dict(model)
        result.test_acc = acc
    model.eval()
    last_train = result.history[-1]["train_acc"]
    if last_train - result.best_acc > GAP_WARNING:
        result.warning = (f"test top-1 {result.best_acc:.2f}% is {last_train - result.best_acc:.0f} points below the "
                          f"training top-1 ({last_train:.2f}%, last epoch): the model does not generalize to the "
                          "test split (too few images or epochs, or a train/test mismatch)")
    return result
