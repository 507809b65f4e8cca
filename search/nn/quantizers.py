"""LSQ uniform quantizers (Esser et al., "Learned Step Size Quantization", ICLR 2020).

Conventions (the integer deployment relies on every one of them):

- Rounding: :func:`round_codes` rounds half AWAY from zero (C's ``round``, TFLite's
  ``TfLiteRound``/``std::round`` used when the converter quantizes weights). It is the only rounding
  of the project: the fake quantizers use it in the forward pass, so
  ``codes = round_codes(clip(w / s))`` reproduces exactly the values the QAT model computed with.
- Weights: signed, symmetric, one step per output channel. ``b`` in 2..8 → codes in
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` (narrow range, as TFLite int8/int4 filters require; zero point 0).
  ``b = 1`` → binary ``±s`` with codes ``{-1, +1}`` (sign, ``sign(0) = +1``).
- Activations: one step per tensor, zero point 0. Unsigned (input after ReLU/ReLU6) codes in
  ``[0, 2^a-1]``; signed (input can be negative: the network input, a linear bottleneck output)
  codes in ``[-2^(a-1), 2^(a-1)-1]``. ``a`` in 2..8.
- Gradients: straight-through rounding inside the clipping range, zero outside; the step's gradient
  is LSQ's, scaled by ``g = 1/sqrt(N·Q_P)`` (N = weights per output channel for weights, features per
  sample for activations; Q_P = the largest positive code). Binary weights use the same formula with
  ``sign`` in place of ``round`` and Q_P = 1.
- Step initialisation: :func:`init_step` — ``"mse"`` (default) picks, per channel, the step minimising
  the quantisation MSE over a grid of clipping ranges (closed form ``mean|v|`` for binary);
  ``"lsq"`` is the paper's ``2·mean|v|/sqrt(Q_P)``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

MIN_STEP = 1e-8  # steps are clamped to this in the forward pass (LSQ steps must stay positive)
WEIGHT_BITS = tuple(range(1, 9))
ACT_BITS = tuple(range(2, 9))
InitMethod = Literal["mse", "lsq"]


def round_codes(v: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Round half away from zero, exactly; torch or numpy in, same out.

    For a = |v|: ``floor(2a) - floor(a)`` is ``floor(a)`` plus 1 iff the fraction is >= 0.5 (2a is exact
    in binary floating point), so no ``a + 0.5`` rounding error; the sign is put back by multiplication.
    """
    if isinstance(v, np.ndarray):
        a = np.abs(v)
        return (np.floor(2 * a) - np.floor(a)) * np.sign(v)
    a = v.abs()
    return (torch.floor(2 * a) - torch.floor(a)) * torch.sign(v)


def weight_range(bits: int) -> tuple[int, int]:
    """(min code, max code) of a weight quantizer: narrow symmetric range, or (-1, 1) for binary."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be in 1..8, got {bits}")
    if bits == 1:
        return -1, 1
    q = 2 ** (bits - 1) - 1
    return -q, q


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    """(min code, max code) of an activation quantizer."""
    if bits not in ACT_BITS:
        raise ValueError(f"activation bits must be in 2..8, got {bits}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _round_codes_(v: Tensor, nonneg: bool = False) -> Tensor:
    """:func:`round_codes` computed in place on `v` (which is consumed); returns the result.
    `nonneg`: v >= 0 is known (e.g. clipped to an unsigned range), which saves the abs/sign passes."""
    if nonneg:
        t = torch.mul(v, 2).floor_()
        return t.sub_(v.floor_())
    a = v.abs()
    f = torch.floor(a)
    a.mul_(2).floor_().sub_(f)
    return a.mul_(v.sign_())


class _LSQ(torch.autograd.Function):
    """LSQ fake quantization ``s · q(clip(x/s))`` with q = round_codes (or sign for binary).

    Backward (Esser et al.): ∂/∂x = 1 where qmin <= x/s <= qmax else 0 (straight-through);
    ∂/∂s = g · (q − x/s) inside, g · q (the clip bound) outside, summed to the step's shape.
    Written as one Function so the forward runs in place and only (x, s) are saved.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qmin: int, qmax: int, binary: bool, g: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, step)
        ctx.consts = (qmin, qmax, binary, g)
        v = torch.div(x, step)
        if binary:
            q = torch.where(v >= 0, 1.0, -1.0).to(x.dtype)
        else:
            q = _round_codes_(v.clamp_(qmin, qmax), qmin >= 0)
        return q.mul_(step)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, step = ctx.saved_tensors
        qmin, qmax, binary, g = ctx.consts
        v = torch.div(x, step)
        inside = ((v >= qmin) & (v <= qmax)).to(x.dtype)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            q = torch.where(v >= 0, 1.0, -1.0).to(x.dtype) if binary else _round_codes_(v.clamp(qmin, qmax), qmin >= 0)
            d = q.sub_(v.mul_(inside)).mul_(grad)
            grad_s = (d.sum() if step.dim() == 0 else d.sum_to_size(step.shape)) * g
        return grad_x, grad_s, None, None, None, None


FUSED_MIN_ELEMENTS = 1 << 20  # per-tensor-step activations this large take the fused kernel when no gradient is needed
_fused: dict[str, Any] = {}


def _fake_quantize_expr(x: Tensor, step: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """_LSQ.forward as one expression, for torch.compile to fuse into one pass over `x`: the same IEEE operations
    in the same order (x/s, clip, floor(2|v|) − floor(|v|), ·sign(v), ·s), so the result is bit-identical."""
    v = torch.minimum(torch.maximum(x / step, lo), hi)
    a = v.abs()
    return (torch.floor(a * 2) - torch.floor(a)) * torch.sign(v) * step


def fused_fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int) -> Tensor | None:
    """:func:`fake_quantize`'s forward in one compiled pass (torch.compile; the first call in a process compiles it,
    ≈ 20 s on 2 cores, then Inductor's cache), or None where it cannot be compiled (a warning, once; the caller
    then runs the separate operations, which compute the same bits: 7 passes over the tensor instead of 1)."""
    fn = _fused.get("fn")
    if fn is False:
        return None
    if fn is None:
        fn = _fused["fn"] = torch.compile(_fake_quantize_expr, dynamic=True)
    try:
        return fn(x, step, x.new_tensor(float(qmin)), x.new_tensor(float(qmax)))
    except Exception as e:  # noqa: BLE001 - a compiler missing or failing: fall back to the eager operations
        warnings.warn(f"fused fake quantization unavailable, using the separate operations ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})", RuntimeWarning, stacklevel=2)
        _fused["fn"] = False
        return None


def fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int, binary: bool = False, grad_scale: float = 1.0) -> Tensor:
    """``s · q(clip(x/s, qmin, qmax))`` with LSQ's straight-through gradients; `step` positive and
    broadcastable to x; its gradient is multiplied by `grad_scale` (LSQ's g). Without gradients, a large CPU
    tensor with one step (a batch's activations in a masked evaluation) goes through :func:`fused_fake_quantize`."""
    if (not binary and not torch.is_grad_enabled() and step.dim() == 0 and x.device.type == "cpu"
            and x.numel() >= FUSED_MIN_ELEMENTS):
        out = fused_fake_quantize(x, step, qmin, qmax)
        if out is not None:
            return out
    return _LSQ.apply(x, step, qmin, qmax, binary, grad_scale)


def quantize_codes(x: Tensor, step: Tensor, qmin: int, qmax: int, binary: bool = False) -> Tensor:
    """The integer codes (int32) of :func:`fake_quantize` — ``fake_quantize == codes · step`` exactly."""
    v = torch.clamp(x / step, qmin, qmax)
    q = torch.where(v >= 0, 1.0, -1.0) if binary else round_codes(v)
    return q.to(torch.int32)


def _mse_step(v: Tensor, qmin: int, qmax: int, binary: bool, grid: int = 40, chunk_elems: int = 1 << 23) -> Tensor:
    """Per-row step of `v` (C, N) minimising the MSE of fake quantization over `grid` clipping ranges
    (fractions 1/grid..1 of the row's max; ties in rounding are immaterial here, so torch.round is used)."""
    if binary:
        return v.abs().mean(dim=1).clamp_min(MIN_STEP)  # argmin_s ||s·sign(v) - v||² = mean|v|
    top = (v.abs().amax(dim=1) if qmin < 0 else v.amax(dim=1)).clamp_min(MIN_STEP * qmax)
    ratios = torch.linspace(1.0 / grid, 1.0, grid, dtype=v.dtype, device=v.device)
    errs = []
    per = max(1, chunk_elems // max(v.numel(), 1))
    for r in ratios.split(per):
        s = (top.unsqueeze(0) * r.unsqueeze(1) / qmax).clamp_min(MIN_STEP).unsqueeze(2)  # (g, C, 1)
        errs.append(((torch.clamp(torch.round(v / s), qmin, qmax) * s - v) ** 2).sum(dim=2))
    best = torch.cat(errs).argmin(dim=0)  # first minimum: the smallest step among equals
    return (top * ratios[best] / qmax).clamp_min(MIN_STEP)


def init_step(v: Tensor, qmin: int, qmax: int, binary: bool = False, method: InitMethod = "mse") -> Tensor:
    """Initial step per row of `v` (C, N): ``"mse"`` (grid search; mean|v| for binary) or ``"lsq"`` (2·mean|v|/√Q_P)."""
    v = v.detach().float()
    if method == "lsq":
        return (2 * v.abs().mean(dim=1) / math.sqrt(qmax)).clamp_min(MIN_STEP)
    if method != "mse":
        raise ValueError(f"unknown step init method '{method}' (use 'mse' or 'lsq')")
    return _mse_step(v, qmin, qmax, binary)


class WeightQuantizer(nn.Module):
    """LSQ weight quantizer: signed symmetric, one learned step per output channel (axis 0)."""

    def __init__(self, bits: int, channels: int) -> None:
        super().__init__()
        self.qmin, self.qmax = weight_range(bits)
        self.bits = bits
        self.step = nn.Parameter(torch.ones(channels))

    @property
    def binary(self) -> bool:
        return self.bits == 1

    def _step_view(self, w: Tensor) -> Tensor:
        return self.step.clamp_min(MIN_STEP).view(-1, *([1] * (w.dim() - 1)))

    def forward(self, w: Tensor) -> Tensor:
        """Fake-quantized weight (same shape as `w`)."""
        g = 1.0 / math.sqrt(w[0].numel() * self.qmax)
        return fake_quantize(w, self._step_view(w), self.qmin, self.qmax, self.binary, g)

    def scale(self) -> Tensor:
        """Per-output-channel step actually used (C,), detached."""
        return self.step.detach().clamp_min(MIN_STEP)

    @torch.no_grad()
    def codes(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(int32 codes shaped like `w`, per-channel scale (C,)); ``codes · scale`` equals :meth:`forward`."""
        return quantize_codes(w, self._step_view(w).detach(), self.qmin, self.qmax, self.binary), self.scale()

    @torch.no_grad()
    def init_from(self, w: Tensor, method: InitMethod = "mse") -> None:
        """Initialise the per-channel step from the weight tensor."""
        self.step.copy_(init_step(w.reshape(w.shape[0], -1), self.qmin, self.qmax, self.binary, method))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.step.numel()}"


class ActQuantizer(nn.Module):
    """LSQ activation quantizer: one learned step per tensor; unsigned or signed (a buffer, saved in state_dict)."""

    def __init__(self, bits: int, signed: bool = False) -> None:
        super().__init__()
        act_range(bits, signed)  # validates bits
        self.bits = bits
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("signed_flag", torch.tensor(bool(signed)))

    @property
    def signed(self) -> bool:
        return bool(self.signed_flag)

    @signed.setter
    def signed(self, value: bool) -> None:
        self.signed_flag.fill_(bool(value))

    @property
    def qmin(self) -> int:
        return act_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return act_range(self.bits, self.signed)[1]

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantized activation."""
        qmin, qmax = act_range(self.bits, self.signed)
        g = 1.0 / math.sqrt(x[0].numel() * qmax)
        return fake_quantize(x, self.step.clamp_min(MIN_STEP), qmin, qmax, False, g)

    def scale(self) -> float:
        """The step actually used (a Python float)."""
        return float(self.step.detach().clamp_min(MIN_STEP))

    @torch.no_grad()
    def codes(self, x: Tensor) -> tuple[Tensor, float]:
        """(int32 codes shaped like `x`, scale); ``codes · scale`` equals :meth:`forward`."""
        qmin, qmax = act_range(self.bits, self.signed)
        return quantize_codes(x, self.step.detach().clamp_min(MIN_STEP), qmin, qmax), self.scale()

    @torch.no_grad()
    def init_from(self, samples: Tensor, signed: bool | None = None, method: InitMethod = "mse") -> None:
        """Initialise the step (and optionally the signedness) from observed input values."""
        if signed is not None:
            self.signed = signed
        qmin, qmax = act_range(self.bits, self.signed)
        self.step.copy_(init_step(samples.reshape(1, -1), qmin, qmax, False, method)[0])

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class ActObserver:
    """Records an input's minimum and a deterministic random subsample of its values (for step init)."""

    def __init__(self, per_batch: int = 4096, cap: int = 32768, seed: int = 0) -> None:
        self.per_batch, self.cap = per_batch, cap
        self.gen = torch.Generator().manual_seed(seed)
        self.min = math.inf
        self.chunks: list[Tensor] = []
        self.count = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).float().cpu()
        self.min = min(self.min, float(flat.min()))
        if self.count >= self.cap:
            return
        if flat.numel() > self.per_batch:
            flat = flat[torch.randint(0, flat.numel(), (self.per_batch,), generator=self.gen)]
        self.chunks.append(flat)
        self.count += flat.numel()

    @property
    def signed(self) -> bool:
        """True when a negative value was seen."""
        return self.min < 0

    def samples(self) -> Tensor:
        return torch.cat(self.chunks) if self.chunks else torch.zeros(1)
