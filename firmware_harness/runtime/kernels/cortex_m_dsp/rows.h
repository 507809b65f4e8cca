/* Shared by the Cortex-M DSP conv2d and fully connected kernels: the order in which a patch (int16, input
 * offset added) and a weight row (int8) are laid out so that the inner loop needs only SXTB16 + SMLAD.
 *
 * The inner loop loads a row word (bytes d0..d3) and takes SXTB16 -> (d0, d2) and SXTB16 ROR 8 -> (d1, d3),
 * each multiplied by one patch word with SMLAD; so within every group of 4 the patch holds its elements in
 * the order sigma = (0, 2, 1, 3). Weights narrower than 8 bits are decoded a row at a time, one 32-bit word
 * of C = 32/b codes at a time (b = 1, 2, 4): word-shift s of every byte gives the output word
 * (c_s, c_{S+s}, c_{2S+s}, c_{3S+s}) with S = 8/b codes per byte, so the decoded row holds element
 * e(i) = base + (i%4)*S + (i%C)/4 at position i (base = i - i%C) over the row's whole words ("body", the
 * first K - K%C elements) and element i elsewhere. The patch is permuted to match: position j holds
 * x[e(sigma(j))] (sigma only over the first K - K%4 elements; the last K%4 stay in place and are done
 * one by one). 8-bit rows are read in place (e = identity). */
#ifndef SMPQ_DSP_ROWS_H
#define SMPQ_DSP_ROWS_H

#include <stdint.h>

/* Codes per 32-bit word decoded with SIMD for `bits` (1, 2, 4); 0 when rows are decoded one code at a time. */
static inline int32_t smpq_dsp_codes_per_word(int bits) {
    return (bits == 1 || bits == 2 || bits == 4) ? 32 / bits : 0;
}

/* Length of a K-element row's body (its elements laid out by e(); a multiple of the codes per word). */
static inline int32_t smpq_dsp_body(int32_t k, int bits) {
    const int32_t c = smpq_dsp_codes_per_word(bits);
    return c ? k - k % c : 0;
}

/* Reorder a patch of k int16 values whose groups of 4 are already in sigma order (see above) into the
 * order that matches rows of `bits`-bit weights decoded by smpq_dsp_decode_row. Group g of 4 values
 * starts at p + g*stride (stride 4: contiguous; 8: two pixels' patches interleaved, see conv2d.c). */
void smpq_dsp_permute_patch(int16_t *p, int32_t k, int bits, int32_t stride);

/* The tail of a row of `bits`-bit codes (1, 2, 4) after its whole words, as the 4-pixel tile reads it
 * (tile_4x1.c): its first 2 bytes B0 B1 as the word (B0, B1, B0 >> 4, B1 >> 4) and field s (bits
 * [s*bits, (s+1)*bits) of each byte) for s < 4/bits, then a last byte B as (B, B >> 2, B >> 4, B >> 6), fields
 * s < 2/bits; each field one group of 4. Reorders the patch's tail groups (sigma order, group g at p + g*stride)
 * to match; k a multiple of 4 (k*bits a multiple of 8). */
void smpq_dsp_permute_tail(int16_t *p, int32_t k, int bits, int32_t stride);

/* Put the groups of 4 of a patch in natural order into sigma order (the last k%4 stay in place). */
void smpq_dsp_sigma(int16_t *p, int32_t k);

/* Decode elements [from, to) of a k-element row of `bits`-bit codes (bits < 8) starting at code index
 * `start` of the packed stream w, in the row layout above, into d[0 .. to-from). `from` and `to` are
 * multiples of 32, or `to` = k. */
void smpq_dsp_decode_row(int8_t *d, const uint8_t *w, uint32_t start, int32_t k, int32_t from, int32_t to, int bits);

#endif /* SMPQ_DSP_ROWS_H */
