"""Data: in-memory image sets from the embedded digits, CIFAR-10, or ImageFolder directories."""

from __future__ import annotations

from autoselect.data.batches import Batches, ImageSet, split_batch
from autoselect.data.sources import CIFAR10_NORMALIZE, load_images

__all__ = ["Batches", "CIFAR10_NORMALIZE", "ImageSet", "load_images", "split_batch"]
