/* average pool (TFLite int8): sum of the raw values over the window's in-bounds taps, divided by
 * their count with rounding half away from zero, clamped. The loader guarantees padding < kernel,
 * so every window has at least one in-bounds tap. */
#include "fixedpoint.h"
#include "kernels.h"
#include "window.h"

void smpq_avg_pool(const smpq_op_args *a) {
    const int32_t c_n = a->in_c;
    for (int32_t oy = 0; oy < a->out_h; ++oy) {
        int32_t ky0, ky1;
        const int32_t iy0 = smpq_window(oy, a->sh, a->pad_t, a->kh, a->in_h, &ky0, &ky1);
        for (int32_t ox = 0; ox < a->out_w; ++ox) {
            int32_t kx0, kx1;
            const int32_t ix0 = smpq_window(ox, a->sw, a->pad_l, a->kw, a->in_w, &kx0, &kx1);
            const int32_t count = (ky1 - ky0) * (kx1 - kx0);
            int8_t *out = a->out + (oy * a->out_w + ox) * c_n;
            for (int32_t c = 0; c < c_n; ++c) {
                int32_t acc = 0;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int32_t row = ((iy0 + ky) * a->in_w + ix0) * c_n + c; /* index of tap kx = 0 (may be < 0) */
                    for (int32_t kx = kx0; kx < kx1; ++kx) acc += a->in[row + kx * c_n];
                }
                acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                out[c] = smpq_clamp8(acc, a->act_min, a->act_max);
            }
        }
    }
}
