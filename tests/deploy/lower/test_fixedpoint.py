"""TFLite fixed-point helpers against hand-computed values (negative values, ties, saturation)."""
from __future__ import annotations

import numpy as np
import pytest

from deploy.lower.fixedpoint import (INT32_MAX, INT32_MIN, add_params, conv_multiplier, multiply_by_quantized_multiplier,
                               quantize_multiplier, quantize_multiplier_smaller_than_one, rounding_divide_by_pot,
                               saturating_rounding_doubling_high_mul)


@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.75, (1610612736, 0)),
    (0.1, (1717986918, -3)),          # 0.1 = 0.8·2^-3, round(0.8·2^31) = 1717986918
    (1 - 2.0 ** -40, (1 << 30, 1)),   # rounds up to 2^31 → halved, shift + 1
    (0.0, (0, 0)),
    (2.0 ** -40, (0, 0)),             # shift < −31 flushes to zero
])
def test_quantize_multiplier(real, expected):
    assert quantize_multiplier(real) == expected


def test_smaller_than_one_rejects_large():
    with pytest.raises(ValueError):
        quantize_multiplier_smaller_than_one(1.5)


def test_srdhm_rounding_and_saturation():
    a = np.array([1 << 30, 5, -5, 3, -3, INT32_MIN, INT32_MIN, INT32_MAX])
    b = np.array([1 << 30, 1 << 30, 1 << 30, 1 << 30, 1 << 30, INT32_MIN, INT32_MAX, INT32_MAX])
    # 5·2^30/2^31 = 2.5 → 3; −2.5 → −2 (gemmlowp nudges negatives by 1 − 2^30 and truncates)
    expected = [1 << 29, 3, -2, 2, -1, INT32_MAX, -(INT32_MAX), INT32_MAX - 1]
    assert saturating_rounding_doubling_high_mul(a, b).tolist() == expected


def test_rounding_divide_by_pot_halves_away_from_zero():
    x = np.array([5, -5, -4, 7, -6, 6, 0, -1])
    e = np.array([1, 1, 1, 2, 2, 2, 3, 1])
    assert rounding_divide_by_pot(x, e).tolist() == [3, -3, -2, 2, -2, 2, 0, -1]


def test_multiply_by_quantized_multiplier():
    x = np.array([100, 100, 100, -100, 1000, -7])
    m = np.array([1 << 30, 1 << 30, 1 << 30, 1 << 30, 1717986918, 1 << 30])
    s = np.array([0, -1, 2, -3, -3, -1])
    # 100·0.5 = 50; 100·0.25 = 25; 100·2 = 200; −100/16 = −6.25 → −6; 1000·0.1 = 100; −7/4 = −1.75 → −2
    assert multiply_by_quantized_multiplier(x, m, s).tolist() == [50, 25, 200, -6, 100, -2]


def test_double_rounding_differs_from_exact_rounding():
    """TFLite's default (double) rounding: −81.4966 can land on −82 — the C runtime must copy this."""
    m, s = quantize_multiplier(81.4965662758964 / 14591)
    out = int(multiply_by_quantized_multiplier(np.array([-14591]), m, s)[0])
    assert out in (-81, -82)
    exact = round(-14591 * m * 2.0 ** (s - 31))
    assert abs(out - exact) <= 1


def test_add_params():
    p = add_params(0.5, 0.25, 1.0)
    assert p["left_shift"] == 20
    assert (p["in1_multiplier"], p["in1_shift"]) == (1 << 30, 0)
    assert (p["in2_multiplier"], p["in2_shift"]) == (1 << 30, -1)
    assert (p["out_multiplier"], p["out_shift"]) == (1 << 30, -19)


def test_conv_multiplier_uses_float32_scales():
    # scales are rounded to float32 first, as they are stored in a .tflite file
    s = 0.1
    assert conv_multiplier(s, s, s) == quantize_multiplier(float(np.float32(s)))
