"""In-memory image sets and the batches they yield.

Images are kept as uint8 NCHW tensors (CIFAR-10's 60,000 images take 184 MB) and normalized per batch, so that
several passes over the same calibration set (the profiler makes two or three) cost no decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = ["ImageSet", "Batches", "MAX_BATCH_PIXELS", "inference_batch", "split_batch", "split_indices"]

MAX_BATCH_PIXELS = 64 * 224 * 224  # evaluation and calibration batches: at most 64 images at 224x224


def inference_batch(batch_size: int, height: int, width: int) -> int:
    """``batch_size`` capped for passes without gradients (evaluation, calibration), whose batches the commands
    size for 32x32 inputs (512, 128): at 224x224 a batch of 512 would hold about 10 GB in the largest layer of a
    simulated MobileNetV2. Nothing changes up to 128 images at 32-158 px; training batches are never capped."""
    return max(1, min(batch_size, MAX_BATCH_PIXELS // max(1, height * width)))


def split_indices(length: int, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rest, ``n`` held-out indices) of ``range(length)``, each sorted; a seeded draw that every image set
    (in memory or on disk) shares, so that the same seed picks the same images either way. ``n`` must be in
    ``[1, length]``; the held-out part alone is a subset's draw."""
    idx = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    return idx[n:].sort().values, idx[:n].sort().values


def split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accept ``x`` or ``(x, y, ...)`` batches, as DataLoaders and plain lists give them."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise TypeError(f"a batch must be a tensor or an (inputs, labels) pair, got {type(batch).__name__}")


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""
    hflip: bool = True  # whether horizontal flips are a valid augmentation (not for digits)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError("images must be uint8 [N, 3, H, W]")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def normalize(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def with_normalize(self, normalize: dict[str, list[float]] | None) -> ImageSet:
        if not normalize:
            return self
        return replace(self, mean=tuple(normalize["mean"]), std=tuple(normalize["std"]))  # type: ignore[arg-type]

    @property
    def decoded_bytes(self) -> int:
        return self.images.numel()

    @property
    def storage(self) -> str:
        return f"in memory ({self.decoded_bytes / 2**20:.1f} MB)"

    def in_memory(self, max_bytes: int | None = None) -> ImageSet:
        """Already in memory (the interface of :meth:`FileImageSet.in_memory`)."""
        return self

    def subset(self, n: int | None, *, seed: int = 0) -> ImageSet:
        """A seeded random subset of ``n`` images (all of them when ``n`` is None or large enough)."""
        if n is None or n >= len(self):
            return self
        _, idx = split_indices(len(self), n, seed=seed)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def split(self, n: int, *, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """A seeded random split into (the rest, ``n`` held-out images); disjoint."""
        if not 0 < n < len(self):
            raise ValueError(f"cannot hold out {n} of {len(self)} images")
        rest, held = split_indices(len(self), n, seed=seed)
        return (replace(self, images=self.images[rest], labels=self.labels[rest]),
                replace(self, images=self.images[held], labels=self.labels[held]))

    def batches(self, batch_size: int = 128, *, device: torch.device | str = "cpu", shuffle: bool = False,
                augment: bool = False, seed: int = 0) -> Batches:
        """Normalized ``(x, y)`` batches; without ``shuffle`` or ``augment`` (evaluation, calibration) the batch is
        capped by :func:`inference_batch`."""
        if not shuffle and not augment:
            batch_size = inference_batch(batch_size, *self.images.shape[-2:])
        return Batches(self, batch_size, torch.device(device), shuffle, augment, seed)


class Batches:
    """Re-iterable normalized ``(x, y)`` batches of an :class:`ImageSet` (a new shuffle every pass)."""

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, shuffle: bool, augment: bool,
                 seed: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.data, self.batch_size, self.device = data, batch_size, device
        self.shuffle, self.augment = shuffle, augment
        self._gen = torch.Generator().manual_seed(seed)
        self._mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad-4 random crop and horizontal flip, per image (the fixtures' training augmentation)."""
        n, _, h, w = x.shape
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        dy = torch.randint(0, 9, (n,), generator=self._gen)
        dx = torch.randint(0, 9, (n,), generator=self._gen)
        rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
        idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        idx_c = torch.arange(3, device=x.device).view(1, 3, 1, 1)
        out = padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        if not self.data.hflip:
            return out
        flip = (torch.rand(n, generator=self._gen) < 0.5).to(x.device)
        return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.data.images[idx].to(self.device).float().div_(255.0)
            if self.augment:
                x = self._augment(x)
            x = (x - self._mean) / self._std
            yield x, self.data.labels[idx].to(self.device)
