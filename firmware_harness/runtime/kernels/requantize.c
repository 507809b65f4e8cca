/* requantize int8 -> int8 (TFLite QUANTIZE): out = MBQM(x - in_zp, multiplier, shift) + out_zp, clamped. */
#include "fixedpoint.h"
#include "kernels.h"

void smpq_requantize(const smpq_op_args *a) {
    const int32_t mult = a->params[0];
    const int shift = (int)a->params[1];
    for (uint32_t i = 0; i < a->size; ++i) {
        const int32_t v = smpq_mbqm(a->in[i] + a->in_offset, mult, shift);
        a->out[i] = smpq_clamp8(smpq_add_wrap(v, a->out_offset), a->act_min, a->act_max);
    }
}
