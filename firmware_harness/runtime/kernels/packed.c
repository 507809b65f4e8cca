/* Packed 1..8-bit weight codes: dot products with int16 activations (already offset) and row decoding.
 * One specialised loop per bit width. Both walk single codes until the stream is byte-aligned, then
 * the body, then single codes for the tail. Dot products take the body as groups of eight codes
 * (exactly `bits` bytes, one 64-bit word); row decoding takes whole bytes for 1, 2 and 4 bits
 * (8, 4, 2 codes by shifts) and groups of eight for 3, 5, 6 and 7 bits. */
#include "packed.h"

#include <string.h>

static inline int32_t decode(uint32_t u, int bits) {
    if (bits == 1) return (int32_t)(u << 1) - 1;
    uint32_t half = 1u << (bits - 1);
    return (int32_t)(u ^ half) - (int32_t)half;
}

static int32_t dot_b8(const int16_t *x, const uint8_t *w, uint32_t start, int32_t n) {
    const int8_t *q = (const int8_t *)(const void *)(w + start);
    int32_t acc = 0;
    for (int32_t i = 0; i < n; ++i) acc += (int32_t)x[i] * (int32_t)q[i];
    return acc;
}

#define DEFINE_DOT(B)                                                                              \
    static int32_t dot_b##B(const int16_t *x, const uint8_t *w, uint32_t start, int32_t n) {     \
        const uint32_t mask = (1u << B) - 1u;                                                      \
        int32_t acc = 0, i = 0;                                                                    \
        while (i < n && (((start + (uint32_t)i) * B) & 7u) != 0u) {                                \
            acc += (int32_t)x[i] * smpq_code_at(w, start + (uint32_t)i, B);                  \
            ++i;                                                                                   \
        }                                                                                          \
        const uint8_t *p = w + (((start + (uint32_t)i) * B) >> 3);                                 \
        for (; i + 8 <= n; i += 8, p += B) {                                                       \
            uint64_t g = 0;                                                                        \
            memcpy(&g, p, B); /* little-endian host, checked by smpq_load */                       \
            const int16_t *xi = x + i;                                                             \
            int32_t s = 0;                                                                         \
            for (int j = 0; j < 8; ++j) s += (int32_t)xi[j] * decode((uint32_t)(g >> (j * B)) & mask, B); \
            acc += s;                                                                              \
        }                                                                                          \
        for (; i < n; ++i) acc += (int32_t)x[i] * smpq_code_at(w, start + (uint32_t)i, B);   \
        return acc;                                                                                \
    }

#define DEFINE_UNPACK(B)                                                                          \
    static void unpack_b##B(int16_t *dst, const uint8_t *w, uint32_t start, int32_t n) {         \
        const uint32_t mask = (1u << B) - 1u;                                                      \
        int32_t i = 0;                                                                             \
        while (i < n && (((start + (uint32_t)i) * B) & 7u) != 0u) {                                \
            dst[i] = (int16_t)smpq_code_at(w, start + (uint32_t)i, B);                             \
            ++i;                                                                                   \
        }                                                                                          \
        const uint8_t *p = w + (((start + (uint32_t)i) * B) >> 3);                                 \
        for (; i + 8 <= n; i += 8, p += B) {                                                       \
            uint64_t g = 0;                                                                        \
            memcpy(&g, p, B);                                                                      \
            for (int j = 0; j < 8; ++j) dst[i + j] = (int16_t)decode((uint32_t)(g >> (j * B)) & mask, B); \
        }                                                                                          \
        for (; i < n; ++i) dst[i] = (int16_t)smpq_code_at(w, start + (uint32_t)i, B);              \
    }

DEFINE_UNPACK(3)
DEFINE_UNPACK(5)
DEFINE_UNPACK(6)
DEFINE_UNPACK(7)

/* 1, 2 and 4 bits: whole bytes decoded with shifts (sign extension through int8), no tables. */
static inline int16_t sx(uint32_t byte_shifted_left, int right) {
    return (int16_t)((int8_t)(uint8_t)byte_shifted_left >> right);
}

#define DEFINE_UNPACK_BYTES(B, PER_BYTE, BODY)                                                      \
    static void unpack_b##B(int16_t *dst, const uint8_t *w, uint32_t start, int32_t n) {         \
        int32_t i = 0;                                                                             \
        while (i < n && ((start + (uint32_t)i) % (uint32_t)PER_BYTE) != 0u) {                      \
            dst[i] = (int16_t)smpq_code_at(w, start + (uint32_t)i, B);                             \
            ++i;                                                                                   \
        }                                                                                          \
        const uint8_t *p = w + (start + (uint32_t)i) / (uint32_t)PER_BYTE;                         \
        for (; i + PER_BYTE <= n; i += PER_BYTE, ++p) {                                            \
            const uint32_t x = *p;                                                                 \
            int16_t *d = dst + i;                                                                  \
            BODY                                                                                   \
        }                                                                                          \
        for (; i < n; ++i) dst[i] = (int16_t)smpq_code_at(w, start + (uint32_t)i, B);              \
    }

DEFINE_UNPACK_BYTES(4, 2, d[0] = sx(x << 4, 4); d[1] = sx(x, 4);)
DEFINE_UNPACK_BYTES(2, 4, for (int j = 0; j < 4; ++j) d[j] = (int16_t)((int32_t)(((x >> (2 * j)) & 3u) ^ 2u) - 2);)
DEFINE_UNPACK_BYTES(1, 8, for (int j = 0; j < 8; ++j) d[j] = (int16_t)((int32_t)((x >> j) & 1u) * 2 - 1);)

void smpq_unpack_row(int16_t *dst, const uint8_t *w, uint32_t start, int32_t n, int bits) {
    switch (bits) {
        case 1: unpack_b1(dst, w, start, n); break;
        case 2: unpack_b2(dst, w, start, n); break;
        case 3: unpack_b3(dst, w, start, n); break;
        case 4: unpack_b4(dst, w, start, n); break;
        case 5: unpack_b5(dst, w, start, n); break;
        case 6: unpack_b6(dst, w, start, n); break;
        case 7: unpack_b7(dst, w, start, n); break;
        default:
            for (int32_t i = 0; i < n; ++i) dst[i] = (int8_t)w[start + (uint32_t)i];
            break;
    }
}

DEFINE_DOT(1)
DEFINE_DOT(2)
DEFINE_DOT(3)
DEFINE_DOT(4)
DEFINE_DOT(5)
DEFINE_DOT(6)
DEFINE_DOT(7)

int32_t smpq_dot_packed(const int16_t *x, const uint8_t *w, uint32_t start, int32_t n, int bits) {
    switch (bits) {
        case 1: return dot_b1(x, w, start, n);
        case 2: return dot_b2(x, w, start, n);
        case 3: return dot_b3(x, w, start, n);
        case 4: return dot_b4(x, w, start, n);
        case 5: return dot_b5(x, w, start, n);
        case 6: return dot_b6(x, w, start, n);
        case 7: return dot_b7(x, w, start, n);
        default: return dot_b8(x, w, start, n);
    }
}
