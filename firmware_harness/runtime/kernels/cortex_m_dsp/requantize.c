/* requantize int8 -> int8 (TFLite QUANTIZE), Cortex-M DSP set; same results as kernels/requantize.c. The
 * output depends only on the int8 input, so long tensors (a tensor read at two grids) are mapped through a
 * 256-entry table built once per op (on the stack): one load per element instead of a requantization. */
#include "../fixedpoint.h"
#include "../kernels.h"

#define SMPQ_DSP_REQUANTIZE_TABLE_MIN 512u /* elements from which the table pays off */

static inline int8_t requantize_one(const smpq_op_args *a, int32_t x) {
    const int32_t v = smpq_mbqm(x + a->in_offset, a->params[0], (int)a->params[1]);
    return smpq_clamp8(smpq_add_wrap(v, a->out_offset), a->act_min, a->act_max);
}

void smpq_requantize(const smpq_op_args *a) {
    if (a->size < SMPQ_DSP_REQUANTIZE_TABLE_MIN) {
        for (uint32_t i = 0; i < a->size; ++i) a->out[i] = requantize_one(a, a->in[i]);
        return;
    }
    int8_t t[256]; /* indexed by the code + 128 */
    for (int32_t v = -128; v < 128; ++v) t[v + 128] = requantize_one(a, v);
    const int8_t *in = a->in;
    int8_t *out = a->out;
    for (uint32_t i = 0; i < a->size; ++i) out[i] = t[in[i] + 128];
}
