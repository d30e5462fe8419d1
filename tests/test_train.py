from __future__ import annotations

import pytest
import torch

from autoselect.data import load_images
from autoselect.errors import AutoselectError
from autoselect.plan import LayerAction, Plan
from autoselect.quant.apply import apply_plan
from autoselect.train import QATConfig, train_qat
from tests.helpers import tiny_net

PLAN = Plan(layers={"role:depthwise": LayerAction(kind="qat", act="asym"), "role:project": LayerAction(kind="qat"),
                    "_default": LayerAction()})


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", split="train", limit=256), load_images("digits", split="test", limit=128)


def _qmodel(train):
    return apply_plan(tiny_net(), PLAN, train.batches(64))


def test_lr_schedule_warms_up_then_decays():
    cfg = QATConfig(steps=100, warmup_steps=10)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(99) < 0.01
    step = QATConfig(steps=100, warmup_steps=0, schedule="step")
    assert [step.lr_factor(s) for s in (0, 60, 80)] == [1.0, 0.1, 0.01]


def test_training_improves_and_reports_top1(digits):
    train, test = digits
    q = _qmodel(train)
    res = train_qat(q, train, test, QATConfig(steps=40, batch_size=32, lr=0.05, warmup_steps=5))
    assert res.steps == 40 and res.top1 is not None
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < first


def test_resume_equals_uninterrupted_run(digits, tmp_path):
    train, _ = digits
    straight = _qmodel(train)
    train_qat(straight, train, None, QATConfig(steps=20, batch_size=32, warmup_steps=2))
    ck = str(tmp_path / "qat.pt")
    cfg = QATConfig(steps=20, batch_size=32, warmup_steps=2, checkpoint=ck)
    part = train_qat(_qmodel(train), train, None, cfg, stop_at=10)  # "killed" after step 10
    assert part.steps == 10 and part.top1 is None
    resumed = _qmodel(train)
    res = train_qat(resumed, train, None, cfg, resume=True)
    assert res.resumed_from == 10 and res.steps == 20
    with pytest.raises(AutoselectError, match="resume with the same settings"):
        train_qat(_qmodel(train), train, None, QATConfig(steps=30, batch_size=32, checkpoint=ck), resume=True)
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_plan_without_qat_layers_is_refused(digits):
    train, _ = digits
    q = apply_plan(tiny_net(), Plan(layers={"_default": LayerAction()}), train.batches(64))
    with pytest.raises(AutoselectError, match="no qat layer"):
        train_qat(q, train, None, QATConfig(steps=5))
