/* TFLite's integer requantization (gemmlowp SaturatingRoundingDoublingHighMul + RoundingDivideByPOT,
 * applied as two roundings exactly like TFLite Micro's reference MultiplyByQuantizedMultiplier).
 * Shift convention: positive = left shift, negative = right shift (TFLite's). Overflowing shifts
 * wrap instead of invoking undefined behaviour. */
#ifndef SMPQ_FIXEDPOINT_H
#define SMPQ_FIXEDPOINT_H

#include <stdint.h>

static inline int32_t smpq_srdhm(int32_t a, int32_t b) {
    if (a == b && a == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
    return (int32_t)((ab + nudge) / (1ll << 31));
}

static inline int32_t smpq_rdbpot(int32_t x, int exponent) {
    int32_t mask = (int32_t)((1ll << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static inline int32_t smpq_shl(int32_t x, int n) {  /* x * 2^n, wrapping (no UB) */
    return (int32_t)((uint32_t)x << n);
}

static inline int32_t smpq_mbqm(int32_t x, int32_t multiplier, int shift) {
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    return smpq_rdbpot(smpq_srdhm(smpq_shl(x, left), multiplier), right);
}

static inline int32_t smpq_add_wrap(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }

static inline int8_t smpq_clamp8(int32_t v, int32_t lo, int32_t hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

#endif /* SMPQ_FIXEDPOINT_H */
