/* fully connected for Cortex-M with the DSP extension; same results as kernels/fully_connected.c.
 * The input, offset, is one int16 patch (scratch, 2*K bytes) in the order of rows.h; output channels go
 * two at a time through SXTB16 + SMLAD. 8-bit rows are read in place; narrower rows are decoded in chunks
 * of SMPQ_DSP_FC_CHUNK codes into a small stack buffer (no scratch beyond the reference kernel's). */
#include "../fixedpoint.h"
#include "../kernels.h"
#include "../../src/smpq_format.h"
#include "requant.h"
#include "rows.h"
#include "simd.h"

#define SMPQ_DSP_FC_CHUNK 256 /* a multiple of 32 (rows.h) */

/* acc[c] += x . row c over n elements; the first n4 as SIMD pairs, the rest one by one. */
static void dot_1x2(const int16_t *x, const int8_t *w0, const int8_t *w1, int32_t n4, int32_t n, int32_t acc[2]) {
    int32_t a0 = acc[0], a1 = acc[1], i = 0;
    for (; i < n4; i += 4) {
        const uint32_t r0 = smpq_ld32(w0 + i), r1 = smpq_ld32(w1 + i);
        const uint32_t x0 = smpq_ld32(x + i), x1 = smpq_ld32(x + i + 2);
        a0 = smpq_smlad(x0, smpq_sxtb16(r0), a0);
        a1 = smpq_smlad(x0, smpq_sxtb16(r1), a1);
        a0 = smpq_smlad(x1, smpq_sxtb16_ror8(r0), a0);
        a1 = smpq_smlad(x1, smpq_sxtb16_ror8(r1), a1);
    }
    for (; i < n; ++i) {
        a0 += x[i] * w0[i];
        a1 += x[i] * w1[i];
    }
    acc[0] = a0, acc[1] = a1;
}

void smpq_fully_connected(const smpq_op_args *a) {
    const int32_t k = a->in_c, k4 = k & ~3;
    const int bits = (int)a->w_bits;
    const smpq_dsp_out oc = smpq_dsp_out_of(a);
    int16_t *patch = a->scratch;
    const uint32_t off2 = ((uint32_t)a->in_offset & 0xFFFFu) * 0x10001u;
    int32_t i = 0;
    for (; i < k4; i += 4) { /* four values per word, in sigma order */
        const uint32_t x = smpq_ld32(a->in + i);
        smpq_st32(patch + i, smpq_sxtab16(off2, x));
        smpq_st32(patch + i + 2, smpq_sxtab16_ror8(off2, x));
    }
    for (; i < k; ++i) patch[i] = (int16_t)(a->in[i] + a->in_offset);
    if (bits < 8) smpq_dsp_permute_patch(patch, k, bits, 4);
    int8_t rows[2][SMPQ_DSP_FC_CHUNK];
    for (int32_t o = 0; o < a->out_c; o += 2) {
        const int two = o + 1 < a->out_c;
        int32_t acc[2] = {0, 0};
        if (bits == 8) {
            const int8_t *w0 = (const int8_t *)(const void *)a->weights + (size_t)o * (size_t)k;
            dot_1x2(patch, w0, two ? w0 + k : w0, k4, k, acc);
        } else {
            for (int32_t from = 0; from < k; from += SMPQ_DSP_FC_CHUNK) {
                const int32_t to = k - from < SMPQ_DSP_FC_CHUNK ? k : from + SMPQ_DSP_FC_CHUNK;
                smpq_dsp_decode_row(rows[0], a->weights, (uint32_t)o * (uint32_t)k, k, from, to, bits);
                if (two) smpq_dsp_decode_row(rows[1], a->weights, (uint32_t)(o + 1) * (uint32_t)k, k, from, to, bits);
                const int32_t n4 = (to < k4 ? to : k4) - from;
                dot_1x2(patch + from, rows[0], two ? rows[1] : rows[0], n4 > 0 ? n4 : 0, to - from, acc);
            }
        }
        const smpq_dsp_rq rq0 = smpq_dsp_rq_of(a, o);
        a->out[o] = smpq_dsp_rq_apply(&rq0, acc[0], oc);
        if (two) {
            const smpq_dsp_rq rq1 = smpq_dsp_rq_of(a, o + 1);
            a->out[o + 1] = smpq_dsp_rq_apply(&rq1, acc[1], oc);
        }
    }
}
