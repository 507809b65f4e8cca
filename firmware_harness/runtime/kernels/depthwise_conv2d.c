/* depthwise conv2d (1HWC weights, channel multiplier 1), in blocks of SMPQ_DW_BLOCK channels: the
 * block's kh*kw codes per channel (at most SMPQ_DW_MAX_TAPS taps, checked by the loader) are decoded
 * once into a small stack array, then every output pixel of the block is computed with contiguous
 * loads over the block's channels (NHWC), accumulators in registers. */
#include "fixedpoint.h"
#include "kernels.h"
#include "window.h"
#include "packed.h"
#include "../src/smpq_format.h"

#define SMPQ_DW_BLOCK 16

void smpq_depthwise_conv2d(const smpq_op_args *a) {
    const int32_t c_n = a->in_c, kh = a->kh, kw = a->kw, taps = kh * kw;
    int16_t w[SMPQ_DW_MAX_TAPS][SMPQ_DW_BLOCK];
    int32_t bias[SMPQ_DW_BLOCK], mult[SMPQ_DW_BLOCK], shift[SMPQ_DW_BLOCK], acc[SMPQ_DW_BLOCK];
    for (int32_t c0 = 0; c0 < c_n; c0 += SMPQ_DW_BLOCK) {
        const int32_t nb = c_n - c0 < SMPQ_DW_BLOCK ? c_n - c0 : SMPQ_DW_BLOCK;
        for (int32_t t = 0; t < taps; ++t) {
            smpq_unpack_row(w[t], a->weights, (uint32_t)(t * c_n + c0), nb, (int)a->w_bits);
            for (int32_t j = nb; j < SMPQ_DW_BLOCK; ++j) w[t][j] = 0;
        }
        for (int32_t j = 0; j < nb; ++j) {
            bias[j] = smpq_ld_i32(a->bias + 4 * (c0 + j));
            mult[j] = smpq_ld_i32(a->mult + 4 * (c0 + j));
            shift[j] = a->shift[c0 + j];
        }
        for (int32_t oy = 0; oy < a->out_h; ++oy) {
            int32_t ky0, ky1;
            const int32_t iy0 = smpq_window(oy, a->sh, a->pad_t, kh, a->in_h, &ky0, &ky1);
            for (int32_t ox = 0; ox < a->out_w; ++ox) {
                int32_t kx0, kx1;
                const int32_t ix0 = smpq_window(ox, a->sw, a->pad_l, kw, a->in_w, &kx0, &kx1);
                for (int32_t j = 0; j < SMPQ_DW_BLOCK; ++j) acc[j] = 0;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    for (int32_t kx = kx0; kx < kx1; ++kx) {
                        const int8_t *px = a->in + ((iy0 + ky) * a->in_w + ix0 + kx) * c_n + c0;
                        const int16_t *wt = w[ky * kw + kx];
                        for (int32_t j = 0; j < nb; ++j) acc[j] += (px[j] + a->in_offset) * wt[j];
                    }
                }
                int8_t *out = a->out + (oy * a->out_w + ox) * c_n + c0;
                for (int32_t j = 0; j < nb; ++j) {
                    const int32_t v = smpq_mbqm(smpq_add_wrap(acc[j], bias[j]), mult[j], (int)shift[j]);
                    out[j] = smpq_clamp8(smpq_add_wrap(v, a->out_offset), a->act_min, a->act_max);
                }
            }
        }
    }
}
