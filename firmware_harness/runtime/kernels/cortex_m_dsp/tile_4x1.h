/* The 8-bit conv2d tile of 4 output pixels x every output channel, requantized in registers (tile_4x1.c). */
#ifndef SMPQ_DSP_TILE_4X1_H
#define SMPQ_DSP_TILE_4X1_H

#include <stdint.h>

/* One tile. `patches`: the 4 pixels' patches interleaved by groups of 4 values (rows.h's sigma order; group g
 * at patches + 16g: 4 int16 of pixel 0, then of pixels 1, 2, 3; word-aligned), `groups` groups; `row`: the
 * first channel's int8 row of K = 4*groups + row_step weights (row_step in -3..0: the patches are zero-padded
 * to whole groups), the next channels' rows following it. Channel o's output of
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
    int all_positive;       /* every channel's multiplier > 0 (else checked per channel) */
} smpq_dsp_tile4;

void smpq_dsp_tile_4x1(smpq_dsp_tile4 t);

#endif /* SMPQ_DSP_TILE_4X1_H */
