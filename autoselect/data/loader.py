"""A user's own ``DataLoader`` as an image set, for the Python API (profile, apply_plan, the trainer, search).

``LoaderImages(loader)`` takes a ``torch.utils.data.DataLoader``, any re-iterable of ``x`` or ``(x, y, ...)``
batches with a length, or a *factory*: a callable returning one, called at each pass in the process that iterates
(a Ray worker builds its own loader and its own worker processes; nothing but the factory is shipped). The batches
are used as they come: the loader's own batch size, order, transforms and normalization; autoselect only moves them
to the device. ``subset(n)`` is the first ``n`` images of each pass (shuffle in the loader for a random draw); a
loader cannot be split, so the search takes validation images as a second loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from autoselect.data.batches import split_batch
from autoselect.errors import AutoselectError

__all__ = ["LoaderImages"]


class LoaderImages:
    def __init__(self, loader: Iterable[Any] | Callable[[], Iterable[Any]], *, num_images: int | None = None,
                 classes: int | tuple[str, ...] | None = None, normalize: dict[str, list[float]] | None = None,
                 source: str = "loader", limit: int | None = None) -> None:
        self._source_obj = loader
        self.factory = callable(loader) and not hasattr(loader, "__iter__")
        self._num_images, self.limit, self.source = num_images, limit, source
        self._normalize = dict(normalize or {})
        if isinstance(classes, int):
            classes = tuple(str(i) for i in range(classes))
        if classes is None and not self.factory:
            found = getattr(getattr(loader, "dataset", None), "classes", None)
            classes = tuple(str(c) for c in found) if found is not None else None
        self.classes: tuple[str, ...] = classes or ()
        self.hflip = False
        self.input_size: int | None = None

    def loader(self) -> Iterable[Any]:
        """The loader for one pass (a factory's new one)."""
        obj = self._source_obj() if self.factory else self._source_obj  # type: ignore[operator]
        if not hasattr(obj, "__iter__"):
            raise AutoselectError(f"the data loader factory returned {type(obj).__name__}, not an iterable")
        return obj  # type: ignore[return-value]

    def __len__(self) -> int:
        n = self._num_images
        if n is None:
            dataset = getattr(self.loader(), "dataset", None)
            try:
                n = len(dataset)  # type: ignore[arg-type]
            except TypeError:
                raise AutoselectError("cannot tell how many images the loader yields: pass num_images= to "
                                      "LoaderImages") from None
        return n if self.limit is None else min(n, self.limit)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> torch.Tensor:  # only the class count is checked against the model (prepare)
        return torch.zeros(0, dtype=torch.int64)

    @property
    def normalize(self) -> dict[str, list[float]]:
        return dict(self._normalize)

    def with_normalize(self, normalize: dict[str, list[float]] | None) -> LoaderImages:
        return self  # the loader normalizes its own batches

    @property
    def decoded_bytes(self) -> int:
        return 0

    @property
    def storage(self) -> str:
        return "the caller's loader"

    def in_memory(self, max_bytes: int | None = None) -> LoaderImages:
        return self

    def subset(self, n: int | None, *, seed: int = 0) -> LoaderImages:
        """The first ``n`` images of each pass (``seed`` is the loader's business)."""
        if n is None:
            return self
        out = LoaderImages(self._source_obj, num_images=self._num_images, classes=self.classes,
                           normalize=self._normalize, source=self.source,
                           limit=n if self.limit is None else min(n, self.limit))
        return out

    def split(self, n: int, *, seed: int = 0) -> tuple[LoaderImages, LoaderImages]:
        raise AutoselectError("a data loader cannot be split into training and validation images: pass the "
                              "validation images as a loader of their own")

    def batches(self, batch_size: int = 128, *, device: torch.device | str = "cpu", shuffle: bool = False,
                augment: bool = False, seed: int = 0) -> LoaderBatches:
        """The loader's own batches (``batch_size``, ``shuffle``, ``augment`` and ``seed`` are the loader's)."""
        return LoaderBatches(self, torch.device(device))


class LoaderBatches:
    def __init__(self, data: LoaderImages, device: torch.device) -> None:
        self.data, self.device = data, device

    def __len__(self) -> int:
        loader = self.data.loader()
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise AutoselectError("the data loader has no length: give it __len__ (a DataLoader has one)") from None
        bs = getattr(loader, "batch_size", None)
        if self.data.limit is not None and isinstance(bs, int) and bs > 0:
            n = min(n, math.ceil(self.data.limit / bs))
        return n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        left = self.data.limit
        for batch in self.data.loader():
            x, y = split_batch(batch)
            if y is None:
                y = torch.full((len(x),), -1, dtype=torch.int64)  # unlabelled: calibration and agreement only
            if left is not None:
                x, y = x[:left], y[:left]
                left -= len(x)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if left is not None and left <= 0:
                return
