/* fully connected (OI weights): the whole input, offset, is one patch; each output channel's packed
 * row is read directly by smpq_dot_packed (a single pixel leaves nothing to share a decoded row with). */
#include "fixedpoint.h"
#include "kernels.h"
#include "packed.h"
#include "../src/smpq_format.h"

void smpq_fully_connected(const smpq_op_args *a) {
    const int32_t k = a->in_c;
    int16_t *patch = a->scratch;
    for (int32_t i = 0; i < k; ++i) patch[i] = (int16_t)(a->in[i] + a->in_offset);
    for (int32_t o = 0; o < a->out_c; ++o) {
        int32_t acc = smpq_dot_packed(patch, a->weights, (uint32_t)o * (uint32_t)k, k, (int)a->w_bits);
        acc = smpq_mbqm(smpq_add_wrap(acc, smpq_ld_i32(a->bias + 4 * o)), smpq_ld_i32(a->mult + 4 * o), a->shift[o]);
        a->out[o] = smpq_clamp8(smpq_add_wrap(acc, a->out_offset), a->act_min, a->act_max);
    }
}
