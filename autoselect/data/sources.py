"""Where images come from: the embedded digits set, CIFAR-10 through torchvision, or any ImageFolder directory.

``load_images(source, split=..., input_size=...)`` accepts:

- ``"digits"`` — scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upsampled to
  ``input_size`` and made RGB; a fixed 80/20 stratified split. Works offline on a fresh machine;
- ``"cifar10"`` — torchvision's CIFAR-10, downloaded to ``~/.cache/autoselect`` where a network allows;
- a directory — ImageFolder layout; if it holds ``train/`` and ``test/`` (or ``val/``), ``split`` picks one. It is
  decoded into memory when small, else streamed from disk (:mod:`autoselect.data.files`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoselect.data.batches import ImageSet
from autoselect.data.files import FileImageSet, list_image_folder
from autoselect.errors import AutoselectError, first_line

__all__ = ["load_images", "image_stats", "CIFAR10_NORMALIZE", "MEMORY_BYTES", "MODES"]

CIFAR10_NORMALIZE = {"mean": [0.4913, 0.4821, 0.4465], "std": [0.2452, 0.2428, 0.2606]}  # train split, 0-1 scale
_CIFAR_MEAN = (0.4913, 0.4821, 0.4465)
_CIFAR_STD = (0.2452, 0.2428, 0.2606)
_SPLITS = ("train", "test")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


Triple = tuple[float, float, float]


def image_stats(images: torch.Tensor) -> tuple[Triple, Triple]:
    x = images[:4096].float().div(255.0)
    m = [round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()]
    s = [round(v, 4) for v in x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()]
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def _digits(split: str, size: int) -> ImageSet:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    idx = torch.from_numpy(idx_train if split == "train" else idx_test)
    imgs = _resize(x[idx].unsqueeze(1).expand(-1, 3, -1, -1), size)
    full = _resize(x.unsqueeze(1).expand(-1, 3, -1, -1)[torch.from_numpy(idx_train)], size)
    mean, std = image_stats(full)  # always the train split's statistics
    return ImageSet(imgs.contiguous(), y[idx], tuple(str(i) for i in range(10)), mean, std, "digits", hflip=False)


def _cifar10(split: str, size: int) -> ImageSet:
    from torchvision.datasets import CIFAR10

    root = Path(os.environ.get("AUTOSELECT_CACHE", Path.home() / ".cache" / "autoselect")) / "cifar10"
    try:
        ds = CIFAR10(str(root), train=split == "train", download=True)
    except Exception as exc:  # noqa: BLE001 - no network, corrupt download: the user must point --data elsewhere
        raise AutoselectError(
            f"cannot download CIFAR-10 ({first_line(exc)}); pass --data DIR with an ImageFolder copy"
        ) from None
    imgs = _resize(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), size)
    return ImageSet(imgs, torch.tensor(ds.targets), tuple(ds.classes), _CIFAR_MEAN, _CIFAR_STD, "cifar10")


_CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODES = ("auto", "memory", "stream")
MEMORY_BYTES = 1 << 30  # auto: decode into memory up to 1 GiB of uint8 pixels, else stream


def _image_folder(root: Path, split: str, size: int, limit: int | None, seed: int, mode: str,
                  max_bytes: int, workers: int | None) -> ImageSet | FileImageSet:
    base = root
    if (root / "train").is_dir():
        base = root / split if (root / split).is_dir() else root / ("val" if split == "test" else split)
        if not base.is_dir():
            raise AutoselectError(f"data directory {root} has no {split}/ split")
    paths, labels, classes = list_image_folder(base)
    cifar = [c.lower() for c in classes] == _CIFAR_CLASSES
    files = FileImageSet(str(base), paths, labels, classes, size, mean=_CIFAR_MEAN if cifar else None,
                         std=_CIFAR_STD if cifar else None, source=str(base), workers=workers)
    files = files.subset(limit, seed=seed)
    if mode == "stream" or (mode == "auto" and files.decoded_bytes > max_bytes):
        return files
    return files.in_memory()


def load_images(source: str, *, split: str = "test", input_size: int = 32, limit: int | None = None,
                seed: int = 0, mode: str = "auto", max_bytes: int = MEMORY_BYTES,
                workers: int | None = None) -> ImageSet | FileImageSet:
    """``split`` of ``source`` at ``input_size``; ``limit`` keeps a seeded random subset (drawn before decoding).

    A directory is decoded into memory (an :class:`ImageSet`) when ``mode`` is ``memory``, or ``auto`` and its
    pixels take at most ``max_bytes``; otherwise it is a :class:`FileImageSet` that streams from disk through
    ``workers`` DataLoader processes. ``digits`` and ``cifar10`` are always in memory."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}")
    if mode not in MODES:
        raise AutoselectError(f"data mode must be one of {', '.join(MODES)}, got {mode!r}")
    if limit is not None and limit < 1:
        raise AutoselectError(f"the number of images must be positive, got {limit}")
    if source == "digits":
        data = _digits(split, input_size)
    elif source == "cifar10":
        data = _cifar10(split, input_size)
    else:
        root = Path(source)
        if not root.exists():
            raise AutoselectError(f"data directory not found: {source} (or use 'digits' or 'cifar10')")
        if not root.is_dir():
            raise AutoselectError(f"--data must be a directory, 'digits' or 'cifar10', got file {source}")
        return _image_folder(root, split, input_size, limit, seed, mode, max_bytes, workers)
    return data.subset(limit, seed=seed)
