"""Image sets read from disk as they are iterated: a file list and labels, decoded by DataLoader workers.

A :class:`FileImageSet` holds only paths (one NumPy byte-string array, so that forked workers do not copy it
page by page as they would a Python list) and labels; subsets and splits pick indices without decoding anything.
Each pass builds a ``torch.utils.data.DataLoader`` whose workers open, decode and transform the images:

- evaluation and calibration: the shorter side resized to ``input_size / crop`` (bilinear, antialiased), then a
  center crop of ``input_size`` (``crop=1.0`` by default: for square images, the plain resize of the in-memory
  path, so that both paths see the same pixels);
- training (``augment=True``): a random resized crop (scale 0.08-1, ratio 3/4-4/3) and, where valid, a horizontal
  flip, drawn in the workers from the pass's seed.

Normalization happens per batch on the device, as for :class:`~autoselect.data.batches.ImageSet`.
:meth:`FileImageSet.in_memory` decodes a set that is small enough once, for sets read many times (validation,
calibration).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoselect.data.batches import ImageSet, inference_batch, split_indices
from autoselect.errors import AutoselectError, first_line

__all__ = ["FileImageSet", "FileBatches", "decode_eval", "default_workers", "list_image_folder"]

Triple = tuple[float, float, float]


def default_workers() -> int:
    """Decoding processes per loader: up to 4, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


def _open_rgb(path: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as f:
            return f.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise AutoselectError(f"cannot decode image {path}: {first_line(exc)}") from None


def _to_tensor(img: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _eval_pil(img: Any, size: int, crop: float) -> Any:
    from PIL import Image

    w, h = img.size
    short = max(size, round(size / crop))
    if min(w, h) != short:
        scale = short / min(w, h)
        w, h = max(short, round(w * scale)), max(short, round(h * scale))
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    if (w, h) != (size, size):
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def decode_eval(path: str, size: int, crop: float = 1.0) -> torch.Tensor:
    """One image as uint8 [3, size, size]: shorter side to ``size / crop``, center crop of ``size``."""
    return _to_tensor(_eval_pil(_open_rgb(path), size, crop))


def _train_pil(img: Any, size: int, hflip: bool, gen: torch.Generator) -> Any:
    from PIL import Image

    w, h = img.size
    area = w * h
    for _ in range(10):  # torchvision's RandomResizedCrop, drawn from our generator
        target = area * float(torch.empty(1).uniform_(0.08, 1.0, generator=gen))
        log_r = float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
        r = math.exp(log_r)
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            break
    else:  # the center crop of the whole image
        cw = ch = min(w, h)
        left, top = (w - cw) // 2, (h - ch) // 2
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    if hflip and float(torch.rand(1, generator=gen)) < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


class _Files(torch.utils.data.Dataset):
    """``(uint8 image, label)`` by index; ``seed`` set: training augmentation seeded per (pass, index)."""

    def __init__(self, root: str, paths: np.ndarray, labels: np.ndarray, size: int, crop: float,
                 augment_seed: int | None, hflip: bool) -> None:
        self.root, self.paths, self.labels = root, paths, labels
        self.size, self.crop, self.seed, self.hflip = size, crop, augment_seed, hflip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = os.path.join(self.root, self.paths[i].decode())
        img = _open_rgb(path)
        if self.seed is None:
            img = _eval_pil(img, self.size, self.crop)
        else:
            img = _train_pil(img, self.size, self.hflip, torch.Generator().manual_seed(self.seed * 1_000_003 + i))
        return _to_tensor(img), int(self.labels[i])


class FileImageSet:
    """Images on disk (``root`` + relative ``paths``) with their labels, decoded when iterated."""

    def __init__(self, root: str, paths: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 classes: Sequence[str], input_size: int, *, mean: Triple | None = None, std: Triple | None = None,
                 source: str = "", hflip: bool = True, crop: float = 1.0, workers: int | None = None) -> None:
        if not 0 < crop <= 1:
            raise AutoselectError(f"the evaluation crop must be in (0, 1], got {crop}")
        self.root = str(root)
        self.paths = paths if isinstance(paths, np.ndarray) else np.array([p.encode() for p in paths], dtype=bytes)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        self.classes = tuple(classes)
        self.input_size, self.source, self.hflip, self.crop = input_size, source, hflip, crop
        self.workers = default_workers() if workers is None else workers
        self._mean, self._std = mean, std

    # -- the ImageSet interface ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _stats(self) -> tuple[Triple, Triple]:
        if self._mean is None or self._std is None:  # from up to 256 seeded images, decoded once
            from autoselect.data.sources import image_stats

            sample = self.subset(256, seed=0)
            imgs = torch.stack([decode_eval(os.path.join(self.root, p.decode()), self.input_size, self.crop)
                                for p in sample.paths])
            self._mean, self._std = image_stats(imgs)
        return self._mean, self._std

    @property
    def mean(self) -> Triple:
        return self._stats()[0]

    @property
    def std(self) -> Triple:
        return self._stats()[1]

    @property
    def normalize(self) -> dict[str, list[float]]:
        mean, std = self._stats()
        return {"mean": list(mean), "std": list(std)}

    @property
    def decoded_bytes(self) -> int:
        """What :meth:`in_memory` would hold: uint8 images at the input size."""
        return len(self) * 3 * self.input_size * self.input_size

    @property
    def storage(self) -> str:
        return f"streamed from disk ({self.workers} loader worker{'s' if self.workers != 1 else ''})"

    def _with(self, idx: np.ndarray | torch.Tensor) -> FileImageSet:
        idx = np.asarray(idx)
        return FileImageSet(self.root, self.paths[idx], self.labels.numpy()[idx], self.classes, self.input_size,
                            mean=self._mean, std=self._std, source=self.source, hflip=self.hflip, crop=self.crop,
                            workers=self.workers)

    def check_readable(self, where: str = "here") -> None:
        """One clear error where the folder cannot be read (a cluster node without the shared storage)."""
        first = os.path.join(self.root, self.paths[0].decode()) if len(self) else self.root
        if not os.access(first, os.R_OK):
            raise AutoselectError(f"{where}: cannot read the streamed images at {self.root}: every node must see "
                                  "the data at the same path (shared storage)")

    def with_normalize(self, normalize: dict[str, list[float]] | None) -> FileImageSet:
        if not normalize:
            return self
        out = copy.copy(self)  # the same path and label arrays: nothing here changes them
        out._mean, out._std = tuple(normalize["mean"]), tuple(normalize["std"])  # type: ignore[assignment]
        return out

    def with_workers(self, workers: int) -> FileImageSet:
        out = copy.copy(self)
        out.workers = workers
        return out

    def subset(self, n: int | None, *, seed: int = 0) -> FileImageSet:
        """A seeded random subset of ``n`` images (the same draw as :meth:`ImageSet.subset`); nothing decoded."""
        if n is None or n >= len(self):
            return self
        return self._with(split_indices(len(self), n, seed=seed)[1])

    def split(self, n: int, *, seed: int = 0) -> tuple[FileImageSet, FileImageSet]:
        """A seeded random split into (the rest, ``n`` held-out images); disjoint; nothing decoded."""
        if not 0 < n < len(self):
            raise ValueError(f"cannot hold out {n} of {len(self)} images")
        rest, held = split_indices(len(self), n, seed=seed)
        return self._with(rest), self._with(held)

    def in_memory(self, max_bytes: int | None = None) -> ImageSet | FileImageSet:
        """Decoded into an :class:`ImageSet` when that takes at most ``max_bytes`` (always when None), else self."""
        if max_bytes is not None and self.decoded_bytes > max_bytes:
            return self
        ds = _Files(self.root, self.paths, self.labels.numpy(), self.input_size, self.crop, None, self.hflip)
        images = torch.empty(len(self), 3, self.input_size, self.input_size, dtype=torch.uint8)
        pos = 0
        for x, _ in _reraised(_loader(ds, 256, self.workers if len(self) >= 64 else 0, None)):
            images[pos : pos + len(x)] = x
            pos += len(x)
        mean, std = self._stats()
        return ImageSet(images, self.labels.clone(), self.classes, mean, std, self.source, hflip=self.hflip)

    def batches(self, batch_size: int = 128, *, device: torch.device | str = "cpu", shuffle: bool = False,
                augment: bool = False, seed: int = 0) -> FileBatches:
        """Normalized ``(x, y)`` batches, decoded by the workers; evaluation and calibration batches (neither
        ``shuffle`` nor ``augment``) are capped by :func:`~autoselect.data.batches.inference_batch`."""
        if not shuffle and not augment:
            batch_size = inference_batch(batch_size, self.input_size, self.input_size)
        return FileBatches(self, batch_size, torch.device(device), shuffle, augment, seed)


def _loader(ds: torch.utils.data.Dataset, batch_size: int, workers: int, order: torch.Tensor | None,
            pin: bool = False) -> torch.utils.data.DataLoader:
    sampler = order.tolist() if order is not None else None
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=pin, prefetch_factor=4 if workers else None,
                                       persistent_workers=False)


def _reraised(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The loader's batches; an image a worker could not decode raises its own one-line error here, not the
    worker's traceback."""
    try:
        yield from loader
    except AutoselectError as exc:
        text = str(exc).rstrip()
        marker = "AutoselectError: "
        raise AutoselectError(text[text.rindex(marker) + len(marker):] if marker in text else text) from None


class FileBatches:
    """Re-iterable normalized ``(x, y)`` batches of a :class:`FileImageSet` (a new shuffle and new augmentation
    draws every pass, from ``seed``), decoded by ``workers`` DataLoader processes."""

    def __init__(self, data: FileImageSet, batch_size: int, device: torch.device, shuffle: bool, augment: bool,
                 seed: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.data, self.batch_size, self.device = data, batch_size, device
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self._gen = torch.Generator().manual_seed(seed)
        mean, std = data._stats()
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._passes = 0

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.data
        order = torch.randperm(len(d), generator=self._gen) if self.shuffle else None
        aug_seed = self.seed * 7919 + self._passes if self.augment else None
        self._passes += 1
        ds = _Files(d.root, d.paths, d.labels.numpy(), d.input_size, d.crop, aug_seed, d.hflip)
        for x, y in _reraised(_loader(ds, self.batch_size, d.workers, order, pin=self.device.type == "cuda")):
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
            yield (x - self._mean) / self._std, y.to(self.device)


def list_image_folder(base: Path) -> tuple[list[str], list[int], list[str]]:
    """Relative paths, labels and class names of an ImageFolder directory (torchvision's rules), nothing read."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, to_idx = find_classes(str(base))
        samples = make_dataset(str(base), to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as exc:
        raise AutoselectError(f"data directory {base} is not an ImageFolder: {first_line(exc)}") from None
    if not samples:
        raise AutoselectError(f"data directory {base} holds no images")
    root = str(base)
    return [os.path.relpath(p, root) for p, _ in samples], [int(t) for _, t in samples], list(classes)
