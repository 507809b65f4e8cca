"""TFLite's fixed-point arithmetic, vectorised over numpy int64 arrays.

One implementation, used by the lowering (to compute multipliers/shifts from float scales exactly as
TFLite/TFLM do in their Prepare step) and by the integer reference (to apply them). The C runtime
re-implements these functions and is compared bit for bit with :mod:`deploy.lower.reference`.

The rounding variant is TFLite's default "double rounding" (gemmlowp): SaturatingRoundingDoublingHighMul
followed by RoundingDivideByPOT — the variant the PyPI builds of LiteRT and TFLite Micro use
(``TFLITE_SINGLE_ROUNDING`` undefined); tests/deploy/export/test_export_tflite.py checks it bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
ADD_LEFT_SHIFT = 20  # TFLite int8 ADD: inputs are shifted left by 20 bits before rescaling


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real ≈ multiplier · 2^(shift − 31), multiplier a Q31 in [2^30, 2^31)."""
    real = float(real)
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed > (1 << 31):
        raise ValueError(f"quantize_multiplier: {real} is out of range")
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    return int(q_fixed), int(shift)


def quantize_multiplier_smaller_than_one(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplierSmallerThanOneExp: as :func:`quantize_multiplier`, for 0 ≤ real < 1 (shift ≤ 0)."""
    if not 0.0 <= real < 1.0:
        raise ValueError(f"multiplier {real} must be in [0, 1)")
    m, shift = quantize_multiplier(real)
    if shift > 0:
        raise ValueError(f"multiplier {real} yields a positive shift")
    return m, shift


def _round_half_away(x: float) -> int:
    """std::round: halves away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def conv_multiplier(input_scale: float, w_scale: float, output_scale: float) -> tuple[int, int]:
    """Per-channel requantisation of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, computed the way
    TFLite's PopulateConvolutionQuantizationParams does (float32 scales promoted to double)."""
    eff = float(np.float32(input_scale)) * float(np.float32(w_scale)) / float(np.float32(output_scale))
    return quantize_multiplier(eff)


def requantize_multiplier(input_scale: float, output_scale: float) -> tuple[int, int]:
    """int8→int8 QUANTIZE (requantize): effective scale input_scale / output_scale in double."""
    return quantize_multiplier(float(np.float32(input_scale)) / float(np.float32(output_scale)))


def add_params(in1_scale: float, in2_scale: float, out_scale: float) -> dict[str, int]:
    """TFLite int8 ADD parameters (left shift 20, three multiplier/shift pairs, shifts ≤ 0)."""
    s1, s2, so = (float(np.float32(s)) for s in (in1_scale, in2_scale, out_scale))
    twice_max = 2.0 * max(s1, s2)
    m1, sh1 = quantize_multiplier_smaller_than_one(s1 / twice_max)
    m2, sh2 = quantize_multiplier_smaller_than_one(s2 / twice_max)
    mo, sho = quantize_multiplier_smaller_than_one(twice_max / ((1 << ADD_LEFT_SHIFT) * so))
    return {"left_shift": ADD_LEFT_SHIFT, "in1_multiplier": m1, "in1_shift": sh1,
            "in2_multiplier": m2, "in2_shift": sh2, "out_multiplier": mo, "out_shift": sho}


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (held as int64)."""
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (int64 arrays in and out)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    neg = ab >> 63  # −1 where ab < 0, else 0
    ab += (1 << 30) + neg * ((1 << 31) - 1)  # nudge: 2^30, or 1 − 2^30 for negatives
    ab += neg & ((1 << 31) - 1)  # make the shift truncate toward zero (C division)
    ab >>= 31
    if np.any(b == INT32_MIN):
        ab = np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, ab)
    return ab


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded to nearest, halves away from zero."""
    x = np.asarray(x, np.int64)
    e = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) - (x >> 63)  # + 1 for negative x
    return (x >> e) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (double rounding); multiplier/shift broadcast against x."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_wrap32(x << left), multiplier), right)


def add_int8(x1: np.ndarray, x2: np.ndarray, zp1: int, zp2: int, zp_out: int, p: dict[str, int],
             act_min: int, act_max: int) -> np.ndarray:
    """TFLite int8 ADD on code arrays (broadcast-free), returns int8 codes clamped to [act_min, act_max]."""
    v1 = (np.asarray(x1, np.int64) - zp1) << p["left_shift"]
    v2 = (np.asarray(x2, np.int64) - zp2) << p["left_shift"]
    s1 = multiply_by_quantized_multiplier(v1, p["in1_multiplier"], p["in1_shift"])
    s2 = multiply_by_quantized_multiplier(v2, p["in2_multiplier"], p["in2_shift"])
    out = multiply_by_quantized_multiplier(s1 + s2, p["out_multiplier"], p["out_shift"]) + zp_out
    return np.clip(out, act_min, act_max).astype(np.int8)


def requantize_int8(x: np.ndarray, zp_in: int, zp_out: int, multiplier: int, shift: int,
                    act_min: int = -128, act_max: int = 127) -> np.ndarray:
    """TFLite int8→int8 QUANTIZE, then the clamp [act_min, act_max]."""
    out = multiply_by_quantized_multiplier(np.asarray(x, np.int64) - zp_in, multiplier, shift) + zp_out
    return np.clip(out, act_min, act_max).astype(np.int8)
