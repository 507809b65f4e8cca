/* The few Armv7E-M DSP instructions the Cortex-M DSP kernels use, as ACLE intrinsics from <arm_acle.h>
 * on a target with the DSP extension (M4/M7/M33/M55), and as portable C with the same results on the
 * host, so that the SAME kernel code is unit-tested bit-exact on the host and run on the board.
 * Values are 32-bit words holding two int16 halves (lo = bits 0..15) or four int8 bytes (byte 0 = bits 0..7). */
#ifndef SMPQ_DSP_SIMD_H
#define SMPQ_DSP_SIMD_H

#include <stdint.h>
#include <string.h>

/* A 32-bit load from any address (LDR; Cortex-M7 allows unaligned LDR, not LDRD). */
static inline uint32_t smpq_ld32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void smpq_st32(void *p, uint32_t v) { memcpy(p, &v, 4); }

/* Two words to a word-aligned address (one STRD: Armv7-M needs only word alignment for it). */
typedef uint64_t smpq_u64_words __attribute__((may_alias, aligned(4)));
static inline void smpq_st64(void *p, uint32_t lo, uint32_t hi) {
    *(smpq_u64_words *)p = (uint64_t)lo | ((uint64_t)hi << 32);
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#define SMPQ_SIMD_TARGET 1

/* bytes 0 and 2 of x, sign-extended to int16 halves: (x0, x2) */
static inline uint32_t smpq_sxtb16(uint32_t x) { return (uint32_t)__sxtb16((int8x4_t)x); }
/* bytes 1 and 3: (x1, x3); one SXTB16 with ROR #8 */
static inline uint32_t smpq_sxtb16_ror8(uint32_t x) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
/* (a.lo + x0, a.hi + x2) */
static inline uint32_t smpq_sxtab16(uint32_t a, uint32_t x) { return (uint32_t)__sxtab16((int16x2_t)a, (int8x4_t)x); }
/* (a.lo + x1, a.hi + x3) */
static inline uint32_t smpq_sxtab16_ror8(uint32_t a, uint32_t x) {
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}
/* acc + x.lo*y.lo + x.hi*y.hi */
static inline int32_t smpq_smlad(uint32_t x, uint32_t y, int32_t acc) { return __smlad((int16x2_t)x, (int16x2_t)y, acc); }
static inline int32_t smpq_smlabb(uint32_t x, uint32_t y, int32_t acc) { return __smlabb((int32_t)x, (int32_t)y, acc); }
static inline int32_t smpq_smlatt(uint32_t x, uint32_t y, int32_t acc) { return __smlatt((int32_t)x, (int32_t)y, acc); }
/* four byte-wise subtractions (modulo 256) */
static inline uint32_t smpq_sub8(uint32_t a, uint32_t b) { return (uint32_t)__ssub8((int8x4_t)a, (int8x4_t)b); }
/* x clamped to [-128, 127] (SSAT #8) */
static inline int32_t smpq_ssat8(int32_t x) { return __ssat(x, 8); }

#else /* portable emulation (host builds) */
#define SMPQ_SIMD_TARGET 0

static inline int32_t smpq_lo16(uint32_t x) { return (int16_t)(uint16_t)(x & 0xFFFFu); }
static inline int32_t smpq_hi16(uint32_t x) { return (int16_t)(uint16_t)(x >> 16); }
static inline uint32_t smpq_pack16(int32_t lo, int32_t hi) { return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16); }
static inline int32_t smpq_byte(uint32_t x, int i) { return (int8_t)(uint8_t)(x >> (8 * i)); }

static inline uint32_t smpq_sxtb16(uint32_t x) { return smpq_pack16(smpq_byte(x, 0), smpq_byte(x, 2)); }
static inline uint32_t smpq_sxtb16_ror8(uint32_t x) { return smpq_pack16(smpq_byte(x, 1), smpq_byte(x, 3)); }
static inline uint32_t smpq_sxtab16(uint32_t a, uint32_t x) {
    return smpq_pack16(smpq_lo16(a) + smpq_byte(x, 0), smpq_hi16(a) + smpq_byte(x, 2));
}
static inline uint32_t smpq_sxtab16_ror8(uint32_t a, uint32_t x) {
    return smpq_pack16(smpq_lo16(a) + smpq_byte(x, 1), smpq_hi16(a) + smpq_byte(x, 3));
}
/* SMLAD's sum is modulo 2^32 (the Q flag it may set is never read) */
static inline int32_t smpq_smlad(uint32_t x, uint32_t y, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(smpq_lo16(x) * smpq_lo16(y)) + (uint32_t)(smpq_hi16(x) * smpq_hi16(y)));
}
static inline int32_t smpq_smlabb(uint32_t x, uint32_t y, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(smpq_lo16(x) * smpq_lo16(y)));
}
static inline int32_t smpq_smlatt(uint32_t x, uint32_t y, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(smpq_hi16(x) * smpq_hi16(y)));
}
static inline int32_t smpq_ssat8(int32_t x) { return x < -128 ? -128 : x > 127 ? 127 : x; }
static inline uint32_t smpq_sub8(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xFFu) << (8 * i);
    return r;
}
#endif

#endif /* SMPQ_DSP_SIMD_H */
