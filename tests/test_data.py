from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autoselect.data import load_images
from autoselect.errors import AutoselectError
from tests.conftest import CIFAR


def test_digits_offline_split_and_normalization():
    train = load_images("digits", split="train", input_size=32)
    test = load_images("digits", split="test", input_size=32)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.mean == test.mean  # the train split's statistics for both
    x, y = next(iter(train.batches(64)))
    assert x.shape == (64, 3, 32, 32) and abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    assert not train.hflip


def test_subset_is_seeded_and_augment_keeps_shape():
    a = load_images("digits", split="train", limit=100, seed=1)
    b = load_images("digits", split="train", limit=100, seed=1)
    assert torch.equal(a.labels, b.labels) and len(a) == 100
    x, _ = next(iter(a.batches(16, augment=True, shuffle=True)))
    assert x.shape == (16, 3, 32, 32)


def _write_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = (np.random.default_rng(i).random((size, size, 3)) * 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_image_folder_with_splits_and_resize(tmp_path):
    _write_folder(tmp_path)
    d = load_images(str(tmp_path), split="test", input_size=32)
    assert d.classes == ("cat", "dog") and len(d) == 6 and d.images.shape[-1] == 32
    assert sorted(d.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_or_empty_data_is_one_clear_error(tmp_path):
    with pytest.raises(AutoselectError, match="data directory not found"):
        load_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoselectError, match="not an ImageFolder|holds no images"):
        load_images(str(tmp_path / "empty"))


@pytest.mark.skipif(not CIFAR.is_dir(), reason="shared CIFAR-10 copy not present")
def test_cifar10_copy_loads_with_its_class_order():
    d = load_images(str(CIFAR), split="test", limit=50)
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck" and len(d) == 50
    assert d.mean == pytest.approx((0.4913, 0.4821, 0.4465))
