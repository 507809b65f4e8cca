/* ADD with TFLite's int8 arithmetic: both inputs offset, shifted left, rescaled to a common scale,
 * summed, rescaled to the output, offset and clamped. */
#include "fixedpoint.h"
#include "kernels.h"

void smpq_add(const smpq_op_args *a) {
    const int32_t *p = a->params;
    const int left = (int)p[0];
    for (uint32_t i = 0; i < a->size; ++i) {
        const int32_t x1 = smpq_shl(a->in[i] + a->in_offset, left);
        const int32_t x2 = smpq_shl(a->in2[i] + a->in2_offset, left);
        const int32_t s1 = smpq_mbqm(x1, p[1], (int)p[2]);
        const int32_t s2 = smpq_mbqm(x2, p[3], (int)p[4]);
        const int32_t raw = smpq_mbqm(smpq_add_wrap(s1, s2), p[5], (int)p[6]);
        a->out[i] = smpq_clamp8(smpq_add_wrap(raw, a->out_offset), a->act_min, a->act_max);
    }
}
