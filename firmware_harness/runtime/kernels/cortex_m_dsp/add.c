/* ADD with TFLite's int8 arithmetic, Cortex-M DSP set; same results as kernels/add.c. Each input's
 * rescaling (offset, shift left, multiply, round) depends only on its int8 value, so for long tensors it is
 * tabulated once per op (256 int32 per input, on the stack): per element two table loads, one add and the
 * output requantization (requant.h's one-SMLAL path when it applies) instead of three requantizations.
 * Short tensors take the reference loop. */
#include "../fixedpoint.h"
#include "../kernels.h"
#include "requant.h"

#define SMPQ_DSP_ADD_TABLE_MIN 1024u /* elements from which the two 256-entry tables pay off */

void smpq_add(const smpq_op_args *a) {
    const int32_t *p = a->params;
    const int left = (int)p[0];
    if (a->size < SMPQ_DSP_ADD_TABLE_MIN) {
        for (uint32_t i = 0; i < a->size; ++i) {
            const int32_t s1 = smpq_mbqm(smpq_shl(a->in[i] + a->in_offset, left), p[1], (int)p[2]);
            const int32_t s2 = smpq_mbqm(smpq_shl(a->in2[i] + a->in2_offset, left), p[3], (int)p[4]);
            const int32_t raw = smpq_mbqm(smpq_add_wrap(s1, s2), p[5], (int)p[6]);
            a->out[i] = smpq_clamp8(smpq_add_wrap(raw, a->out_offset), a->act_min, a->act_max);
        }
        return;
    }
    int32_t t1[256], t2[256]; /* indexed by the code + 128 */
    for (int32_t v = -128; v < 128; ++v) {
        t1[v + 128] = smpq_mbqm(smpq_shl(v + a->in_offset, left), p[1], (int)p[2]);
        t2[v + 128] = smpq_mbqm(smpq_shl(v + a->in2_offset, left), p[3], (int)p[4]);
    }
    const int32_t mult = p[5], shift = p[6], off = a->out_offset, lo = a->act_min, hi = a->act_max;
    const int8_t *x1 = a->in, *x2 = a->in2;
    int8_t *out = a->out;
    const smpq_dsp_rq rq = smpq_dsp_rq_make(0, mult, (int)shift);
    if (rq.fast) {
        const int32_t *u1 = t1 + 128, *u2 = t2 + 128, h = rq.hi, sh = rq.right - 1;
        if (lo == -128 && hi == 127) {
            for (uint32_t i = 0; i < a->size; ++i)
                out[i] = (int8_t)smpq_ssat8(smpq_add_wrap(smpq_dsp_rq_fast(smpq_add_wrap(u1[x1[i]], u2[x2[i]]), mult, h, sh), off));
        } else {
            for (uint32_t i = 0; i < a->size; ++i)
                out[i] = smpq_clamp8(smpq_add_wrap(smpq_dsp_rq_fast(smpq_add_wrap(u1[x1[i]], u2[x2[i]]), mult, h, sh), off), lo, hi);
        }
        return;
    }
    for (uint32_t i = 0; i < a->size; ++i) {
        const int32_t raw = smpq_mbqm(smpq_add_wrap(t1[x1[i] + 128], t2[x2[i] + 128]), mult, (int)shift);
        out[i] = smpq_clamp8(smpq_add_wrap(raw, off), lo, hi);
    }
}
