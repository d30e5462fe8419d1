"""From command-line choices to a ready (model, data) pair, with the consistency checks users need."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from autoselect.data.types import Images
from autoselect.data.sources import load_images
from autoselect.errors import AutoselectError
from autoselect.models.loading import LoadedModel, load_model

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    loaded: LoadedModel
    train: Images | None
    test: Images | None
    val: Images | None = None  # given by the caller (a loader of its own); else the search splits train


def _check_classes(data: Images, loaded: LoadedModel, *, warn: bool) -> None:
    top = int(data.labels.max()) + 1 if len(data.labels) else 0
    if max(data.num_classes, top) > loaded.num_classes:
        raise AutoselectError(
            f"data {data.source} has {data.num_classes} classes but model {loaded.name} outputs "
            f"{loaded.num_classes} (check --num-classes or --weights)"
        )
    if warn and loaded.num_classes > data.num_classes:
        print(f"warning: model {loaded.name} outputs {loaded.num_classes} classes but data {data.source} has "
              f"{data.num_classes}: top-1 against these labels means little (agreement with FP32 still does)",
              file=sys.stderr)


def prepare(
    model: str,
    *,
    weights: str | None,
    data: str,
    num_classes: int | None = None,
    input_size: int | None = None,
    train_images: int | None = None,
    test_images: int | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    seed: int = 0,
    warn_untrained: bool = True,
    data_mode: str = "auto",
    workers: int | None = None,
) -> Prepared:
    """Load the model (classes and input size from the weights file, else the data, else 32) and the splits."""
    loaded_data: dict[str, Images] = {}
    how: dict[str, Any] = {"mode": data_mode, "workers": workers}
    limits = {"train": train_images, "test": test_images}
    if weights is None and num_classes is None:
        size = input_size or 32
        for s in splits:
            loaded_data[s] = load_images(data, split=s, input_size=size, limit=limits[s], seed=seed, **how)
        num_classes = loaded_data[splits[0]].num_classes
        with torch.random.fork_rng():  # random weights drawn from the seed: the same command, the same model
            torch.manual_seed(seed)
            loaded = load_model(model, num_classes=num_classes, input_size=size)
    else:
        loaded = load_model(model, weights=weights, num_classes=num_classes, input_size=input_size)
        for s in splits:
            loaded_data[s] = load_images(data, split=s, input_size=loaded.input_size, limit=limits[s], seed=seed,
                                         **how)
    for i, (s, d) in enumerate(loaded_data.items()):
        _check_classes(d, loaded, warn=i == 0)
        if data not in ("digits", "cifar10"):
            print(f"data: {s} split, {len(d):,} images at {loaded.input_size} px, {d.storage}", file=sys.stderr)
        loaded_data[s] = d.with_normalize(loaded.normalize)
    if weights is None and warn_untrained:
        print(f"note: no --weights given; {model} has random weights (train one with `autoselect baseline`)",
              file=sys.stderr)
    return Prepared(loaded=loaded, train=loaded_data.get("train"), test=loaded_data.get("test"))
