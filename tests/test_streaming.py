"""Streamed image folders (FileImageSet) and users' own loaders (LoaderImages) behave like in-memory sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import autoselect.data.files as files_mod
from autoselect import apply_plan, train_qat
from autoselect.data import FileImageSet, ImageSet, LoaderImages, as_images, load_images
from autoselect.errors import AutoselectError
from autoselect.plan import LayerAction, Plan
from autoselect.train import QATConfig
from tests.helpers import tiny_net


def _folder(root, per_class=12, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = (int(v) for v in rng.integers(24, 64, 2))  # not square, not the input size
                Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def _all(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_streamed_and_in_memory_folders_give_the_same_images_and_draws(tmp_path):
    root = _folder(tmp_path)
    mem = load_images(str(root), split="test", input_size=32, mode="memory")
    files = load_images(str(root), split="test", input_size=32, mode="stream", workers=2)
    assert isinstance(mem, ImageSet) and isinstance(files, FileImageSet)
    assert files.mean == mem.mean and files.classes == mem.classes
    xm, ym = _all(mem.batches(16))
    xf, yf = _all(files.batches(16))
    assert xf.shape == (36, 3, 32, 32) and torch.equal(xm, xf) and torch.equal(ym, yf)
    assert torch.equal(mem.subset(10, seed=3).labels, files.subset(10, seed=3).labels)
    (a, b), (c, d) = mem.split(9, seed=1), files.split(9, seed=1)
    assert torch.equal(a.labels, c.labels) and torch.equal(b.labels, d.labels)


def test_auto_streams_above_the_memory_limit_and_subsets_decode_nothing(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    small = load_images(str(root), split="train", input_size=32)
    big = load_images(str(root), split="train", input_size=32, max_bytes=36 * 3 * 32 * 32 - 1)
    assert isinstance(small, ImageSet) and isinstance(big, FileImageSet)
    assert load_images(str(root), split="train", input_size=32, limit=5, max_bytes=5 * 3 * 32 * 32).__class__ \
        is ImageSet  # the limit is drawn before deciding

    def refuse(path):
        raise AssertionError(f"decoded {path}")

    big.mean  # noqa: B018 - the statistics decode a sample once, before decoding is refused
    monkeypatch.setattr(files_mod, "_open_rgb", refuse)
    rest, held = big.split(6, seed=0)
    sub = rest.subset(7, seed=1)
    assert len(held) == 6 and len(sub) == 7 and len(rest) == 30
    assert not set(held.paths.tolist()) & set(rest.paths.tolist())


def test_training_augmentation_is_seeded_per_pass_and_the_same_with_any_number_of_workers(tmp_path):
    files = load_images(str(_folder(tmp_path)), split="train", input_size=32, mode="stream", workers=2)
    one = files.batches(8, shuffle=True, augment=True, seed=4)
    x1, y1 = next(iter(one))
    x2, _ = next(iter(one))  # second pass: new shuffle, new crops
    x0, y0 = next(iter(files.with_workers(0).batches(8, shuffle=True, augment=True, seed=4)))
    assert x1.shape == (8, 3, 32, 32) and torch.equal(x1, x0) and torch.equal(y1, y0)
    assert not torch.equal(x1, x2)
    plain, _ = next(iter(files.batches(8)))
    assert not torch.equal(plain, x1)


def test_a_corrupt_image_in_a_worker_is_one_clear_error(tmp_path):
    root = _folder(tmp_path)
    (root / "test" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    files = load_images(str(root), split="test", input_size=32, mode="stream", workers=1)
    files = FileImageSet(files.root, files.paths, files.labels.numpy(), files.classes, 32, mean=(0.5,) * 3,
                         std=(0.25,) * 3, workers=1)
    with pytest.raises(AutoselectError) as err:
        _all(files.batches(64))
    assert str(err.value).startswith("cannot decode image") and "broken.jpg" in str(err.value)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
        self.classes = ["w", "x", "y", "z"]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_a_users_dataloader_or_factory_is_an_image_set():
    loader = torch.utils.data.DataLoader(_Pairs(40), batch_size=16)
    data = as_images(loader)
    assert isinstance(data, LoaderImages) and len(data) == 40 and data.num_classes == 4
    assert len(data.batches()) == 3 and sum(len(x) for x, _ in data.batches()) == 40
    sub = data.subset(20)
    assert len(sub) == 20 and len(sub.batches()) == 2 and sum(len(y) for _, y in sub.batches()) == 20
    calls = []

    def factory():
        calls.append(1)
        return torch.utils.data.DataLoader(_Pairs(40), batch_size=8)

    made = LoaderImages(factory, num_images=40, classes=4)
    assert sum(len(x) for x, _ in made.batches()) == 40 and calls  # built in the process that iterates
    with pytest.raises(AutoselectError, match="cannot be split"):
        data.split(10)
    with pytest.raises(AutoselectError, match="num_images"):
        len(LoaderImages([(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))]))


def test_the_trainer_and_apply_plan_take_a_users_dataloader():
    plan = Plan(layers={"_default": LayerAction(kind="qat")})
    loader = torch.utils.data.DataLoader(_Pairs(64), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    qmodel = apply_plan(tiny_net(num_classes=4), plan, loader)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    res = train_qat(qmodel, loader, loader, QATConfig(steps=6, batch_size=16, lr=0.01))
    assert res.steps == 6 and res.top1 is not None
    assert any(not torch.equal(before[k], v) for k, v in qmodel.state_dict().items())


def _pairs_loader(n: int = 96):
    return torch.utils.data.DataLoader(_Pairs(n), batch_size=16)


def test_search_takes_a_users_loaders(tmp_path):
    from autoselect.models import save_checkpoint
    from autoselect.search import ProxyBudget, SearchConfig, search

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, tiny_net(num_classes=4), model_name="tests.helpers:tiny_net", num_classes=4,
                    input_size=16, normalize={"mean": [0.0] * 3, "std": [1.0] * 3})
    cfg = SearchConfig(model="tests.helpers:tiny_net", weights=str(ckpt), target="generic", trials=2,
                       proxy=ProxyBudget(steps=2, batch_size=16, eval_every=2, calib_images=32),
                       profile_images=32, out=str(tmp_path / "s"), progress=False, latency="cost")
    with pytest.raises(AutoselectError, match="cannot be split"):
        search(cfg, train=_pairs_loader())
    res = search(cfg, train=_pairs_loader, val=_pairs_loader(48))  # a factory for training, a loader to validate
    assert len(res.trials) == 2 and (res.out / "plan.json").is_file()


def test_cli_streams_a_folder_and_says_so(tmp_path, capsys):
    from autoselect.cli import main

    root = _folder(tmp_path / "data")
    assert main(["ptq", "--model", "tests.helpers:tiny_net", "--quiet", "--data", str(root), "--data-mode", "stream",
                 "--workers", "1", "--calib-images", "16", "--eval-images", "16", "--plain-only"]) == 0
    err = capsys.readouterr().err
    assert "train split, 16 images at 32 px, streamed from disk (1 loader worker)" in err
    assert main(["ptq", "--model", "tests.helpers:tiny_net", "--quiet", "--data", str(root),
                 "--data-mode", "disk"]) == 2
