"""TFLite's int8 SOFTMAX (reference_ops::Softmax with gemmlowp fixed point), vectorised over numpy rows.

TFLite Micro runs this kernel for int8 → int8 softmax (output scale 1/256, zero point −128). The
parameters are computed as TFLM's CalculateSoftmaxParams does (PreprocessSoftmaxScaling with 5 integer
bits, CalculateInputRadius); the C runtime's kernels/softmax.c is the same arithmetic and is compared
bit for bit with this module and with TFLM.
"""
from __future__ import annotations

import math

import numpy as np

from deploy.lower.fixedpoint import (INT32_MAX, INT32_MIN, quantize_multiplier, rounding_divide_by_pot,
                               saturating_rounding_doubling_high_mul as srdhm)

SCALED_DIFF_INTEGER_BITS = 5    # the exp() input is Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exponentials is Q12.19
OUTPUT_SCALE, OUTPUT_ZERO_POINT = 1.0 / 256, -128  # what TFLM requires of an int8 softmax output
# gemmlowp's constants (exp_on_negative_values barrel shifter: exp(-2^k) in Q0.31 for k = -2..4)
EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))
EXP_MINUS_ONE_EIGHTH, ONE_THIRD = 1895147668, 715827883
FORTY_EIGHT_OVER_17, MINUS_32_OVER_17 = 1515870810, -1010580540


def softmax_params(beta: float, input_scale: float) -> dict[str, int]:
    """input_multiplier, input_left_shift and diff_min of an int8 softmax (TFLM's Prepare)."""
    ib = SCALED_DIFF_INTEGER_BITS
    real = min(float(np.float32(beta)) * float(np.float32(input_scale)) * (1 << (31 - ib)), (1 << 31) - 1.0)
    mult, shift = quantize_multiplier(real)
    if shift < 0:
        raise ValueError(f"softmax input scale {input_scale} × beta {beta} is too small (negative left shift)")
    radius = math.floor(((1 << ib) - 1) * (1 << (31 - ib)) / (1 << shift))
    return {"input_multiplier": int(mult), "input_left_shift": int(shift), "diff_min": -int(radius)}


def _wrap(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _sat_shl(x: np.ndarray, k: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT<k> for k > 0 (a saturating left shift)."""
    t = (1 << (31 - k)) - 1
    return np.where(x > t, INT32_MAX, np.where(x < -t, INT32_MIN, x << k))


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out (Taylor series around -1/8)."""
    x = _wrap(a + (1 << 28))
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    poly = rounding_divide_by_pot(_wrap(srdhm(_wrap(rounding_divide_by_pot(x4, 2) + x3), ONE_THIRD) + x2), 1)
    return _wrap(EXP_MINUS_ONE_EIGHTH + srdhm(EXP_MINUS_ONE_EIGHTH, _wrap(x + poly)))


def exp_on_negative_values(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp_on_negative_values: a ≤ 0 in Q5.26 → exp(a) in Q0.31."""
    fb = 31 - SCALED_DIFF_INTEGER_BITS
    quarter = 1 << (fb - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(_sat_shl(a_mod, SCALED_DIFF_INTEGER_BITS))
    remainder = _wrap(a_mod - a)
    for exponent, mult in EXP_BARREL:
        result = np.where(remainder & (1 << (fb + exponent)), srdhm(result, mult), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (Newton–Raphson, 3 steps): Q0.31 → Q0.31."""
    s = a + INT32_MAX
    s = s + np.where(s >= 0, 1, -1)
    half = np.where(s >= 0, s // 2, -((-s) // 2))  # RoundingHalfSum (C division)
    x = _wrap(FORTY_EIGHT_OVER_17 + srdhm(half, MINUS_32_OVER_17))  # Q2.29
    for _ in range(3):
        one_minus = _wrap((1 << 29) - srdhm(half, x))
        x = _wrap(x + _sat_shl(srdhm(x, one_minus), 2))
    return _sat_shl(x, 1)


def _bit_length(x: np.ndarray) -> np.ndarray:
    return sum(((x >> k) > 0).astype(np.int64) for k in range(32))


def softmax_int8(x: np.ndarray, input_multiplier: int, input_left_shift: int, diff_min: int) -> np.ndarray:
    """int8 codes (..., depth) → int8 softmax codes along the last axis (scale 1/256, zero point −128)."""
    v = np.asarray(x, np.int64)
    diff = v - v.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    scaled = srdhm(_wrap(diff << input_left_shift), input_multiplier)
    e = exp_on_negative_values(scaled)
    total = np.where(valid, rounding_divide_by_pot(e, ACCUMULATION_INTEGER_BITS), 0).sum(axis=-1, keepdims=True)
    headroom = 32 - _bit_length(total)  # CountLeadingZeros (total ≥ 1: the row maximum contributes exp(0))
    bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom
    recip = _one_over_one_plus_x(_wrap((total << headroom) - (1 << 31)))
    out = rounding_divide_by_pot(srdhm(recip, e), bits_over_unit + 31 - 8) + OUTPUT_ZERO_POINT
    return np.where(valid, np.clip(out, -128, 127), -128).astype(np.int8)
