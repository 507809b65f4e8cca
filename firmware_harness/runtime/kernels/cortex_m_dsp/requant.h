/* Per-channel requantization of the Cortex-M DSP kernels: the same results as smpq_mbqm + clamp
 * (fixedpoint.h) with the channel's constants prepared once. SaturatingRoundingDoublingHighMul's
 * "(ab + nudge) / 2^31, truncated" equals floor((ab + 2^30) / 2^31) for every a, b except
 * a = b = INT32_MIN (then the reference path runs); RoundingDivideByPOT adds 1 when the remainder
 * exceeds mask/2 + (x < 0). About 15 instructions per output on Cortex-M7 instead of about 45. */
#ifndef SMPQ_DSP_REQUANT_H
#define SMPQ_DSP_REQUANT_H

#include <stdint.h>

#include "../fixedpoint.h"
#include "../kernels.h"

typedef struct {
    int32_t bias, mult, left, right, mask, half;
    int exact; /* 0: mult == INT32_MIN, use smpq_mbqm */
} smpq_dsp_rq;

static inline smpq_dsp_rq smpq_dsp_rq_of(const smpq_op_args *a, int32_t o) {
    smpq_dsp_rq r;
    const int shift = a->shift[o];
    r.bias = smpq_ld_i32(a->bias + 4 * o);
    r.mult = smpq_ld_i32(a->mult + 4 * o);
    r.left = shift > 0 ? shift : 0;
    r.right = shift > 0 ? 0 : -shift;
    r.mask = (int32_t)((1ll << r.right) - 1);
    r.half = r.mask >> 1;
    r.exact = r.mult != INT32_MIN;
    return r;
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
    if (r->exact) {
        const int32_t h = (int32_t)(((int64_t)smpq_shl(x, r->left) * r->mult + (1ll << 30)) >> 31);
        v = (h >> r->right) + ((h & r->mask) > r->half + (int32_t)((uint32_t)h >> 31));
    } else {
        v = smpq_mbqm(x, r->mult, r->left - r->right);
    }
    return smpq_clamp8(smpq_add_wrap(v, o.offset), o.lo, o.hi);
}

#endif /* SMPQ_DSP_REQUANT_H */
