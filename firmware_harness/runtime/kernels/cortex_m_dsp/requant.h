/* Per-channel requantization of the Cortex-M DSP kernels: the same results as smpq_mbqm + clamp
 * (fixedpoint.h) with the channel's constants prepared once. SaturatingRoundingDoublingHighMul's
 * "(ab + nudge) / 2^31, truncated" equals floor((ab + 2^30) / 2^31) for every a, b except
 * a = b = INT32_MIN (then the reference path runs); RoundingDivideByPOT adds 1 when the remainder
 * exceeds mask/2 + (x < 0).
 * Fast path (right shift r >= 2, no left shift, multiplier > 0: every conv/ADD of the zoo): both
 * roundings fold into one 64-bit sum, v = floor((ab + 2^30 + 2^(30+r) - [ab < 0]*2^31) / 2^(31+r)) (nested
 * floors of integer divisions; for 0 > ab >= -2^30, where [h < 0] and [ab < 0] differ, both give 0), i.e.
 * one SMLAL onto a constant chosen by the product's sign and an ASR of its high word: about 10
 * instructions per output on Cortex-M7 instead of about 20 (smpq_dsp_rq_store keeps the constants in
 * registers over a column of outputs). */
#ifndef SMPQ_DSP_REQUANT_H
#define SMPQ_DSP_REQUANT_H

#include <stdint.h>

#include "../fixedpoint.h"
#include "../kernels.h"
#include "simd.h"

typedef struct {
    int32_t bias, mult, left, right, mask, half;
    int exact; /* 0: mult == INT32_MIN, use smpq_mbqm */
    int fast;  /* right >= 2, left == 0, mult > 0: smpq_dsp_rq_fast */
    int32_t hi; /* fast path: 2^(right-2), the high word of 2^30 + 2^(30+right) */
} smpq_dsp_rq;

/* The constants of one requantization: bias, Q31 multiplier, shift (TFLite's convention: > 0 left). */
static inline smpq_dsp_rq smpq_dsp_rq_make(int32_t bias, int32_t mult, int shift) {
    smpq_dsp_rq r;
    r.bias = bias;
    r.mult = mult;
    r.left = shift > 0 ? shift : 0;
    r.right = shift > 0 ? 0 : -shift;
    r.mask = (int32_t)((1ll << r.right) - 1);
    r.half = r.mask >> 1;
    r.exact = r.mult != INT32_MIN;
    r.fast = r.mult > 0 && r.left == 0 && r.right >= 2;
    r.hi = r.fast ? (int32_t)(1u << (r.right - 2)) : 0;
    return r;
}

/* Output channel o of a conv2d / depthwise / fully connected op. */
static inline smpq_dsp_rq smpq_dsp_rq_of(const smpq_op_args *a, int32_t o) {
    return smpq_dsp_rq_make(smpq_ld_i32(a->bias + 4 * o), smpq_ld_i32(a->mult + 4 * o), a->shift[o]);
}

/* The fast path before the output offset (mult > 0; see the file comment): s = -[x < 0] = -[ab < 0], the
 * constant 2^30 + 2^(30+r) + s*2^31 is (hi + s : 2^30 ^ s<<31), one SMLAL, ASR by r - 1. */
static inline int32_t smpq_dsp_rq_fast(int32_t x, int32_t mult, int32_t hi, int32_t sh) {
    const int32_t s = x >> 31;
    const uint32_t lo = 0x40000000u ^ ((uint32_t)s << 31);
    const int64_t k = (int64_t)(((uint64_t)(uint32_t)(hi + s) << 32) | lo);
    return (int32_t)((k + (int64_t)x * mult) >> 32) >> sh;
}

/* The output clamp of an op, read once (stores to int8 outputs could alias the op's arguments). */
typedef struct {
    int32_t offset, lo, hi;
} smpq_dsp_out;

static inline smpq_dsp_out smpq_dsp_out_of(const smpq_op_args *a) {
    smpq_dsp_out o;
    o.offset = a->out_offset, o.lo = a->act_min, o.hi = a->act_max;
    return o;
}

static inline int8_t smpq_dsp_rq_apply(const smpq_dsp_rq *r, int32_t acc, smpq_dsp_out o) {
    const int32_t x = smpq_add_wrap(acc, r->bias);
    int32_t v;
    if (r->fast) {
        v = smpq_dsp_rq_fast(x, r->mult, r->hi, r->right - 1);
    } else if (r->exact) {
        const int32_t h = (int32_t)(((int64_t)smpq_shl(x, r->left) * r->mult + (1ll << 30)) >> 31);
        v = (h >> r->right) + ((h & r->mask) > r->half + (int32_t)((uint32_t)h >> 31));
    } else {
        v = smpq_mbqm(x, r->mult, r->left - r->right);
    }
    return smpq_clamp8(smpq_add_wrap(v, o.offset), o.lo, o.hi);
}

/* out[i * out_step] = requantized acc[i * acc_step] for i < n: one output channel over a few pixels (the
 * channel's constants stay in registers; the clamp is one SSAT when it is int8's whole range). */
static inline __attribute__((always_inline)) void smpq_dsp_rq_store(const smpq_dsp_rq *r, const int32_t *acc, int32_t acc_step, int32_t n,
                                     int8_t *out, int32_t out_step, smpq_dsp_out o) {
    if (!r->fast) {
        for (int32_t i = 0; i < n; ++i) out[i * out_step] = smpq_dsp_rq_apply(r, acc[i * acc_step], o);
        return;
    }
    const int32_t bias = r->bias, mult = r->mult, hi = r->hi, sh = r->right - 1;
    if (o.lo == -128 && o.hi == 127) {
        for (int32_t i = 0; i < n; ++i, acc += acc_step, out += out_step)
            *out = (int8_t)smpq_ssat8(smpq_add_wrap(smpq_dsp_rq_fast(smpq_add_wrap(*acc, bias), mult, hi, sh), o.offset));
        return;
    }
    for (int32_t i = 0; i < n; ++i, acc += acc_step, out += out_step) {
        const int32_t v = smpq_dsp_rq_fast(smpq_add_wrap(*acc, bias), mult, hi, sh);
        *out = smpq_clamp8(smpq_add_wrap(v, o.offset), o.lo, o.hi);
    }
}

#endif /* SMPQ_DSP_REQUANT_H */
