/* The 8-bit conv2d tile of 4 output pixels, every output channel, requantized in registers (tile_4x1.h).
 * Per group of 4 patch values: one row word widened by two SXTB16, two LDM of the four pixels' patch words
 * and eight SMLAD (16 MACs in 13 instructions); per output channel and pixel, the requantization in one
 * SMLAL (requant.h; 7-9 instructions; channels with a multiplier <= 0, which TFLite never makes, in C) and one
 * STRB. On a DSP target it is Thumb-2 assembly; on the
 * host the same computation in C with the emulated instructions. */
#include "tile_4x1.h"

#include <stddef.h>

#include "requant.h"
#include "simd.h"

#if SMPQ_SIMD_TARGET
/* r0 patch, r1 row, r2 count, r3 the tile (smpq_dsp_tile4), r4..r7 accumulators of pixels 0..3, r8..r11
 * patch words, r12/lr the row word's halves. After the loop r8..r12, lr, r0, r2 hold the requantization. */
__asm__(
    "    .syntax unified\n"
    "    .thumb\n"
    "    .section .text.smpq_dsp_tile_4x1_asm,\"ax\",%progbits\n"
    "    .global smpq_dsp_tile_4x1_asm\n"
    "    .type smpq_dsp_tile_4x1_asm, %function\n"
    "    .thumb_func\n"
    "    .p2align 2\n"
    "smpq_dsp_tile_4x1_asm:\n"
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
    /* the channel's constants: r8 bias, r9 mult, r11 r = -shift, r2 output offset; then by r (requant.h's
     * one-SMLAL forms, multiplier > 0): r >= 2: r10 = 2^(r-2), ASR by r - 1 of the high word; r = 1: the
     * constant 2^30 + 2^31 - [x < 0]*2^31 fits the low word, the high word is the result; r <= 0: left shift
     * by -r, then floor((ab + 2^30) / 2^31) */
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
    "    .irp acc, r4, r5, r6, r7\n"
    "    add \\acc, \\acc, r8\n"
    "    lsl \\acc, \\acc, r11\n"
    "    mov r12, #0x40000000\n"
    "    mov lr, #0\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    lsr r12, r12, #31\n"
    "    orr lr, r12, lr, lsl #1\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endr\n"
    "    b 8f\n"
    "7:\n"
    "    .irp acc, r4, r5, r6, r7\n"
    "    add \\acc, \\acc, r8\n"
    "    and r12, \\acc, #0x80000000\n"
    "    eor r12, r12, #0xC0000000\n"
    "    mov lr, #0\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endr\n"
    "    b 8f\n"
    "6:  sub r10, r11, #2\n"
    "    mov r12, #1\n"
    "    lsl r10, r12, r10\n"
    "    sub r11, r11, #1\n"
    "    .irp acc, r4, r5, r6, r7\n"
    "    add \\acc, \\acc, r8\n"
    "    and r12, \\acc, #0x80000000\n"
    "    eor r12, r12, #0x40000000\n"
    "    add lr, r10, \\acc, asr #31\n"
    "    smlal r12, lr, \\acc, r9\n"
    "    asr lr, lr, r11\n"
    "    add lr, lr, r2\n"
    "    ssat \\acc, #8, lr\n"
    "    .endr\n"
    /* a clamp inside int8: [lo, hi] in r0, r1 (the row pointer waits in the tile) */
    "8:  ldr r0, [r3, #60]\n"
    "    cbz r0, 9f\n"
    "    str r1, [r3, #4]\n"
    "    ldr r0, [r3, #52]\n"
    "    ldr r1, [r3, #56]\n"
    "    .irp acc, r4, r5, r6, r7\n"
    "    cmp \\acc, r0\n"
    "    it lt\n"
    "    movlt \\acc, r0\n"
    "    cmp \\acc, r1\n"
    "    it gt\n"
    "    movgt \\acc, r1\n"
    "    .endr\n"
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
    "    pop {r4-r11, pc}\n"
    "    .size smpq_dsp_tile_4x1_asm, .-smpq_dsp_tile_4x1_asm\n"
    "    .text\n");

void smpq_dsp_tile_4x1_asm(smpq_dsp_tile4 *t);
#endif

/* Channels [o0, o1) in C (any requantization); the last group of a row of K % 4 != 0 weights reads only the
 * row's own bytes. */
static void tile_c(const smpq_dsp_tile4 *t, int32_t o0, int32_t o1) {
    const int32_t k = 4 * t->groups + t->row_step;
    const smpq_dsp_out oc = {t->offset, t->clamp ? t->lo : -128, t->clamp ? t->hi : 127};
    for (int32_t o = o0; o < o1; ++o) {
        const int8_t *row = t->row + (size_t)o * (size_t)k;
        int32_t acc[4] = {0, 0, 0, 0};
        const int16_t *p = t->patches;
        for (int32_t g = 0; g < t->groups; ++g, p += 16) {
            uint32_t w = 0;
            if (4 * g + 4 <= k) w = smpq_ld32(row + 4 * g);
            else
                for (int32_t b = 0; 4 * g + b < k; ++b) w |= (uint32_t)(uint8_t)row[4 * g + b] << (8 * b);
            const uint32_t lo = smpq_sxtb16(w), hi = smpq_sxtb16_ror8(w);
            for (int j = 0; j < 4; ++j)
                acc[j] = smpq_smlad(smpq_ld32(p + 4 * j + 2), hi, smpq_smlad(smpq_ld32(p + 4 * j), lo, acc[j]));
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
    const int32_t k = 4 * t->groups + t->row_step;
    smpq_dsp_tile4 u = *t;
    u.row += (size_t)o0 * (size_t)k, u.bias += 4 * o0, u.mult += 4 * o0, u.shift += o0, u.out += o0;
    u.channels = o1 - o0;
    smpq_dsp_tile_4x1_asm(&u);
}
#endif

void smpq_dsp_tile_4x1(smpq_dsp_tile4 t) {
    if (t.channels <= 0) return;
#if SMPQ_SIMD_TARGET
    /* rows of K % 4 != 0: the assembly's last word of a row reads the next row's first bytes (met by the
     * patches' zero padding), so the last channel, whose next bytes are not the op's, goes in C */
    const int32_t n_asm = t.row_step ? t.channels - 1 : t.channels;
    if (t.all_positive) {
        if (n_asm > 0) tile_asm(&t, 0, n_asm);
    } else {
        for (int32_t o = 0; o < n_asm;) { /* runs of channels in assembly, the others in C */
            int32_t e = o;
            while (e < n_asm && asm_channel(&t, e)) ++e;
            if (e > o) tile_asm(&t, o, e);
            if (e < n_asm) tile_c(&t, e, e + 1);
            o = e + 1;
        }
    }
    tile_c(&t, n_asm, t.channels);
#else
    tile_c(&t, 0, t.channels);
#endif
}
