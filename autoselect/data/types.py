"""The data sets the library takes, and :func:`as_images` for what a Python user may pass instead."""

from __future__ import annotations

from typing import Any, Union

from autoselect.data.batches import ImageSet
from autoselect.data.files import FileImageSet
from autoselect.data.loader import LoaderImages

__all__ = ["Images", "as_images"]

Images = Union[ImageSet, FileImageSet, LoaderImages]


def as_images(data: Any) -> Images:
    """``data`` as an image set: an ImageSet, FileImageSet or LoaderImages as it is; a DataLoader, any re-iterable
    of batches, or a factory returning one, wrapped in :class:`LoaderImages`."""
    if isinstance(data, (ImageSet, FileImageSet, LoaderImages)):
        return data
    if hasattr(data, "__iter__") or callable(data):
        return LoaderImages(data)
    raise TypeError(f"expected an image set, a DataLoader or a loader factory, got {type(data).__name__}")
