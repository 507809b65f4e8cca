/* The inner part shared by conv2d and its 1x1 path: for a tile of up to SMPQ_TILE output pixels
 * whose offset input patches (K int16 values each) are ready, compute every output channel. 8-bit
 * weights are read in place; narrower rows are decoded once per tile into `wrow` (K int16), so the
 * decoding is shared by the tile's pixels. Then bias, per-channel requantization and clamp. */
#include "fixedpoint.h"
#include "kernels.h"
#include "packed.h"
#include "../src/smpq_format.h"

static int32_t dot_i8(const int16_t *x, const int8_t *w, int32_t k) {
    int32_t acc = 0;
    for (int32_t i = 0; i < k; ++i) acc += (int32_t)x[i] * (int32_t)w[i];
    return acc;
}

static int32_t dot_i16(const int16_t *x, const int16_t *w, int32_t k) {
    int32_t acc = 0;
    for (int32_t i = 0; i < k; ++i) acc += (int32_t)x[i] * (int32_t)w[i];
    return acc;
}

void smpq_output_tile(const smpq_op_args *a, const int16_t *patches, int32_t n_pix, int32_t k, int8_t *out) {
    const int32_t cout = a->out_c;
    int16_t *wrow = a->scratch + (size_t)SMPQ_TILE * (size_t)k;
    int32_t acc[SMPQ_TILE];
    for (int32_t o = 0; o < cout; ++o) {
        if (a->w_bits == 8) {
            const int8_t *w = (const int8_t *)(const void *)a->weights + (size_t)o * (size_t)k;
            for (int32_t p = 0; p < n_pix; ++p) acc[p] = dot_i8(patches + (size_t)p * (size_t)k, w, k);
        } else {
            smpq_unpack_row(wrow, a->weights, (uint32_t)o * (uint32_t)k, k, (int)a->w_bits);
            for (int32_t p = 0; p < n_pix; ++p) acc[p] = dot_i16(patches + (size_t)p * (size_t)k, wrow, k);
        }
        const int32_t bias = smpq_ld_i32(a->bias + 4 * o), mult = smpq_ld_i32(a->mult + 4 * o);
        const int shift = a->shift[o];
        for (int32_t p = 0; p < n_pix; ++p) {
            const int32_t v = smpq_mbqm(smpq_add_wrap(acc[p], bias), mult, shift);
            out[(size_t)p * (size_t)cout + (size_t)o] = smpq_clamp8(smpq_add_wrap(v, a->out_offset), a->act_min, a->act_max);
        }
    }
}
