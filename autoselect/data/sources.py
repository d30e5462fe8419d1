"""Where images come from: the embedded digits set, CIFAR-10 through torchvision, or any ImageFolder directory.

``load_images(source, split=..., input_size=...)`` accepts:

- ``"digits"`` — scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upsampled to
  ``input_size`` and made RGB; a fixed 80/20 stratified split. Works offline on a fresh machine;
- ``"cifar10"`` — torchvision's CIFAR-10, downloaded to ``~/.cache/autoselect`` where a network allows;
- a directory — ImageFolder layout; if it holds ``train/`` and ``test/`` (or ``val/``), ``split`` picks one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoselect.data.batches import ImageSet
from autoselect.errors import AutoselectError, first_line

__all__ = ["load_images", "CIFAR10_NORMALIZE"]

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


def _stats(images: torch.Tensor) -> tuple[Triple, Triple]:
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
    mean, std = _stats(full)  # always the train split's statistics
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


def _decode(path: str, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as f:
            rgb = f.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise AutoselectError(f"cannot decode image {path}: {first_line(exc)}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def _image_folder(root: Path, split: str, size: int, limit: int | None, seed: int) -> ImageSet:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    base = root
    if (root / "train").is_dir():
        base = root / split if (root / split).is_dir() else root / ("val" if split == "test" else split)
        if not base.is_dir():
            raise AutoselectError(f"data directory {root} has no {split}/ split")
    try:
        classes, to_idx = find_classes(str(base))
        samples = make_dataset(str(base), to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as exc:
        raise AutoselectError(f"data directory {base} is not an ImageFolder: {first_line(exc)}") from None
    if not samples:
        raise AutoselectError(f"data directory {base} holds no images")
    if limit is not None and limit < len(samples):
        pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        samples = [samples[i] for i in pick.tolist()]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        imgs = list(pool.map(lambda s: _decode(s[0], size), samples, chunksize=256))
    images = torch.stack(imgs)
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    if [c.lower() for c in classes] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                        "ship", "truck"]:
        mean, std = _CIFAR_MEAN, _CIFAR_STD
    else:
        mean, std = _stats(images)
    return ImageSet(images, labels, tuple(classes), mean, std, str(base))


def load_images(source: str, *, split: str = "test", input_size: int = 32, limit: int | None = None,
                seed: int = 0) -> ImageSet:
    """Load ``split`` of ``source`` into memory at ``input_size``; ``limit`` keeps a seeded random subset."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}")
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
        return _image_folder(root, split, input_size, limit, seed)
    return data.subset(limit, seed=seed)
