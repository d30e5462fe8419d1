"""LSQ / LSQ+ learned-step quantizer: its forward is the fixed grid's, its gradients are LSQ's, and training the
step size from a bad start finds a good one."""

from __future__ import annotations

import math

import torch

from autoselect.quant.lsq import LearnedQuantizer, lsq_fake_quant
from autoselect.quant.observers import fake_quant, weight_qparams
from autoselect.quant.spec import TensorQuant


def test_forward_is_the_fixed_grid():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 5, 5, generator=g) * 3
    for tq, scale, zp in ((TensorQuant(bits=4, symmetric=True), torch.tensor(0.2), torch.tensor(0)),
                          (TensorQuant(bits=8, symmetric=False), torch.tensor(0.03), torch.tensor(100)),
                          (TensorQuant(bits=5, symmetric=True, per_channel=True), torch.rand(4, generator=g) + 0.1,
                           torch.zeros(4, dtype=torch.int32))):
        ref = fake_quant(x, scale, zp.to(torch.int32), tq, axis=0)
        got = lsq_fake_quant(x, scale.float(), zp.float(), tq, axis=0)
        assert torch.allclose(got, ref, atol=1e-6)


def test_gradients_are_lsq_s():
    tq = TensorQuant(bits=4, symmetric=False)  # grid 0..15
    x = torch.tensor([0.26, 1.0, -5.0, 9.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    z = torch.tensor(2.0, requires_grad=True)
    lsq_fake_quant(x, s, z, tq).sum().backward()
    v = x.detach() / 0.5 + 2.0  # 2.52, 4.0, -8.0 (clipped at 0), 20.0 (clipped at 15)
    expect_s = [round(v[0].item()) - v[0].item(), 0.0, 0 - 2.0, 15 - 2.0]
    assert torch.allclose(s.grad, torch.tensor(sum(expect_s)), atol=1e-5)
    assert torch.allclose(z.grad, torch.tensor(-0.5 * 2), atol=1e-6)  # -s per clipped element, 0 inside
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # LSQ's gradient scale multiplies the step's gradient only
    s2 = torch.tensor(0.5, requires_grad=True)
    out = lsq_fake_quant(x.detach(), s2, torch.tensor(2.0), tq, grad_scale=0.1)
    out.sum().backward()
    assert torch.allclose(s2.grad, 0.1 * s.grad, atol=1e-6)
    assert torch.allclose(out, lsq_fake_quant(x.detach(), s.detach(), z.detach(), tq))


def test_training_the_step_from_a_bad_start_reaches_the_mse_range():
    """A 4-bit per-tensor grid started 8x too wide (most weights round to 0) is trained on the weights' own
    quantization error; it ends within 5% of the error of the mse observer's range, from about 10x above it."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3 * 3 * 16, generator=g).sign() * torch.empty(64, 144).exponential_(generator=g)
    tq = TensorQuant(bits=4, symmetric=True, observer="mse")
    best_scale, _ = weight_qparams(w, tq)
    zero = torch.zeros((), dtype=torch.int32)
    best = (fake_quant(w, best_scale, zero, tq) - w).pow(2).mean().item()
    q = LearnedQuantizer(tq, best_scale * 8, zero, elements=w.numel())
    start = (q(w) - w).pow(2).mean().item()
    opt = torch.optim.Adam(q.parameters(), lr=0.1)  # Adam moves log(step) by about lr a step: log 8 needs 21
    for _ in range(300):
        opt.zero_grad()
        loss = (q(w) - w).pow(2).mean()
        loss.backward()
        opt.step()
    scale, zp = q.qparams()
    end = (fake_quant(w, scale, zp, tq) - w).pow(2).mean().item()
    assert start > 5 * best
    assert end < 1.05 * best, (start, end, best)
    assert zp.dtype == torch.int32 and int(zp) == 0 and scale > 0


def test_asymmetric_grid_is_learned_and_returned_on_the_integer_grid():
    """An 8-bit activation grid whose zero-point sits mid-grid (half its levels below zero) clips the top half of a
    ReLU-like input; Adam on the error (the trainer's optimizer for grids) moves the grid so that the error falls
    over 100x, and
    the zero-point given back is an integer in [0, 255] that moved from the start."""
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(64, 256, generator=g)) * 2
    tq = TensorQuant(bits=8, symmetric=False)
    scale = torch.tensor(x.max().item() / 255)
    q = LearnedQuantizer(tq, scale, torch.tensor(128), elements=None)  # LSQ's N: one sample's elements
    start = (q(x) - x).pow(2).mean().item()
    opt = torch.optim.Adam(q.parameters(), lr=0.05)  # as the trainer trains steps and zero-points
    for _ in range(200):
        opt.zero_grad()
        (q(x) - x).pow(2).mean().backward()
        opt.step()
    scale_t, zp = q.qparams()
    end = (fake_quant(x, scale_t, zp, tq) - x).pow(2).mean().item()
    assert end < start / 100, (start, end)
    assert zp.dtype == torch.int32 and 0 <= int(zp) < 128
    assert not math.isnan(end)
