/* depthwise conv2d (channel multiplier 1) for Cortex-M with the DSP extension; same results as
 * kernels/depthwise_conv2d.c. Channels go in blocks of SMPQ_DW_BLOCK whose kh*kw weights are decoded once
 * into int16, four channels c..c+3 stored as the pairs (c, c+2), (c+1, c+3). Per output pixel, tap and
 * four channels: one word of input, two SXTAB16 (widening with the input offset added), two weight words
 * and SMLABB/SMLATT into four accumulators. Channels past the last multiple of 4 go one by one.
 * A 1x1 op on a few channels and many pixels (the models' input normalisation) is an int8 -> int8 map per
 * channel: tabulated once (256 entries per channel, on the stack), then one table load per element. */
#include "../fixedpoint.h"
#include "../kernels.h"
#include "../packed.h"
#include "../window.h"
#include "../../src/smpq_format.h"
#include "requant.h"
#include "simd.h"

#define SMPQ_DW_BLOCK 16
#define SMPQ_DW_TABLE_CHANNELS 4    /* at most this many channels tabulated (256 bytes each, on the stack) */
#define SMPQ_DW_TABLE_MIN_PIXELS 512 /* from this many pixels a 256-entry table per channel pays off */

static inline int32_t sigma(int32_t i) { return (i & ~3) | ((i & 1) << 1) | ((i & 2) >> 1); }

/* 1x1, stride 1, no padding: out = table[channel][in] (see the file comment). */
static void pointwise_table(const smpq_op_args *a) {
    const int32_t c_n = a->in_c, n = a->out_h * a->out_w;
    const smpq_dsp_out oc = smpq_dsp_out_of(a);
    int8_t t[SMPQ_DW_TABLE_CHANNELS][256];
    for (int32_t c = 0; c < c_n; ++c) {
        const smpq_dsp_rq rq = smpq_dsp_rq_of(a, c);
        const int32_t w = smpq_code_at(a->weights, (uint32_t)c, (int)a->w_bits);
        for (int32_t v = -128; v < 128; ++v) t[c][v + 128] = smpq_dsp_rq_apply(&rq, (v + a->in_offset) * w, oc);
    }
    const int8_t *in = a->in;
    int8_t *out = a->out;
    for (int32_t q = 0; q < n; ++q, in += c_n, out += c_n)
        for (int32_t c = 0; c < c_n; ++c) out[c] = t[c][in[c] + 128];
}

void smpq_depthwise_conv2d(const smpq_op_args *a) {
    const int32_t c_n = a->in_c, kh = a->kh, kw = a->kw, taps = kh * kw;
    if (kh == 1 && kw == 1 && a->sh == 1 && a->sw == 1 && a->pad_t == 0 && a->pad_l == 0 && a->out_h == a->in_h &&
        a->out_w == a->in_w && c_n <= SMPQ_DW_TABLE_CHANNELS && a->out_h * a->out_w >= SMPQ_DW_TABLE_MIN_PIXELS) {
        pointwise_table(a);
        return;
    }
    const smpq_dsp_out oc = smpq_dsp_out_of(a);
    const uint32_t off2 = ((uint32_t)a->in_offset & 0xFFFFu) * 0x10001u;
    int16_t w[SMPQ_DW_MAX_TAPS][SMPQ_DW_BLOCK], row[SMPQ_DW_BLOCK];
    smpq_dsp_rq rq[SMPQ_DW_BLOCK];
    for (int32_t c0 = 0; c0 < c_n; c0 += SMPQ_DW_BLOCK) {
        const int32_t nb = c_n - c0 < SMPQ_DW_BLOCK ? c_n - c0 : SMPQ_DW_BLOCK, n4 = nb & ~3;
        for (int32_t t = 0; t < taps; ++t) {
            smpq_unpack_row(row, a->weights, (uint32_t)(t * c_n + c0), nb, (int)a->w_bits);
            for (int32_t j = 0; j < nb; ++j) w[t][j < n4 ? sigma(j) : j] = row[j];
        }
        for (int32_t j = 0; j < nb; ++j) rq[j] = smpq_dsp_rq_of(a, c0 + j);
        for (int32_t oy = 0; oy < a->out_h; ++oy) {
            int32_t ky0, ky1;
            const int32_t iy0 = smpq_window(oy, a->sh, a->pad_t, kh, a->in_h, &ky0, &ky1);
            for (int32_t ox = 0; ox < a->out_w; ++ox) {
                int32_t kx0, kx1;
                const int32_t ix0 = smpq_window(ox, a->sw, a->pad_l, kw, a->in_w, &kx0, &kx1);
                const int32_t base = (iy0 * a->in_w + ix0) * c_n + c0;
                int8_t *out = a->out + (oy * a->out_w + ox) * c_n + c0;
                const int full3x3 = kh == 3 && kw == 3 && ky0 == 0 && ky1 == 3 && kx0 == 0 && kx1 == 3;
                for (int32_t g = 0; g < n4 && full3x3; g += 4) { /* 3x3 window inside the input: unrolled */
                    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                    const int8_t *px = a->in + base + g;
                    const int16_t *wt = w[0] + g;
                    const int32_t in_row = a->in_w * c_n;
#define SMPQ_DW_TAP(ky, kx)                                                                            \
    do {                                                                                               \
        const uint32_t x = smpq_ld32(px + (ky) * in_row + (kx) * c_n);                                    \
        const uint32_t w02 = smpq_ld32(wt + ((ky) * 3 + (kx)) * SMPQ_DW_BLOCK);                        \
        const uint32_t w13 = smpq_ld32(wt + ((ky) * 3 + (kx)) * SMPQ_DW_BLOCK + 2);                    \
        const uint32_t x02 = smpq_sxtab16(off2, x), x13 = smpq_sxtab16_ror8(off2, x);                  \
        a0 = smpq_smlabb(x02, w02, a0), a2 = smpq_smlatt(x02, w02, a2);                                \
        a1 = smpq_smlabb(x13, w13, a1), a3 = smpq_smlatt(x13, w13, a3);                                \
    } while (0)
                    SMPQ_DW_TAP(0, 0);
                    SMPQ_DW_TAP(0, 1);
                    SMPQ_DW_TAP(0, 2);
                    SMPQ_DW_TAP(1, 0);
                    SMPQ_DW_TAP(1, 1);
                    SMPQ_DW_TAP(1, 2);
                    SMPQ_DW_TAP(2, 0);
                    SMPQ_DW_TAP(2, 1);
                    SMPQ_DW_TAP(2, 2);
#undef SMPQ_DW_TAP
                    out[g] = smpq_dsp_rq_apply(&rq[g], a0, oc);
                    out[g + 1] = smpq_dsp_rq_apply(&rq[g + 1], a1, oc);
                    out[g + 2] = smpq_dsp_rq_apply(&rq[g + 2], a2, oc);
                    out[g + 3] = smpq_dsp_rq_apply(&rq[g + 3], a3, oc);
                }
                for (int32_t g = 0; g < n4 && !full3x3; g += 4) { /* four channels: accumulators in registers */
                    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                    for (int32_t ky = ky0; ky < ky1; ++ky) {
                        const int8_t *px = a->in + base + (ky * a->in_w + kx0) * c_n + g;
                        const int16_t *wt = w[ky * kw + kx0] + g;
                        for (int32_t kx = kx0; kx < kx1; ++kx, px += c_n, wt += SMPQ_DW_BLOCK) {
                            const uint32_t x = smpq_ld32(px), w02 = smpq_ld32(wt), w13 = smpq_ld32(wt + 2);
                            const uint32_t x02 = smpq_sxtab16(off2, x), x13 = smpq_sxtab16_ror8(off2, x);
                            a0 = smpq_smlabb(x02, w02, a0);
                            a2 = smpq_smlatt(x02, w02, a2);
                            a1 = smpq_smlabb(x13, w13, a1);
                            a3 = smpq_smlatt(x13, w13, a3);
                        }
                    }
                    out[g] = smpq_dsp_rq_apply(&rq[g], a0, oc);
                    out[g + 1] = smpq_dsp_rq_apply(&rq[g + 1], a1, oc);
                    out[g + 2] = smpq_dsp_rq_apply(&rq[g + 2], a2, oc);
                    out[g + 3] = smpq_dsp_rq_apply(&rq[g + 3], a3, oc);
                }
                if (n4 < nb) { /* the last nb % 4 channels one by one */
                    int32_t acc[4] = {0, 0, 0, 0};
                    const int32_t g = n4, m = nb - n4;
                    for (int32_t ky = ky0; ky < ky1; ++ky) {
                        for (int32_t kx = kx0; kx < kx1; ++kx) {
                            const int8_t *px = a->in + base + (ky * a->in_w + kx) * c_n + g;
                            const int16_t *wt = w[ky * kw + kx] + g;
                            for (int32_t j = 0; j < m; ++j) acc[j] += (px[j] + a->in_offset) * wt[j];
                        }
                    }
                    for (int32_t j = 0; j < m; ++j) out[g + j] = smpq_dsp_rq_apply(&rq[g + j], acc[j], oc);
                }
            }
        }
    }
}
