/* Patch order and row decoding of the Cortex-M DSP kernels (the layout is described in rows.h). */
#include "rows.h"

#include "../packed.h"
#include "simd.h"

/* e(): the element held at position i of a decoded row (i inside a body word of c codes, s = 8/bits per byte). */
static inline int32_t row_element(int32_t i, int32_t c, int32_t s) {
    const int32_t r = i % c;
    return i - r + (r & 3) * s + (r >> 2);
}

void smpq_dsp_sigma(int16_t *p, int32_t k) {
    for (int32_t i = 0; i + 4 <= k; i += 4) {
        const int16_t t = p[i + 1];
        p[i + 1] = p[i + 2];
        p[i + 2] = t;
    }
}

/* (a.lo, b.lo) and (a.hi, b.hi): PKHBT / PKHTB */
static inline uint32_t pk_lo(uint32_t a, uint32_t b) { return (a & 0xFFFFu) | (b << 16); }
static inline uint32_t pk_hi(uint32_t a, uint32_t b) { return (b & 0xFFFF0000u) | (a >> 16); }

/* A patch group of 4 in sigma order is two words: e = (x0, x2), o = (x1, x3). The body's blocks of c = 32/bits
 * values (c/4 groups) are rearranged word-wise: position 4s + j of a block must hold x[j*S + s] (S = 8/bits),
 * in sigma order, i.e. group s = ((x_s, x_{2S+s}), (x_{S+s}, x_{3S+s})). */

/* 4 groups at q (stride st) from the words (ea, eb, ec, ed) and (oa, ob, oc, od) */
static inline void quad(int16_t *q, int32_t st, uint32_t ea, uint32_t eb, uint32_t ec, uint32_t ed, uint32_t oa,
                        uint32_t ob, uint32_t oc, uint32_t od) {
    smpq_st32(q, pk_lo(ea, eb)), smpq_st32(q + 2, pk_lo(ec, ed));
    smpq_st32(q + st, pk_lo(oa, ob)), smpq_st32(q + st + 2, pk_lo(oc, od));
    smpq_st32(q + 2 * st, pk_hi(ea, eb)), smpq_st32(q + 2 * st + 2, pk_hi(ec, ed));
    smpq_st32(q + 3 * st, pk_hi(oa, ob)), smpq_st32(q + 3 * st + 2, pk_hi(oc, od));
}

/* straight-line blocks for constant bits and stride */
static inline __attribute__((always_inline)) void permute_body(int16_t *p, int32_t body, const int bits, const int32_t st) {
    const int32_t c = 32 / bits;
    for (int32_t base = 0; base < body; base += c) {
        int16_t *g = p + (base >> 2) * st;
#define E(i) smpq_ld32(g + (i) * st)
#define O(i) smpq_ld32(g + (i) * st + 2)
        if (bits == 4) { /* s = 0: (x0, x4), (x2, x6); s = 1: (x1, x5), (x3, x7) */
            const uint32_t e0 = E(0), o0 = O(0), e1 = E(1), o1 = O(1);
            smpq_st32(g, pk_lo(e0, e1)), smpq_st32(g + 2, pk_hi(e0, e1));
            smpq_st32(g + st, pk_lo(o0, o1)), smpq_st32(g + st + 2, pk_hi(o0, o1));
        } else if (bits == 2) {
            const uint32_t e0 = E(0), o0 = O(0), e1 = E(1), o1 = O(1), e2 = E(2), o2 = O(2), e3 = E(3), o3 = O(3);
            quad(g, st, e0, e2, e1, e3, o0, o2, o1, o3);
        } else {
            const uint32_t e0 = E(0), o0 = O(0), e1 = E(1), o1 = O(1), e2 = E(2), o2 = O(2), e3 = E(3), o3 = O(3);
            const uint32_t e4 = E(4), o4 = O(4), e5 = E(5), o5 = O(5), e6 = E(6), o6 = O(6), e7 = E(7), o7 = O(7);
            quad(g, st, e0, e4, e2, e6, o0, o4, o2, o6);
            quad(g + 4 * st, st, e1, e5, e3, e7, o1, o5, o3, o7);
        }
#undef E
#undef O
    }
}

void smpq_dsp_permute_patch(int16_t *p, int32_t k, int bits, int32_t stride) {
    const int32_t body = smpq_dsp_body(k, bits);
    if (stride == 16) {
        if (bits == 4) permute_body(p, body, 4, 16);
        else if (bits == 2) permute_body(p, body, 2, 16);
        else if (bits == 1) permute_body(p, body, 1, 16);
    } else if (stride == 8) {
        if (bits == 4) permute_body(p, body, 4, 8);
        else if (bits == 2) permute_body(p, body, 2, 8);
        else if (bits == 1) permute_body(p, body, 1, 8);
    } else {
        if (bits == 4) permute_body(p, body, 4, stride);
        else if (bits == 2) permute_body(p, body, 2, stride);
        else if (bits == 1) permute_body(p, body, 1, stride);
    }
}

void smpq_dsp_permute_tail(int16_t *p, int32_t k, int bits, int32_t stride) {
    const int32_t body = smpq_dsp_body(k, bits), bytes = (k - body) * bits / 8;
    int16_t *g = p + (body >> 2) * stride;
    if (bytes & 2) { /* group s, lanes (0, 1, 2, 3) = elements (s, S + s, L + s, S + L + s); S = 8/bits, L = 4/bits */
        if (bits == 4) {
            const uint32_t e = smpq_ld32(g), o = smpq_ld32(g + 2);
            smpq_st32(g, pk_lo(e, o)), smpq_st32(g + 2, pk_hi(e, o));
        } else if (bits == 2) {
            const uint32_t o0 = smpq_ld32(g + 2), e1 = smpq_ld32(g + stride);
            smpq_st32(g + 2, e1), smpq_st32(g + stride, o0);
        } else {
            const uint32_t e0 = smpq_ld32(g), o0 = smpq_ld32(g + 2), e1 = smpq_ld32(g + stride), o1 = smpq_ld32(g + stride + 2);
            const uint32_t e2 = smpq_ld32(g + 2 * stride), o2 = smpq_ld32(g + 2 * stride + 2);
            const uint32_t e3 = smpq_ld32(g + 3 * stride), o3 = smpq_ld32(g + 3 * stride + 2);
            quad(g, stride, e0, e1, e2, e3, o0, o1, o2, o3);
        }
        g += (4 / bits) * stride;
    }
    if ((bytes & 1) && bits == 1) { /* group s, lane j = element 2j + s (2 bits: lane j = element j, as is) */
        const uint32_t e0 = smpq_ld32(g), o0 = smpq_ld32(g + 2), e1 = smpq_ld32(g + stride), o1 = smpq_ld32(g + stride + 2);
        smpq_st32(g, pk_lo(e0, e1)), smpq_st32(g + 2, pk_hi(e0, e1));
        smpq_st32(g + stride, pk_lo(o0, o1)), smpq_st32(g + stride + 2, pk_hi(o0, o1));
    }
}

/* One 32-bit word of 32/bits codes -> 8/bits words of four int8 values (see rows.h). */
static inline void decode_word_b4(int8_t *d, uint32_t w) {
    smpq_st32(d, smpq_sub8((w & 0x0F0F0F0Fu) ^ 0x08080808u, 0x08080808u));
    smpq_st32(d + 4, smpq_sub8(((w >> 4) & 0x0F0F0F0Fu) ^ 0x08080808u, 0x08080808u));
}

static inline void decode_word_b2(int8_t *d, uint32_t w) {
    for (int s = 0; s < 4; ++s) smpq_st32(d + 4 * s, smpq_sub8(((w >> (2 * s)) & 0x03030303u) ^ 0x02020202u, 0x02020202u));
}

static inline void decode_word_b1(int8_t *d, uint32_t w) {
    for (int s = 0; s < 8; ++s) {
        const uint32_t t = (w >> s) & 0x01010101u;
        smpq_st32(d + 4 * s, smpq_sub8(t + t, 0x01010101u)); /* bit 1 -> +1, bit 0 -> -1 */
    }
}

/* Eight codes of 3, 5, 6 or 7 bits (B bytes, byte-aligned) -> eight int8 (natural order); reads 8 bytes.
 * Code j sits at bit B*j of lo:hi; every shift is a constant, so each code is one or two instructions. */
#define SMPQ_DSP_CODE(B, j)                                                                         \
    d[j] = (int8_t)((int32_t)(((B) * (j) >= 32 ? hi >> ((B) * (j) - 32)                             \
                               : (B) * (j) + (B) <= 32 ? lo >> ((B) * (j))                          \
                                                       : (lo >> ((B) * (j))) | (hi << (32 - (B) * (j)))) \
                              << (32 - (B))) >> (32 - (B)))
#define SMPQ_DSP_DECODE8(B)                                                                        \
    static void decode8_b##B(int8_t *d, const uint8_t *p) {                                        \
        const uint32_t lo = smpq_ld32(p), hi = smpq_ld32(p + 4);                                   \
        SMPQ_DSP_CODE(B, 0), SMPQ_DSP_CODE(B, 1), SMPQ_DSP_CODE(B, 2), SMPQ_DSP_CODE(B, 3);         \
        SMPQ_DSP_CODE(B, 4), SMPQ_DSP_CODE(B, 5), SMPQ_DSP_CODE(B, 6), SMPQ_DSP_CODE(B, 7);         \
    }
SMPQ_DSP_DECODE8(3)
SMPQ_DSP_DECODE8(5)
SMPQ_DSP_DECODE8(6)
SMPQ_DSP_DECODE8(7)

void smpq_dsp_decode_row(int8_t *d, const uint8_t *w, uint32_t start, int32_t k, int32_t from, int32_t to, int bits) {
    const int32_t c = smpq_dsp_codes_per_word(bits), body = smpq_dsp_body(k, bits);
    int32_t i = from;
    if (c && ((start * (uint32_t)bits) & 7u) == 0u) { /* the row starts on a byte: whole words */
        const uint8_t *p = w + ((start + (uint32_t)from) * (uint32_t)bits >> 3);
        const int32_t end = to < body ? to : body;
        switch (bits) {
            case 4: for (; i < end; i += 8, p += 4) decode_word_b4(d + (i - from), smpq_ld32(p)); break;
            case 2: for (; i < end; i += 16, p += 4) decode_word_b2(d + (i - from), smpq_ld32(p)); break;
            default: for (; i < end; i += 32, p += 4) decode_word_b1(d + (i - from), smpq_ld32(p)); break;
        }
    }
    if (!c && bits < 8 && ((start * (uint32_t)bits) & 7u) == 0u && (from & 7) == 0) { /* 3, 5, 6, 7 bits */
        void (*const dec)(int8_t *, const uint8_t *) =
            bits == 3 ? decode8_b3 : bits == 5 ? decode8_b5 : bits == 6 ? decode8_b6 : decode8_b7;
        const uint8_t *p = w + ((start + (uint32_t)from) * (uint32_t)bits >> 3);
        /* whole groups of 8 whose 8-byte read stays inside the row */
        for (; i + 8 <= to && (i + 8) * bits + 64 - 8 * bits <= k * bits; i += 8, p += bits) dec(d + (i - from), p);
    }
    for (; i < to; ++i) {
        const int32_t e = (i < body) ? row_element(i, c, 8 / bits) : i;
        d[i - from] = (int8_t)smpq_code_at(w, start + (uint32_t)e, bits);
    }
}
