/* The conv2d tile of 4 output pixels x every output channel (8-bit rows, or 1/2/4-bit rows read packed),
 * requantized in registers (tile_4x1.c). */
#ifndef SMPQ_DSP_TILE_4X1_H
#define SMPQ_DSP_TILE_4X1_H

#include <stdint.h>

/* One tile. `patches`: the 4 pixels' patches interleaved by groups of 4 values (rows.h's sigma order; group g
 * at patches + 16g: 4 int16 of pixel 0, then of pixels 1, 2, 3; word-aligned), `groups` groups; `row`: the
 * first channel's int8 row of K = 4*groups + row_step weights (row_step in -3..0: the patches are zero-padded
 * to whole groups), the next channels' rows following it; or (bits 1, 2, 4) its packed row of K = 4*groups
 * codes, starting on a byte, read as word_bytes of whole words and a tail (rows.h's order; the patches
 * permuted to match by smpq_dsp_permute_patch and smpq_dsp_permute_tail). Channel o's output of
 * pixel j goes to out[o + at_j] (at_0 = 0; a pixel repeated to fill the tile gets the same offset as its
 * original). Channels with a multiplier > 0 run in assembly on a DSP target, the others in C; outputs are clamped to [lo, hi] (clamp != 0; else int8's range, one SSAT). Field
 * offsets are fixed: the assembly reads them. */
typedef struct {
    const int16_t *patches; /*  0 */
    const int8_t *row;      /*  4 */
    int32_t groups;         /*  8 */
    const uint8_t *bias;    /* 12: int32 little-endian per channel */
    const uint8_t *mult;    /* 16: int32 little-endian per channel */
    const int8_t *shift;    /* 20 */
    int8_t *out;            /* 24 */
    int32_t offset;         /* 28: output zero point */
    int32_t at1, at2, at3;  /* 32, 36, 40 */
    int32_t channels;       /* 44 */
    int32_t row_step;       /* 48 */
    int32_t lo, hi, clamp;  /* 52, 56, 60 */
    int all_positive;       /* 64: every channel's multiplier > 0 (else checked per channel) */
    /* bits 1, 2, 4: rows of packed codes read in place (tile_4x1.c), row_step 0 */
    int32_t init[4];        /* 68: the accumulators' start per pixel (1-bit: 64 * the sum of its patch; else 0) */
    int32_t word_bytes;     /* 84: 4 x the whole row words of a row */
    int32_t tail;           /* 88: the row's bytes after them: 2 (bit 1) and/or 1 (bit 0) */
    int32_t bits;           /* 92: 8, or 1/2/4 (packed rows) */
} smpq_dsp_tile4;

/* (The assembly advances bias, mult, shift, out, channels and may store row: set them again for the next tile.) */
void smpq_dsp_tile_4x1(smpq_dsp_tile4 *t);

/* Bytes of one row of the tile (K for 8-bit rows; packed: word_bytes + the tail bytes). */
static inline int32_t smpq_dsp_tile4_row_bytes(const smpq_dsp_tile4 *t) {
    return t->bits == 8 ? 4 * t->groups + t->row_step : t->word_bytes + (t->tail & 2) + (t->tail & 1);
}

#endif /* SMPQ_DSP_TILE_4X1_H */
