/* The conv2d inner loops: 2 pixels x 2 output channels, from a pair of patches interleaved by groups of 4
 * (4 int16 of pixel a, then 4 of pixel b: 16 bytes, word-aligned) and two weight rows. Per group: one LDM
 * of the four patch words, two row words widened by SXTB16 and eight SMLAD (16 MACs).
 *  - smpq_dsp_mac_2x2: int8 rows (8-bit weights in place, or rows decoded by rows.c).
 *  - smpq_dsp_mac_2x2_packed: 1/2/4-bit rows read packed, no decoding: for each group the row word is
 *    shifted and masked so that every byte holds one code in its top bits (4-bit: code*16; 2-bit: code*64;
 *    1-bit: bit -> +-64 by an EOR), SXTB16 widens those, and the sums are shifted back at the end (exact:
 *    |sum| < 2^31 / 64 since K <= SMPQ_MAX_K). The patch order is the one of decoded rows (rows.h).
 * On a DSP target they are Thumb-2 assembly (in C, GCC spills: 14 values are live); on the host the same
 * computation in C with the emulated instructions. */
#include "mac_2x2.h"

#include "simd.h"

#if SMPQ_SIMD_TARGET
/* r0 pair, r1 w0, r2 w1, r3 n, [sp] acc; r4..r7 = acc[0..3], r8..r11 = patch words, r12/lr temporaries.
 * SMPQ_ROW: one row word (already in r12) times the group's patch words, into two accumulators. */
__asm__(
    "    .syntax unified\n"
    "    .thumb\n"
    "    .macro SMPQ_ROW acc_a, acc_b\n"
    "    sxtb16 lr, r12\n"
    "    smlad \\acc_a, r8, lr, \\acc_a\n"
    "    smlad \\acc_b, r10, lr, \\acc_b\n"
    "    sxtb16 r12, r12, ror #8\n"
    "    smlad \\acc_a, r9, r12, \\acc_a\n"
    "    smlad \\acc_b, r11, r12, \\acc_b\n"
    "    .endm\n"
    /* one group of a packed row: codes brought to the top bits of each byte */
    "    .macro SMPQ_PACKED_GROUP lsl_n, mask, flip, inc\n"
    "    ldm r0!, {r8-r11}\n"
    "    .irp row, r1, r2\n"
    "    .if \\inc\n"
    "    ldr r12, [\\row], #4\n"
    "    .else\n"
    "    ldr r12, [\\row]\n"
    "    .endif\n"
    "    .if \\lsl_n\n"
    "    lsl r12, r12, #\\lsl_n\n"
    "    .endif\n"
    "    and r12, r12, #\\mask\n"
    "    .if \\flip\n"
    "    eor r12, r12, #0xC0C0C0C0\n"
    "    .endif\n"
    "    .ifc \\row, r1\n"
    "    SMPQ_ROW r4, r6\n"
    "    .else\n"
    "    SMPQ_ROW r5, r7\n"
    "    .endif\n"
    "    .endr\n"
    "    .endm\n"
    "    .macro SMPQ_INT8_GROUP\n"
    "    ldm r0!, {r8-r11}\n"
    "    ldr r12, [r1], #4\n"
    "    SMPQ_ROW r4, r6\n"
    "    ldr r12, [r2], #4\n"
    "    SMPQ_ROW r5, r7\n"
    "    .endm\n"
    "    .macro SMPQ_FUNC name\n"
    "    .section .text.\\name,\"ax\",%progbits\n"
    "    .global \\name\n"
    "    .type \\name, %function\n"
    "    .thumb_func\n"
    "    .p2align 2\n"
    "\\name:\n"
    "    push {r4-r11, lr}\n"
    "    movs r4, #0\n"
    "    movs r5, #0\n"
    "    movs r6, #0\n"
    "    movs r7, #0\n"
    "    .endm\n"
    "    .macro SMPQ_END name, shift\n"
    "    .if \\shift\n"
    "    asr r4, r4, #\\shift\n"
    "    asr r5, r5, #\\shift\n"
    "    asr r6, r6, #\\shift\n"
    "    asr r7, r7, #\\shift\n"
    "    .endif\n"
    "    ldr lr, [sp, #36]\n"
    "    stm lr, {r4-r7}\n"
    "    pop {r4-r11, pc}\n"
    "    .size \\name, .-\\name\n"
    "    .endm\n"
    /* int8 rows: n groups, two per iteration */
    "    SMPQ_FUNC smpq_dsp_mac_2x2_i8\n"
    "    lsrs r3, r3, #1\n"
    "    bcc 1f\n"
    "    SMPQ_INT8_GROUP\n"
    "1:  cbz r3, 3f\n"
    "2:  SMPQ_INT8_GROUP\n"
    "    SMPQ_INT8_GROUP\n"
    "    subs r3, r3, #1\n"
    "    bne 2b\n"
    "3:  SMPQ_END smpq_dsp_mac_2x2_i8, 0\n"
    /* packed rows: n row words per row */
    "    SMPQ_FUNC smpq_dsp_mac_2x2_b4\n"
    "    cmp r3, #0\n"
    "    beq 2f\n"
    "1:  SMPQ_PACKED_GROUP 4, 0xF0F0F0F0, 0, 0\n"
    "    SMPQ_PACKED_GROUP 0, 0xF0F0F0F0, 0, 1\n"
    "    subs r3, r3, #1\n"
    "    bne 1b\n"
    "2:  SMPQ_END smpq_dsp_mac_2x2_b4, 4\n"
    "    SMPQ_FUNC smpq_dsp_mac_2x2_b2\n"
    "    cmp r3, #0\n"
    "    beq 2f\n"
    "1:  SMPQ_PACKED_GROUP 6, 0xC0C0C0C0, 0, 0\n"
    "    SMPQ_PACKED_GROUP 4, 0xC0C0C0C0, 0, 0\n"
    "    SMPQ_PACKED_GROUP 2, 0xC0C0C0C0, 0, 0\n"
    "    SMPQ_PACKED_GROUP 0, 0xC0C0C0C0, 0, 1\n"
    "    subs r3, r3, #1\n"
    "    bne 1b\n"
    "2:  SMPQ_END smpq_dsp_mac_2x2_b2, 6\n"
    "    SMPQ_FUNC smpq_dsp_mac_2x2_b1\n"
    "    cmp r3, #0\n"
    "    beq 2f\n"
    "1:  SMPQ_PACKED_GROUP 7, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 6, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 5, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 4, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 3, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 2, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 1, 0x80808080, 1, 0\n"
    "    SMPQ_PACKED_GROUP 0, 0x80808080, 1, 1\n"
    "    subs r3, r3, #1\n"
    "    bne 1b\n"
    "2:  SMPQ_END smpq_dsp_mac_2x2_b1, 6\n"
    "    .purgem SMPQ_ROW\n"
    "    .purgem SMPQ_PACKED_GROUP\n"
    "    .purgem SMPQ_INT8_GROUP\n"
    "    .purgem SMPQ_FUNC\n"
    "    .purgem SMPQ_END\n"
    "    .text\n");

void smpq_dsp_mac_2x2_i8(const int16_t *pair, const int8_t *w0, const int8_t *w1, int32_t n, int32_t acc[4]);
void smpq_dsp_mac_2x2_b4(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int32_t acc[4]);
void smpq_dsp_mac_2x2_b2(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int32_t acc[4]);
void smpq_dsp_mac_2x2_b1(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int32_t acc[4]);

/* the row words 0..n-1 */
static void packed_words(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int bits, int32_t acc[4]) {
    if (bits == 4) smpq_dsp_mac_2x2_b4(pair, w0, w1, n, acc);
    else if (bits == 2) smpq_dsp_mac_2x2_b2(pair, w0, w1, n, acc);
    else smpq_dsp_mac_2x2_b1(pair, w0, w1, n, acc);
}
#endif

/* One group: the patch words of pixels a and b times the rows' words r0 and r1 (bytes widened by SXTB16). */
static inline void group(const int16_t *pair, uint32_t r0, uint32_t r1, int32_t a[4]) {
    const uint32_t xa0 = smpq_ld32(pair), xa1 = smpq_ld32(pair + 2);
    const uint32_t xb0 = smpq_ld32(pair + 4), xb1 = smpq_ld32(pair + 6);
    a[0] = smpq_smlad(xa0, smpq_sxtb16(r0), a[0]), a[0] = smpq_smlad(xa1, smpq_sxtb16_ror8(r0), a[0]);
    a[2] = smpq_smlad(xb0, smpq_sxtb16(r0), a[2]), a[2] = smpq_smlad(xb1, smpq_sxtb16_ror8(r0), a[2]);
    a[1] = smpq_smlad(xa0, smpq_sxtb16(r1), a[1]), a[1] = smpq_smlad(xa1, smpq_sxtb16_ror8(r1), a[1]);
    a[3] = smpq_smlad(xb0, smpq_sxtb16(r1), a[3]), a[3] = smpq_smlad(xb1, smpq_sxtb16_ror8(r1), a[3]);
}

/* Code s of every byte of a packed row word brought to the byte's top bits (see the file comment). */
static inline uint32_t top_codes(uint32_t w, int bits, int s) {
    const int up = 8 - bits * (s + 1);
    if (bits == 4) return (w << up) & 0xF0F0F0F0u;
    if (bits == 2) return (w << up) & 0xC0C0C0C0u;
    return ((w << up) & 0x80808080u) ^ 0xC0C0C0C0u;
}

static inline int scale_shift(int bits) { return bits == 4 ? 4 : 6; }

#if !SMPQ_SIMD_TARGET
static void smpq_dsp_mac_2x2_i8(const int16_t *pair, const int8_t *w0, const int8_t *w1, int32_t n, int32_t acc[4]) {
    int32_t a[4] = {0, 0, 0, 0};
    for (int32_t g = 0; g < n; ++g) group(pair + 8 * g, smpq_ld32(w0 + 4 * g), smpq_ld32(w1 + 4 * g), a);
    for (int i = 0; i < 4; ++i) acc[i] = a[i];
}

static void packed_words(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int bits, int32_t acc[4]) {
    int32_t a[4] = {0, 0, 0, 0};
    for (int32_t i = 0; i < n; ++i) {
        const uint32_t r0 = smpq_ld32(w0 + 4 * i), r1 = smpq_ld32(w1 + 4 * i);
        for (int s = 0; s < 8 / bits; ++s, pair += 8) group(pair, top_codes(r0, bits, s), top_codes(r1, bits, s), a);
    }
    for (int i = 0; i < 4; ++i) acc[i] = a[i] >> scale_shift(bits);
}
#endif

/* the last `rest` (< 4) bytes of a row as a word, zero-extended (no byte past the row is read) */
static inline uint32_t last_bytes(const uint8_t *p, int32_t rest) {
    uint32_t w = 0;
    for (int32_t b = 0; b < rest; ++b) w |= (uint32_t)p[b] << (8 * b);
    return w;
}

void smpq_dsp_mac_2x2(const int16_t *pair, const int8_t *w0, const int8_t *w1, int32_t k, int32_t acc[4]) {
    const int32_t n = k >> 2;
    smpq_dsp_mac_2x2_i8(pair, w0, w1, n, acc);
    if (k & 3) /* the last, partial group: zero weights meet the patch's zero padding */
        group(pair + 8 * n, last_bytes((const uint8_t *)w0 + 4 * n, k & 3), last_bytes((const uint8_t *)w1 + 4 * n, k & 3), acc);
}

void smpq_dsp_mac_2x2_packed(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t k, int bits,
                             int32_t acc[4]) {
    const int32_t per_word = 32 / bits, n = k / per_word, rest = (k % per_word) * bits / 8; /* bytes */
    packed_words(pair, w0, w1, n, bits, acc);
    if (rest) { /* the last, partial word: its bytes only (its zero codes meet the patch's zero padding) */
        const uint32_t r0 = last_bytes(w0 + 4 * n, rest), r1 = last_bytes(w1 + 4 * n, rest);
        int32_t t[4] = {0, 0, 0, 0};
        pair += 8 * (8 / bits) * n;
        for (int s = 0; s < 8 / bits; ++s, pair += 8) group(pair, top_codes(r0, bits, s), top_codes(r1, bits, s), t);
        for (int i = 0; i < 4; ++i) acc[i] += t[i] >> scale_shift(bits);
    }
}
