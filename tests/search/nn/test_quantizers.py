"""LSQ quantizers: ranges, rounding, per-channel steps, STE and step gradients, codes for lowering."""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
import torch

from search.nn.quantizers import (ActQuantizer, WeightQuantizer, act_range, fake_quantize, init_step, round_codes,
                                   weight_range)


def _half_away(values: np.ndarray) -> np.ndarray:
    """Reference rounding with exact decimal arithmetic (ROUND_HALF_UP rounds ties away from zero)."""
    return np.array([float(Decimal(float(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for v in values])


def test_round_codes_is_half_away_from_zero_exactly():
    rng = np.random.default_rng(0)
    ties = np.arange(-10, 10) + 0.5
    tricky = np.array([0.5 - 2**-25, -(0.5 - 2**-25), 1.5 - 2**-23, 2.5 + 2**-22, 0.0, 126.5, -127.5], dtype=np.float32)
    v = np.concatenate([rng.normal(0, 20, 2000), ties, ties - 2**-20, ties + 2**-20, tricky]).astype(np.float32)
    ref = _half_away(v)
    np.testing.assert_array_equal(round_codes(torch.from_numpy(v)).numpy(), ref)
    np.testing.assert_array_equal(round_codes(v), ref)
    # it is not torch.round (half to even): the ties differ
    assert not torch.equal(torch.round(torch.from_numpy(ties)), round_codes(torch.from_numpy(ties)))


@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_levels_and_range(bits):
    lo, hi = weight_range(bits)
    q = WeightQuantizer(bits, 2)
    with torch.no_grad():
        q.step.copy_(torch.tensor([0.1, 0.2]))
    w = torch.linspace(-50, 50, 20001).repeat(2, 1)
    codes, scale = q.codes(w)
    levels = torch.unique(codes).tolist()
    if bits == 1:
        assert levels == [-1, 1]
    else:
        assert (lo, hi) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        assert levels == list(range(lo, hi + 1))  # narrow symmetric range: 2^b - 1 levels
    torch.testing.assert_close(scale, torch.tensor([0.1, 0.2]))
    # codes · scale is exactly what the forward pass computes
    assert torch.equal(q(w).detach(), codes.float() * scale.view(-1, 1))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", range(2, 9))
def test_activation_levels_and_range(bits, signed):
    lo, hi = act_range(bits, signed)
    assert hi - lo + 1 == 2**bits
    assert lo == (-(2 ** (bits - 1)) if signed else 0)
    q = ActQuantizer(bits, signed)
    with torch.no_grad():
        q.step.fill_(0.05)
    x = torch.linspace(-100, 100, 40001)
    codes, scale = q.codes(x)
    assert torch.unique(codes).tolist() == list(range(lo, hi + 1))
    assert torch.equal(q(x).detach(), codes.float() * scale)
    assert (q.qmin, q.qmax) == (lo, hi)


def test_binary_weights_are_sign_times_step():
    q = WeightQuantizer(1, 3)
    w = torch.tensor([[-0.3, 0.0, 0.7], [2.0, -2.0, 0.1], [0.0, 0.0, -1e-9]])
    q.init_from(w)
    torch.testing.assert_close(q.scale(), w.abs().mean(dim=1))  # MSE-optimal binary step
    codes, _ = q.codes(w)
    assert codes.tolist() == [[-1, 1, 1], [1, -1, 1], [1, 1, -1]]  # sign(0) = +1


def test_bad_bits_are_rejected():
    for bits in (0, 9):
        with pytest.raises(ValueError):
            WeightQuantizer(bits, 1)
    for bits in (1, 9):
        with pytest.raises(ValueError):
            ActQuantizer(bits)


def test_per_channel_steps_follow_channel_scale():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 8, 3, 3, generator=g) * torch.tensor([0.01, 0.1, 1.0, 10.0]).view(4, 1, 1, 1)
    q = WeightQuantizer(4, 4)
    q.init_from(w)
    s = q.scale()
    assert len(set(s.tolist())) == 4
    ratios = s[1:] / s[:-1]
    assert torch.all((ratios > 3) & (ratios < 30))  # each channel's step tracks its own magnitude
    # every channel uses its own step: quantizing one channel alone gives the same values
    full = q(w).detach()
    for c in range(4):
        alone = round_codes(torch.clamp(w[c] / s[c], -7, 7)) * s[c]
        assert torch.equal(full[c], alone)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_init_is_no_worse_than_lsq_init(bits):
    v = torch.randn(16, 500, generator=torch.Generator().manual_seed(bits))
    lo, hi = weight_range(bits)

    def mse(step: torch.Tensor) -> torch.Tensor:
        s = step.view(-1, 1)
        return ((torch.clamp(round_codes(v / s), lo, hi) * s - v) ** 2).mean(dim=1)

    assert torch.all(mse(init_step(v, lo, hi, method="mse")) <= mse(init_step(v, lo, hi, method="lsq")) + 1e-9)
    with pytest.raises(ValueError):
        init_step(v, lo, hi, method="max")


def test_ste_gradient_is_one_inside_and_zero_outside():
    a = ActQuantizer(4, signed=False)
    with torch.no_grad():
        a.step.fill_(0.1)  # range [0, 1.5]
    x = torch.tensor([-0.5, 0.01, 0.33, 0.77, 1.49, 1.6, 3.0], requires_grad=True)
    a(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]

    w = WeightQuantizer(3, 1)  # codes -3..3
    with torch.no_grad():
        w.step.fill_(0.5)  # range [-1.5, 1.5]
    x = torch.tensor([[-2.0, -1.2, 0.1, 1.4, 1.7]], requires_grad=True)
    w(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]

    b = WeightQuantizer(1, 1)
    with torch.no_grad():
        b.step.fill_(0.5)
    x = torch.tensor([[-0.7, -0.2, 0.3, 0.6]], requires_grad=True)
    b(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def _surrogate_fd(x: torch.Tensor, s0: float, lo: int, hi: int, up: torch.Tensor, binary: bool, eps: float = 1e-4) -> float:
    """Finite difference in s of LSQ's STE surrogate  s·clip(x/s) + s·c,  c = q(clip(x/s0)) − clip(x/s0) frozen at s0."""
    v0 = torch.clamp(x.double() / s0, lo, hi)
    c = (torch.where(v0 >= 0, 1.0, -1.0).double() if binary else round_codes(v0)) - v0

    def h(s: float) -> float:
        return float(((s * torch.clamp(x.double() / s, lo, hi) + s * c) * up.double()).sum())

    return (h(s0 + eps) - h(s0 - eps)) / (2 * eps)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_weight_step_gradient_matches_lsq_definition(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(3, 50, generator=g)
    up = torch.randn(3, 50, generator=g)
    q = WeightQuantizer(bits, 3)
    with torch.no_grad():
        q.step.copy_(torch.tensor([0.05, 0.3, 0.9]))
    (q(w) * up).sum().backward()
    lo, hi = weight_range(bits)
    gscale = 1.0 / math.sqrt(50 * hi)
    for c in range(3):
        fd = _surrogate_fd(w[c], float(q.step[c].detach()), lo, hi, up[c], bits == 1)
        assert abs(float(q.step.grad[c]) - gscale * fd) <= 1e-4 * max(1.0, abs(gscale * fd))


@pytest.mark.parametrize("signed", [False, True])
def test_activation_step_gradient_matches_lsq_definition(signed):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 5, 5, generator=g) * 2
    up = torch.randn(4, 2, 5, 5, generator=g)
    q = ActQuantizer(3, signed)
    with torch.no_grad():
        q.step.fill_(0.4)
    (q(x) * up).sum().backward()
    lo, hi = act_range(3, signed)
    fd = _surrogate_fd(x, 0.4, lo, hi, up, False) / math.sqrt(50 * hi)  # N = features per sample
    assert abs(float(q.step.grad) - fd) <= 1e-4 * max(1.0, abs(fd))
    # the analytic LSQ gradient, element by element: round(v) − v inside, the clip bound outside
    v = x / 0.4
    inside = (v >= lo) & (v <= hi)
    d = torch.where(inside, round_codes(v) - v, torch.clamp(v, lo, hi))
    torch.testing.assert_close(q.step.grad, (d * up).sum() / math.sqrt(50 * hi), rtol=1e-5, atol=1e-6)


def test_activation_signedness_is_saved_in_state_dict():
    a = ActQuantizer(4, signed=True)
    b = ActQuantizer(4, signed=False)
    b.load_state_dict(a.state_dict())
    assert b.signed and (b.qmin, b.qmax) == (-8, 7)


def test_fused_fake_quantization_is_bit_identical_to_the_separate_operations():
    """A batch's activations under no_grad take one compiled pass (search.nn.quantizers.fused_fake_quantize);
    it must give the bits of _LSQ's separate operations: ties at .5, clipped values, both signs, both layouts."""
    from search.nn.quantizers import _LSQ, FUSED_MIN_ELEMENTS, fused_fake_quantize

    torch.manual_seed(0)
    x = torch.randn(16, 64, 32, 32) * 20
    assert x.numel() >= FUSED_MIN_ELEMENTS
    step = torch.tensor(0.25)
    x.view(-1)[:2000] = (torch.arange(2000) - 1000) * 0.5 * step  # every half step: exact ties
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        for bits, signed in ((8, False), (8, True), (4, False), (2, True)):
            qmin, qmax = act_range(bits, signed)
            with torch.no_grad():
                fused = fused_fake_quantize(xl, step, qmin, qmax)
                assert fused is not None, "torch.compile could not build the fused kernel (is a C++ compiler installed?)"
                eager = _LSQ.apply(xl, step, qmin, qmax, False, 1.0)
                routed = fake_quantize(xl, step, qmin, qmax)
            assert torch.equal(fused, eager) and torch.equal(routed, eager), (bits, signed, layout)
            assert fused.is_contiguous(memory_format=layout)
    with torch.no_grad():  # what the fused pass would get wrong if it rounded half to even: 0.5 → 1, 2.5 → 3
        half = fake_quantize(torch.full((FUSED_MIN_ELEMENTS,), 2.5) * step, step, 0, 255)
    assert torch.equal(half, torch.full_like(half, 3.0) * step)
