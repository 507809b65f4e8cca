/* The conv2d tile of 4 output pixels, every output channel, requantized in registers (tile_4x1.h).
 * 8-bit rows: per group of 4 patch values one row word widened by two SXTB16, two LDM of the four pixels'
 * patch words and eight SMLAD (16 MACs in 13 instructions). 1/2/4-bit rows read packed: per row word, per
 * group one AND with a shifted operand brings field s of every byte to its top bits (the mask in a
 * register), then the same two SXTB16, two LDM and eight SMLAD: 13 instructions per 16 MACs plus one LDR per
 * word, for every width; the sums are scaled back when the bias is added (exact). 1-bit codes b (weight 2b - 1)
 * are taken as -128*b, with the accumulator starting at 64 * the pixel's patch sum: -acc/64 = sum((2b - 1)*x).
 * Per output channel and pixel, the requantization in one SMLAL (requant.h; 7-9 instructions; channels with a
 * multiplier <= 0, which TFLite never makes, in C) and one STRB. On a DSP target it is Thumb-2 assembly; on
 * the host the same computation in C with the emulated instructions. */
#include "tile_4x1.h"

#include <stddef.h>

#include "requant.h"
#include "simd.h"

#if SMPQ_SIMD_TARGET
/* r0 patch, r1 row, r2 count, r3 the tile (smpq_dsp_tile4), r4..r7 accumulators of pixels 0..3, r8..r11
 * patch words, r12/lr the row word's halves. After the loop r8..r12, lr, r0, r2 hold the requantization.
 * Packed rows (SMPQ_T4_PACKED): r2 the field mask, r3 the low half (the tile waits on the stack). */
__asm__(
    "    .syntax unified\n"
    "    .thumb\n"
    /* the accumulator plus the bias: 8-bit as is; packed rows scaled back (exact: multiples of 16 / 64; 1-bit:
     * acc = 64*sum(x) - 128*sum(b*x), so -acc/64 = sum((2b - 1)*x)) */
    "    .macro SMPQ_T4_FOLD kind, acc\n"
    "    .if \\kind == 8\n"
    "    add \\acc, \\acc, r8\n"
    "    .elseif \\kind == 4\n"
    "    add \\acc, r8, \\acc, asr #4\n"
    "    .elseif \\kind == 2\n"
    "    add \\acc, r8, \\acc, asr #6\n"
    "    .else\n"
    "    sub \\acc, r8, \\acc, asr #6\n"
    "    .endif\n"
    "    .endm\n"
    "    .macro SMPQ_RQ_LEFT kind, acc\n"
    "    SMPQ_T4_FOLD \\kind, \\acc\n"
    "    lsl \\acc, \\acc, r11\n"
    "    mov r12, #0x40000000\n"
    "    mov lr, #0\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    lsr r12, r12, #31\n"
    "    orr lr, r12, lr, lsl #1\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endm\n"
    "    .macro SMPQ_RQ_ONE kind, acc\n"
    "    SMPQ_T4_FOLD \\kind, \\acc\n"
    "    and r12, \\acc, #0x80000000\n"
    "    eor r12, r12, #0xC0000000\n"
    "    mov lr, #0\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endm\n"
    "    .macro SMPQ_RQ_RIGHT kind, acc\n"
    "    SMPQ_T4_FOLD \\kind, \\acc\n"
    "    and r12, \\acc, #0x80000000\n"
    "    eor r12, r12, #0x40000000\n"
    "    add lr, r10, \\acc, asr #31\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    asr lr, lr, r11\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endm\n"
    "    .macro SMPQ_CLAMP acc\n"
    "    cmp \\acc, r0\n"
    "    it lt\n"
    "    movlt \\acc, r0\n"
    "    cmp \\acc, r1\n"
    "    it gt\n"
    "    movgt \\acc, r1\n"
    "    .endm\n"
    /* after a channel's MACs (r3 the tile, r1 the next row): its constants: r8 bias, r9 mult, r11 r = -shift,
     * r2 output offset; then by r (requant.h's one-SMLAL forms, multiplier > 0): r >= 2: r10 = 2^(r-2), ASR by
     * r - 1 of the high word; r = 1: the constant 2^30 + 2^31 - [x < 0]*2^31 fits the low word, the high word
     * is the result; r <= 0: left shift by -r, then floor((ab + 2^30) / 2^31); the four outputs stored; the
     * next channel from 1: */
    "    .macro SMPQ_T4_OUT kind\n"
    "    ldr r0, [r3, #12]\n"            /* bias pointer */
    "    ldr r8, [r0], #4\n"
    "    str r0, [r3, #12]\n"
    "    ldr r0, [r3, #16]\n"            /* multiplier pointer */
    "    ldr r9, [r0], #4\n"
    "    str r0, [r3, #16]\n"
    "    ldr r0, [r3, #20]\n"            /* shift pointer */
    "    ldrsb r11, [r0], #1\n"
    "    str r0, [r3, #20]\n"
    "    rsb r11, r11, #0\n"
    "    ldr r2, [r3, #28]\n"
    "    cmp r11, #1\n"
    "    bgt 6f\n"
    "    beq 7f\n"
    "    rsb r11, r11, #0\n"             /* left shift */
    "    SMPQ_RQ_LEFT \\kind, r4\n"
    "    SMPQ_RQ_LEFT \\kind, r5\n"
    "    SMPQ_RQ_LEFT \\kind, r6\n"
    "    SMPQ_RQ_LEFT \\kind, r7\n"
    "    b 8f\n"
    "7:\n"
    "    SMPQ_RQ_ONE \\kind, r4\n"
    "    SMPQ_RQ_ONE \\kind, r5\n"
    "    SMPQ_RQ_ONE \\kind, r6\n"
    "    SMPQ_RQ_ONE \\kind, r7\n"
    "    b 8f\n"
    "6:  sub r10, r11, #2\n"
    "    mov r12, #1\n"
    "    lsl r10, r12, r10\n"
    "    sub r11, r11, #1\n"
    "    SMPQ_RQ_RIGHT \\kind, r4\n"
    "    SMPQ_RQ_RIGHT \\kind, r5\n"
    "    SMPQ_RQ_RIGHT \\kind, r6\n"
    "    SMPQ_RQ_RIGHT \\kind, r7\n"
    /* a clamp inside int8: [lo, hi] in r0, r1 (the row pointer waits in the tile) */
    "8:  ldr r0, [r3, #60]\n"
    "    cbz r0, 9f\n"
    "    str r1, [r3, #4]\n"
    "    ldr r0, [r3, #52]\n"
    "    ldr r1, [r3, #56]\n"
    "    SMPQ_CLAMP r4\n"
    "    SMPQ_CLAMP r5\n"
    "    SMPQ_CLAMP r6\n"
    "    SMPQ_CLAMP r7\n"
    "    ldr r1, [r3, #4]\n"
    "9:\n"
    /* the four pixels' outputs of this channel */
    "    ldr r0, [r3, #24]\n"            /* out */
    "    strb r4, [r0]\n"
    "    ldr r8, [r3, #32]\n"
    "    strb r5, [r0, r8]\n"
    "    ldr r8, [r3, #36]\n"
    "    strb r6, [r0, r8]\n"
    "    ldr r8, [r3, #40]\n"
    "    strb r7, [r0, r8]\n"
    "    add r0, r0, #1\n"
    "    str r0, [r3, #24]\n"
    "    ldr r0, [r3, #44]\n"            /* channels left */
    "    subs r0, r0, #1\n"
    "    str r0, [r3, #44]\n"
    "    bne 1b\n"
    "    .endm\n"
    "    .macro SMPQ_T4_FUNC name\n"
    "    .section .text.\\name,\"ax\",%progbits\n"
    "    .global \\name\n"
    "    .type \\name, %function\n"
    "    .thumb_func\n"
    "    .p2align 2\n"
    "\\name:\n"
    "    .endm\n"
    /* 8-bit rows */
    "    SMPQ_T4_FUNC smpq_dsp_tile_4x1_asm\n"
    "    push {r4-r11, lr}\n"
    "    mov r3, r0\n"                   /* the tile */
    "    ldr r1, [r3, #4]\n"             /* row of channel 0 */
    "1:  ldr r0, [r3, #0]\n"             /* patches */
    "    ldr r2, [r3, #8]\n"             /* groups */
    "    movs r4, #0\n"
    "    movs r5, #0\n"
    "    movs r6, #0\n"
    "    movs r7, #0\n"
    "2:  ldr r12, [r1], #4\n"
    "    sxtb16 lr, r12\n"
    "    sxtb16 r12, r12, ror #8\n"
    "    ldm r0!, {r8-r11}\n"
    "    smlad r4, r8, lr, r4\n"
    "    smlad r4, r9, r12, r4\n"
    "    smlad r5, r10, lr, r5\n"
    "    smlad r5, r11, r12, r5\n"
    "    ldm r0!, {r8-r11}\n"
    "    smlad r6, r8, lr, r6\n"
    "    smlad r6, r9, r12, r6\n"
    "    smlad r7, r10, lr, r7\n"
    "    smlad r7, r11, r12, r7\n"
    "    subs r2, r2, #1\n"
    "    bne 2b\n"
    "    ldr r12, [r3, #48]\n"           /* K - 4*groups: the next row */
    "    add r1, r1, r12\n"
    "    SMPQ_T4_OUT 8\n"
    "    pop {r4-r11, pc}\n"
    "    .size smpq_dsp_tile_4x1_asm, .-smpq_dsp_tile_4x1_asm\n"
    /* one group of packed codes: field `sh` of the word in r12 brought to the top bits of each byte (r2 the
     * mask), widened by two SXTB16 into r3 (bytes 0, 2) and lr (1, 3), times the four pixels' patch words */
    "    .macro SMPQ_T4_FIELD sh\n"
    "    .if \\sh\n"
    "    and lr, r2, r12, lsl #\\sh\n"
    "    .else\n"
    "    and lr, r2, r12\n"
    "    .endif\n"
    "    sxtb16 r3, lr\n"
    "    sxtb16 lr, lr, ror #8\n"
    "    ldm r0!, {r8-r11}\n"
    "    smlad r4, r8, r3, r4\n"
    "    smlad r4, r9, lr, r4\n"
    "    smlad r5, r10, r3, r5\n"
    "    smlad r5, r11, lr, r5\n"
    "    ldm r0!, {r8-r11}\n"
    "    smlad r6, r8, r3, r6\n"
    "    smlad r6, r9, lr, r6\n"
    "    smlad r7, r10, r3, r7\n"
    "    smlad r7, r11, lr, r7\n"
    "    .endm\n"
    /* packed rows of `bits` (1, 2, 4): whole words (8/bits groups each: field s = bits [s*bits, (s+1)*bits) of
     * every byte), then the tail: 2 bytes B0 B1 as the word (B0, B1, B0 >> 4, B1 >> 4) (4/bits groups) and/or
     * 1 byte B as (B, B >> 2, B >> 4, B >> 6) (2/bits groups); fields shifted left by 8 - bits*(s+1) to the
     * top. Stack: [sp] the end of the row's words, [sp, #4] the tile, [sp, #8] the tail flags. */
    "    .macro SMPQ_T4_PACKED name, bits, mask\n"
    "    SMPQ_T4_FUNC \\name\n"
    "    push {r4-r11, lr}\n"
    "    sub sp, sp, #16\n"
    "    mov r3, r0\n"
    "    str r3, [sp, #4]\n"
    "    ldr r1, [r3, #4]\n"
    "    ldr r12, [r3, #88]\n"
    "    str r12, [sp, #8]\n"
    "1:  ldr r0, [r3, #0]\n"
    "    ldrd r4, r5, [r3, #68]\n"
    "    ldrd r6, r7, [r3, #76]\n"
    "    mov r2, #\\mask\n"
    "    ldr r8, [r3, #84]\n"
    "    cmp r8, #0\n"
    "    beq 3f\n"
    "    add r8, r1, r8\n"
    "    str r8, [sp]\n"
    "2:  ldr r12, [r1], #4\n"
    "    .if \\bits == 4\n"
    "    SMPQ_T4_FIELD 4\n"
    "    SMPQ_T4_FIELD 0\n"
    "    .elseif \\bits == 2\n"
    "    SMPQ_T4_FIELD 6\n"
    "    SMPQ_T4_FIELD 4\n"
    "    SMPQ_T4_FIELD 2\n"
    "    SMPQ_T4_FIELD 0\n"
    "    .else\n"
    "    SMPQ_T4_FIELD 7\n"
    "    SMPQ_T4_FIELD 6\n"
    "    SMPQ_T4_FIELD 5\n"
    "    SMPQ_T4_FIELD 4\n"
    "    SMPQ_T4_FIELD 3\n"
    "    SMPQ_T4_FIELD 2\n"
    "    SMPQ_T4_FIELD 1\n"
    "    SMPQ_T4_FIELD 0\n"
    "    .endif\n"
    "    ldr r8, [sp]\n"
    "    cmp r1, r8\n"
    "    bne 2b\n"
    "3:  ldr r8, [sp, #8]\n"
    "    lsls r8, r8, #31\n"             /* C: a 2-byte tail; Z: no 1-byte tail (no instruction below sets flags) */
    "    bcc 4f\n"
    "    ldrh r12, [r1], #2\n"
    "    lsr lr, r12, #4\n"
    "    orr r12, r12, lr, lsl #16\n"
    "    .if \\bits == 4\n"
    "    SMPQ_T4_FIELD 4\n"
    "    .elseif \\bits == 2\n"
    "    SMPQ_T4_FIELD 6\n"
    "    SMPQ_T4_FIELD 4\n"
    "    .else\n"
    "    SMPQ_T4_FIELD 7\n"
    "    SMPQ_T4_FIELD 6\n"
    "    SMPQ_T4_FIELD 5\n"
    "    SMPQ_T4_FIELD 4\n"
    "    .endif\n"
    "4:  beq 5f\n"
    "    .if \\bits != 4\n"
    "    ldrb r12, [r1], #1\n"
    "    orr r12, r12, r12, lsl #6\n"
    "    orr r12, r12, r12, lsl #12\n"
    "    .if \\bits == 2\n"
    "    SMPQ_T4_FIELD 6\n"
    "    .else\n"
    "    SMPQ_T4_FIELD 7\n"
    "    SMPQ_T4_FIELD 6\n"
    "    .endif\n"
    "    .endif\n"
    "5:  ldr r3, [sp, #4]\n"
    "    SMPQ_T4_OUT \\bits\n"
    "    add sp, sp, #16\n"
    "    pop {r4-r11, pc}\n"
    "    .size \\name, .-\\name\n"
    "    .endm\n"
    "    SMPQ_T4_PACKED smpq_dsp_tile_4x1_b4, 4, 0xF0F0F0F0\n"
    "    SMPQ_T4_PACKED smpq_dsp_tile_4x1_b2, 2, 0xC0C0C0C0\n"
    "    SMPQ_T4_PACKED smpq_dsp_tile_4x1_b1, 1, 0x80808080\n"
    "    .purgem SMPQ_T4_FOLD\n"
    "    .purgem SMPQ_RQ_LEFT\n"
    "    .purgem SMPQ_RQ_ONE\n"
    "    .purgem SMPQ_RQ_RIGHT\n"
    "    .purgem SMPQ_CLAMP\n"
    "    .purgem SMPQ_T4_OUT\n"
    "    .purgem SMPQ_T4_FUNC\n"
    "    .purgem SMPQ_T4_FIELD\n"
    "    .purgem SMPQ_T4_PACKED\n"
    "    .text\n");

void smpq_dsp_tile_4x1_asm(smpq_dsp_tile4 *t);
void smpq_dsp_tile_4x1_b4(smpq_dsp_tile4 *t);
void smpq_dsp_tile_4x1_b2(smpq_dsp_tile4 *t);
void smpq_dsp_tile_4x1_b1(smpq_dsp_tile4 *t);
#endif

/* One group of the tile: the row word's lanes (bytes, widened by SXTB16) times the 4 pixels' patch words. */
static inline void group4(const int16_t *p, uint32_t w, int32_t acc[4]) {
    const uint32_t lo = smpq_sxtb16(w), hi = smpq_sxtb16_ror8(w);
    for (int j = 0; j < 4; ++j)
        acc[j] = smpq_smlad(smpq_ld32(p + 4 * j + 2), hi, smpq_smlad(smpq_ld32(p + 4 * j), lo, acc[j]));
}

/* Packed rows: `n` fields of the word w (lanes = its bytes), field s brought to the lanes' top bits. */
static inline const int16_t *fields(const int16_t *p, uint32_t w, int bits, int n, int32_t acc[4]) {
    const uint32_t mask = bits == 4 ? 0xF0F0F0F0u : bits == 2 ? 0xC0C0C0C0u : 0x80808080u;
    for (int s = 0; s < n; ++s, p += 16) group4(p, (w << (8 - bits * (s + 1))) & mask, acc);
    return p;
}

/* Channels [o0, o1) in C (any requantization); the last group of a row of K % 4 != 0 weights reads only the
 * row's own bytes. Packed rows: the assembly's computation. */
static void tile_c(const smpq_dsp_tile4 *t, int32_t o0, int32_t o1) {
    const int32_t k = 4 * t->groups + t->row_step, row_bytes = smpq_dsp_tile4_row_bytes(t), bits = t->bits;
    const smpq_dsp_out oc = {t->offset, t->clamp ? t->lo : -128, t->clamp ? t->hi : 127};
    for (int32_t o = o0; o < o1; ++o) {
        const int8_t *row = t->row + (size_t)o * (size_t)row_bytes;
        int32_t acc[4] = {0, 0, 0, 0};
        const int16_t *p = t->patches;
        if (bits == 8) {
            for (int32_t g = 0; g < t->groups; ++g, p += 16) {
                uint32_t w = 0;
                if (4 * g + 4 <= k) w = smpq_ld32(row + 4 * g);
                else
                    for (int32_t b = 0; 4 * g + b < k; ++b) w |= (uint32_t)(uint8_t)row[4 * g + b] << (8 * b);
                group4(p, w, acc);
            }
        } else {
            const uint8_t *r = (const uint8_t *)(const void *)row;
            for (int j = 0; j < 4; ++j) acc[j] = t->init[j];
            for (int32_t i = 0; i < t->word_bytes; i += 4) p = fields(p, smpq_ld32(r + i), bits, 8 / bits, acc);
            r += t->word_bytes;
            if (t->tail & 2) {
                const uint32_t h = (uint32_t)r[0] | (uint32_t)r[1] << 8;
                p = fields(p, h | (h >> 4) << 16, bits, 4 / bits, acc);
                r += 2;
            }
            if (t->tail & 1) {
                uint32_t w = r[0];
                w |= w << 6;
                w |= w << 12;
                fields(p, w, bits, 2 / bits, acc);
            }
            for (int j = 0; j < 4; ++j) acc[j] = bits == 1 ? -(acc[j] >> 6) : acc[j] >> (bits == 4 ? 4 : 6);
        }
        const smpq_dsp_rq rq = smpq_dsp_rq_make(smpq_ld_i32(t->bias + 4 * o), smpq_ld_i32(t->mult + 4 * o), t->shift[o]);
        const int32_t at[4] = {0, t->at1, t->at2, t->at3};
        for (int j = 0; j < 4; ++j) t->out[o + at[j]] = smpq_dsp_rq_apply(&rq, acc[j], oc);
    }
}

#if SMPQ_SIMD_TARGET
static inline int asm_channel(const smpq_dsp_tile4 *t, int32_t o) { return smpq_ld_i32(t->mult + 4 * o) > 0; }

/* Channels [o0, o1), all with a positive multiplier, in assembly. */
static void tile_asm(const smpq_dsp_tile4 *t, int32_t o0, int32_t o1) {
    smpq_dsp_tile4 u = *t;
    u.row += (size_t)o0 * (size_t)smpq_dsp_tile4_row_bytes(t), u.bias += 4 * o0, u.mult += 4 * o0, u.shift += o0, u.out += o0;
    u.channels = o1 - o0;
    switch (t->bits) {
        case 4: smpq_dsp_tile_4x1_b4(&u); break;
        case 2: smpq_dsp_tile_4x1_b2(&u); break;
        case 1: smpq_dsp_tile_4x1_b1(&u); break;
        default: smpq_dsp_tile_4x1_asm(&u); break;
    }
}
#endif

void smpq_dsp_tile_4x1(smpq_dsp_tile4 *t) {
    if (t->channels <= 0) return;
#if SMPQ_SIMD_TARGET
    /* 8-bit rows of K % 4 != 0: the assembly's last word of a row reads the next row's first bytes (met by
     * the patches' zero padding), so the last channel, whose next bytes are not the op's, goes in C */
    const int32_t n_asm = t->bits == 8 && t->row_step ? t->channels - 1 : t->channels;
    if (t->all_positive && n_asm == t->channels) { /* the common case: every channel in one call, on t itself */
        switch (t->bits) {
            case 4: smpq_dsp_tile_4x1_b4(t); break;
            case 2: smpq_dsp_tile_4x1_b2(t); break;
            case 1: smpq_dsp_tile_4x1_b1(t); break;
            default: smpq_dsp_tile_4x1_asm(t); break;
        }
        return;
    }
    if (t->all_positive) {
        if (n_asm > 0) tile_asm(t, 0, n_asm);
    } else {
        for (int32_t o = 0; o < n_asm;) { /* runs of channels in assembly, the others in C */
            int32_t e = o;
            while (e < n_asm && asm_channel(t, e)) ++e;
            if (e > o) tile_asm(t, o, e);
            if (e < n_asm) tile_c(t, e, e + 1);
            o = e + 1;
        }
    }
    tile_c(t, n_asm, t->channels);
#else
    tile_c(t, 0, t->channels);
#endif
}
