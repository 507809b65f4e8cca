/* int8 softmax along the last axis: TFLite's reference_ops::Softmax (gemmlowp fixed point), as TFLite Micro
 * runs it. params: input_multiplier, input_left_shift, diff_min (TFLM's Prepare; deploy/lower/softmax_int8.py).
 * Output scale 1/256, zero point -128. Python twin: deploy/lower/softmax_int8.py. */
#include "fixedpoint.h"
#include "kernels.h"

#define SCALED_DIFF_INTEGER_BITS 5  /* exp() input Q5.26 */
#define ACCUM_INTEGER_BITS 12       /* sum of exponentials Q12.19 */

static int32_t sat_shl(int32_t x, int k) { /* gemmlowp SaturatingRoundingMultiplyByPOT<k>, k > 0 */
    const int32_t t = (int32_t)((1u << (31 - k)) - 1u);
    if (x > t) return INT32_MAX;
    if (x < -t) return INT32_MIN;
    return smpq_shl(x, k);
}

static int32_t exp_on_interval(int32_t a) { /* exp(a), a in [-1/4, 0), Q0.31 */
    const int32_t x = smpq_add_wrap(a, 1 << 28);
    const int32_t x2 = smpq_srdhm(x, x), x3 = smpq_srdhm(x2, x), x4 = smpq_srdhm(x2, x2);
    const int32_t t = smpq_add_wrap(smpq_srdhm(smpq_add_wrap(smpq_rdbpot(x4, 2), x3), 715827883), x2);
    const int32_t poly = smpq_rdbpot(t, 1);
    return smpq_add_wrap(1895147668, smpq_srdhm(1895147668, smpq_add_wrap(x, poly)));
}

static int32_t exp_on_negative_values(int32_t a) { /* a <= 0 in Q5.26 -> exp(a) in Q0.31 */
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int fb = 31 - SCALED_DIFF_INTEGER_BITS;
    const int32_t quarter = 1 << (fb - 2);
    const int32_t a_mod = (a & (quarter - 1)) - quarter;
    int32_t result = exp_on_interval(sat_shl(a_mod, SCALED_DIFF_INTEGER_BITS));
    const int32_t remainder = (int32_t)((uint32_t)a_mod - (uint32_t)a);
    for (int k = 0; k < 7; ++k)
        if (remainder & (1 << (fb - 2 + k))) result = smpq_srdhm(result, barrel[k]);
    return a == 0 ? INT32_MAX : result;
}

static int32_t one_over_one_plus_x(int32_t a) { /* 1/(1+a), a in [0, 1) Q0.31 -> Q0.31 */
    const int64_t s = (int64_t)a + INT32_MAX;
    const int32_t half = (int32_t)((s + (s >= 0 ? 1 : -1)) / 2);
    int32_t x = smpq_add_wrap(1515870810, smpq_srdhm(half, -1010580540)); /* Q2.29 */
    for (int i = 0; i < 3; ++i) {
        const int32_t one_minus = (int32_t)((uint32_t)(1 << 29) - (uint32_t)smpq_srdhm(half, x));
        x = smpq_add_wrap(x, sat_shl(smpq_srdhm(x, one_minus), 2));
    }
    return sat_shl(x, 1);
}

static int32_t rescaled_diff(int32_t diff, int32_t mult, int left_shift) {
    return smpq_srdhm(smpq_shl(diff, left_shift), mult);
}

void smpq_softmax(const smpq_op_args *a) {
    const int32_t mult = a->params[0], diff_min = a->params[2];
    const int left_shift = (int)a->params[1];
    const uint32_t depth = (uint32_t)a->out_c, rows = a->size / depth;
    for (uint32_t r = 0; r < rows; ++r) {
        const int8_t *x = a->in + (size_t)r * depth;
        int8_t *y = a->out + (size_t)r * depth;
        int32_t max = -128;
        for (uint32_t c = 0; c < depth; ++c) max = x[c] > max ? x[c] : max;
        int32_t sum = 0;
        for (uint32_t c = 0; c < depth; ++c) {
            const int32_t diff = x[c] - max;
            if (diff >= diff_min)
                sum = smpq_add_wrap(sum, smpq_rdbpot(exp_on_negative_values(rescaled_diff(diff, mult, left_shift)),
                                                     ACCUM_INTEGER_BITS));
        }
        int headroom = 0; /* count leading zeros of sum (>= 1: the maximum contributes exp(0)) */
        while (headroom < 32 && !(((uint32_t)sum << headroom) & 0x80000000u)) ++headroom;
        const int bits_over_unit = ACCUM_INTEGER_BITS - headroom;
        const int32_t recip = one_over_one_plus_x((int32_t)(((uint32_t)sum << headroom) - 0x80000000u));
        for (uint32_t c = 0; c < depth; ++c) {
            const int32_t diff = x[c] - max;
            if (diff >= diff_min) {
                const int32_t e = exp_on_negative_values(rescaled_diff(diff, mult, left_shift));
                const int32_t v = smpq_rdbpot(smpq_srdhm(recip, e), bits_over_unit + 31 - 8) - 128;
                y[c] = smpq_clamp8(v, -128, 127);
            } else {
                y[c] = -128;
            }
        }
    }
}
