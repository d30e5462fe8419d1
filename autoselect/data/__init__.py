"""Data: image sets from the embedded digits, CIFAR-10, or ImageFolder directories (in memory when small, streamed
from disk when not), and users' own loaders."""

from __future__ import annotations

from autoselect.data.batches import Batches, ImageSet, split_batch
from autoselect.data.files import FileImageSet
from autoselect.data.loader import LoaderImages
from autoselect.data.sources import CIFAR10_NORMALIZE, load_images
from autoselect.data.types import Images, as_images

__all__ = ["Batches", "CIFAR10_NORMALIZE", "FileImageSet", "ImageSet", "Images", "LoaderImages", "as_images",
           "load_images", "split_batch"]
