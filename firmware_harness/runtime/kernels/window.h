/* Clipping of a pooling / depthwise window to the input (shared by avg_pool, max_pool, depthwise_conv2d). */
#ifndef SMPQ_WINDOW_H
#define SMPQ_WINDOW_H

#include <stdint.h>

/* Along one axis: the window of output index o starts at input index o*stride - pad (returned, may be
 * < 0); its in-bounds taps are k0 <= tap < k1 of the k taps, for an input of n elements. */
static inline int32_t smpq_window(int32_t o, int32_t stride, int32_t pad, int32_t k, int32_t n,
                                  int32_t *k0, int32_t *k1) {
    const int32_t i0 = o * stride - pad;
    *k0 = i0 < 0 ? -i0 : 0;
    *k1 = n - i0 < k ? n - i0 : k;
    return i0;
}

#endif /* SMPQ_WINDOW_H */
