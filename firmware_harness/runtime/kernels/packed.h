/* Reading weights packed at 1..8 bits (LSB-first bit stream over the flattened tensor; two's
 * complement b-bit codes for b >= 2, and for b = 1 bit 0 -> -1, bit 1 -> +1). Values are decoded a
 * byte (or a few bits) at a time inside the dot-product loops, never a whole tensor. Every reader
 * touches exactly the bytes that hold the requested bits, so a row may start mid-byte. */
#ifndef SMPQ_PACKED_H
#define SMPQ_PACKED_H

#include <stdint.h>

/* Σ x[i] · w[start + i] for i < n, w being a stream of packed `bits`-bit codes. */
int32_t smpq_dot_packed(const int16_t *x, const uint8_t *w, uint32_t start, int32_t n, int bits);

/* Codes start..start+n-1 of a `bits`-bit packed stream, decoded into dst (one weight row). */
void smpq_unpack_row(int16_t *dst, const uint8_t *w, uint32_t start, int32_t n, int bits);

/* The single code at element index `idx` of a `bits`-bit packed stream. */
static inline int32_t smpq_code_at(const uint8_t *w, uint32_t idx, int bits) {
    uint32_t bit = idx * (uint32_t)bits;
    uint32_t byte = bit >> 3, sh = bit & 7u;
    uint32_t u = (uint32_t)w[byte] >> sh;
    if (sh + (uint32_t)bits > 8u) u |= (uint32_t)w[byte + 1] << (8u - sh);
    u &= (1u << bits) - 1u;
    if (bits == 1) return (int32_t)(u << 1) - 1;
    uint32_t half = 1u << (bits - 1);
    return (int32_t)(u ^ half) - (int32_t)half;
}

#endif /* SMPQ_PACKED_H */
