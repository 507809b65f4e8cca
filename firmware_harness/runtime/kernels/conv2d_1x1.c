/* conv2d fast path for 1x1 kernels without padding: each patch is one input pixel (no bounds checks). */
#include "kernels.h"

void smpq_conv2d_1x1(const smpq_op_args *a) {
    const int32_t cin = a->in_c, n = a->out_h * a->out_w;
    for (int32_t q = 0; q < n; q += SMPQ_TILE) {
        const int32_t n_pix = n - q < SMPQ_TILE ? n - q : SMPQ_TILE;
        for (int32_t p = 0; p < n_pix; ++p) {
            const int32_t oy = (q + p) / a->out_w, ox = (q + p) % a->out_w;
            const int8_t *src = a->in + ((oy * a->sh) * a->in_w + ox * a->sw) * cin;
            int16_t *dst = a->scratch + p * cin;
            for (int32_t c = 0; c < cin; ++c) dst[c] = (int16_t)(src[c] + a->in_offset);
        }
        smpq_output_tile(a, a->scratch, n_pix, cin, a->out + q * a->out_c);
    }
}
