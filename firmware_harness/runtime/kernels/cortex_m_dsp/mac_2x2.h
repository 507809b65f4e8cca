/* The conv2d inner loop of the Cortex-M DSP kernels (mac_2x2.c). */
#ifndef SMPQ_DSP_MAC_2X2_H
#define SMPQ_DSP_MAC_2X2_H

#include <stdint.h>

/* acc[0..3] = (a.w0, a.w1, b.w0, b.w1) over k elements: `pair` holds the patches of pixels a and b
 * interleaved by groups of 4 (4 int16 of a, 4 of b; word-aligned; a last partial group zero-padded), w0 and
 * w1 two int8 rows of k values (rows.h order). No byte past a row's last is read. */
void smpq_dsp_mac_2x2(const int16_t *pair, const int8_t *w0, const int8_t *w1, int32_t k, int32_t acc[4]);

/* The same for rows of k `bits`-bit codes (1, 2 or 4; k*bits a multiple of 8) read packed from byte w0 and w1:
 * the patches hold k rounded up to whole words of 32/bits codes, zero-padded, in the order of decoded rows
 * (rows.h). No byte past a row's last is read. */
void smpq_dsp_mac_2x2_packed(const int16_t *pair, const uint8_t *w0, const uint8_t *w1, int32_t n, int bits,
                             int32_t acc[4]);

#endif /* SMPQ_DSP_MAC_2X2_H */
