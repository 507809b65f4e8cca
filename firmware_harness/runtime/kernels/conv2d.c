/* conv2d (OHWI weights, NHWC activations, explicit padding): output pixels are taken SMPQ_TILE at a
 * time; each pixel's input patch is gathered once as int16 with the input offset already added
 * (padding taps are 0), then smpq_output_tile computes all output channels for the tile. */
#include "kernels.h"

static void gather(const smpq_op_args *a, int32_t q, int16_t *dst) {
    const int32_t cin = a->in_c, oy = q / a->out_w, ox = q % a->out_w;
    const int32_t iy0 = oy * a->sh - a->pad_t, ix0 = ox * a->sw - a->pad_l;
    for (int32_t ky = 0; ky < a->kh; ++ky) {
        const int32_t iy = iy0 + ky;
        for (int32_t kx = 0; kx < a->kw; ++kx, dst += cin) {
            const int32_t ix = ix0 + kx;
            if (iy < 0 || iy >= a->in_h || ix < 0 || ix >= a->in_w) {
                for (int32_t c = 0; c < cin; ++c) dst[c] = 0;
            } else {
                const int8_t *src = a->in + (iy * a->in_w + ix) * cin;
                for (int32_t c = 0; c < cin; ++c) dst[c] = (int16_t)(src[c] + a->in_offset);
            }
        }
    }
}

void smpq_conv2d(const smpq_op_args *a) {
    const int32_t k = a->kh * a->kw * a->in_c, n = a->out_h * a->out_w;
    for (int32_t q = 0; q < n; q += SMPQ_TILE) {
        const int32_t n_pix = n - q < SMPQ_TILE ? n - q : SMPQ_TILE;
        for (int32_t p = 0; p < n_pix; ++p) gather(a, q + p, a->scratch + p * k);
        smpq_output_tile(a, a->scratch, n_pix, k, a->out + q * a->out_c);
    }
}
