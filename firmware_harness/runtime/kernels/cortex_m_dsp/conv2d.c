/* conv2d (and its 1x1 path) for Cortex-M with the DSP extension; same results as kernels/conv2d.c.
 * The main paths take 4 output pixels x every output channel per call of tile_4x1.c (16 MACs per group of 4
 * values: two LDM of the four pixels' patch words, one row word widened by two SXTB16, eight SMLAD) and
 * requantize in registers:
 *   - 8-bit weights (K % 4 == 0 in the scratch; else, up to K = 64, zero-padded patches on the stack): rows
 *     read in place, 13 instructions per 16 MACs;
 *   - 1/2/4-bit rows that start on a byte (K % 4 == 0): read packed, never decoded; per group one AND (with
 *     a shift) brings one code of every byte to its top bits, the same count for every width; the row's
 *     whole words, then a 2-byte and/or 1-byte tail (rows.h, tile_4x1.c), so the patches are not padded; the
 *     patches are permuted once per pixel to match (rows.c);
 *   - 1..7-bit weights with K % 4 != 0 (the 3-channel stem) and at most SMPQ_DSP_DECODED_STACK weights:
 *     decoded to int8 once per op on the stack, then the 8-bit path.
 * Otherwise output pixels go a tile at a time: their int16 patches (input offset added by SXTAB16, padding 0)
 * are gathered once, in the order of rows.h; then output channels two at a time, each pair of pixels by the
 * 2 x 2 inner loop of mac_2x2.c. With K a multiple of 4 and a word-aligned scratch the patches of pixels 2j
 * and 2j+1 are stored interleaved by groups of 4 ("pairs"): 8-bit rows read in place, 1/2/4-bit rows that
 * start on a byte read packed, other widths (3/5/6/7 bits, rows not on a byte) decoded into two int8 rows
 * shared by the tile. Otherwise SMPQ_TILE contiguous patches and a C loop. Scratch: never more than
 * SMPQ_SCRATCH_CONV2D = 2*K*(SMPQ_TILE + (bits < 8)) bytes. */
#include "../fixedpoint.h"
#include "../kernels.h"
#include "../packed.h"
#include "../../src/smpq_format.h"
#include "mac_2x2.h"
#include "requant.h"
#include "rows.h"
#include "simd.h"
#include "tile_4x1.h"

/* acc[p*2 + c] = patch p . row c for p, c in {0, 1} over contiguous patches: the first k4 elements (a
 * multiple of 4) as SIMD pairs, the rest one by one. */
static void dot_2x2(const int16_t *pa, const int16_t *pb, const int8_t *w0, const int8_t *w1, int32_t k4,
                    int32_t k, int32_t acc[4]) {
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    int32_t i = 0;
    for (; i < k4; i += 4) {
        const uint32_t xa0 = smpq_ld32(pa + i), xa1 = smpq_ld32(pa + i + 2);
        const uint32_t xb0 = smpq_ld32(pb + i), xb1 = smpq_ld32(pb + i + 2);
        const uint32_t r0 = smpq_ld32(w0 + i), r1 = smpq_ld32(w1 + i);
        uint32_t lo = smpq_sxtb16(r0), hi = smpq_sxtb16_ror8(r0);
        a00 = smpq_smlad(xa0, lo, a00), a00 = smpq_smlad(xa1, hi, a00);
        a10 = smpq_smlad(xb0, lo, a10), a10 = smpq_smlad(xb1, hi, a10);
        lo = smpq_sxtb16(r1), hi = smpq_sxtb16_ror8(r1);
        a01 = smpq_smlad(xa0, lo, a01), a01 = smpq_smlad(xa1, hi, a01);
        a11 = smpq_smlad(xb0, lo, a11), a11 = smpq_smlad(xb1, hi, a11);
    }
    for (; i < k; ++i) {
        a00 += pa[i] * w0[i];
        a01 += pa[i] * w1[i];
        a10 += pb[i] * w0[i];
        a11 += pb[i] * w1[i];
    }
    acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11;
}

static inline int32_t sigma(int32_t i) { return (i & ~3) | ((i & 1) << 1) | ((i & 2) >> 1); }

/* The patch of output pixel q: kh*kw taps of in_c values, offset added, groups of 4 in sigma order
 * (rows.h; paired patches: also a last partial group), group g at dst + g*stride; kp - k zeros after
 * the k values. Contiguous patches with in_c % 4 != 0: the values go one by one, then sigma. */
static inline __attribute__((always_inline)) void gather_sum(const smpq_op_args *a, int32_t q, int16_t *dst, int32_t k,
                                                             int32_t kp, int32_t stride, int32_t *sum) {
    int32_t total = 0; /* sum: the patch's sum (its words: two SMLAD per 4 values) */
    const int32_t cin = a->in_c, oy = q / a->out_w, ox = q % a->out_w;
    const int32_t iy0 = oy * a->sh - a->pad_t, ix0 = ox * a->sw - a->pad_l;
    const uint32_t off2 = ((uint32_t)a->in_offset & 0xFFFFu) * 0x10001u;
    const int words = (cin & 3) == 0, contiguous = stride == 4;
    for (int32_t g = k >> 2; g < kp >> 2; ++g) smpq_st64(dst + g * stride, 0u, 0u);
    int16_t *d = dst;
    int32_t e = 0; /* element index (one-by-one path) */
    const int row_whole = words && ix0 >= 0 && ix0 + a->kw <= a->in_w; /* each row of taps: one run of kw*cin */
    for (int32_t ky = 0; ky < a->kh; ++ky) {
        const int32_t iy = iy0 + ky;
        const int row_in = iy >= 0 && iy < a->in_h;
        if (row_whole && row_in) {
            const int8_t *src = a->in + (iy * a->in_w + ix0) * cin;
            for (const int8_t *end = src + a->kw * cin; src < end; src += 4, d += stride) {
                const uint32_t x = smpq_ld32(src), lo = smpq_sxtab16(off2, x), hi = smpq_sxtab16_ror8(off2, x);
                smpq_st64(d, lo, hi);
                if (sum) total = smpq_smlad(hi, 0x10001u, smpq_smlad(lo, 0x10001u, total));
            }
            continue;
        }
        for (int32_t kx = 0; kx < a->kw; ++kx) {
            const int32_t ix = ix0 + kx;
            const int inside = row_in && ix >= 0 && ix < a->in_w;
            const int8_t *src = inside ? a->in + (iy * a->in_w + ix) * cin : a->in;
            if (words && inside) { /* four values per word, already in sigma order; d is word-aligned */
                for (const int8_t *end = src + cin; src < end; src += 4, d += stride) {
                    const uint32_t x = smpq_ld32(src), lo = smpq_sxtab16(off2, x), hi = smpq_sxtab16_ror8(off2, x);
                    smpq_st64(d, lo, hi);
                    if (sum) total = smpq_smlad(hi, 0x10001u, smpq_smlad(lo, 0x10001u, total));
                }
            } else if (words) {
                for (int32_t c = 0; c < cin; c += 4, d += stride) smpq_st64(d, 0u, 0u);
            } else if (contiguous) {
                for (int32_t c = 0; c < cin; ++c) *d++ = inside ? (int16_t)(src[c] + a->in_offset) : 0;
            } else {
                for (int32_t c = 0; c < cin; ++c, ++e)
                    dst[(e >> 2) * stride + (sigma(e) & 3)] = inside ? (int16_t)(src[c] + a->in_offset) : 0;
            }
        }
    }
    if (!words && contiguous) smpq_dsp_sigma(dst, k);
    if (sum && !words) /* values one by one: the sum of the gathered groups */
        for (int32_t g = 0; g < k >> 2; ++g)
            total = smpq_smlad(smpq_ld32(dst + g * stride + 2), 0x10001u, smpq_smlad(smpq_ld32(dst + g * stride), 0x10001u, total));
    if (sum) *sum = total;
}

static void gather(const smpq_op_args *a, int32_t q, int16_t *dst, int32_t k, int32_t kp, int32_t stride) {
    gather_sum(a, q, dst, k, kp, stride, 0);
}

/* Whether every output channel's multiplier is > 0 (tile_4x1.c's assembly takes it). */
static int all_positive(const smpq_op_args *a) {
    for (int32_t o = 0; o < a->out_c; ++o)
        if (smpq_ld_i32(a->mult + 4 * o) <= 0) return 0;
    return 1;
}

/* The patch of output pixel q in natural order (offset added, padding 0), contiguous: for in_c % 4 != 0. */
static void gather_values(const smpq_op_args *a, int32_t q, int16_t *d) {
    const int32_t cin = a->in_c, oy = q / a->out_w, ox = q % a->out_w, run = a->kw * cin;
    const int32_t iy0 = oy * a->sh - a->pad_t, ix0 = ox * a->sw - a->pad_l, off = a->in_offset;
    const int cols_in = ix0 >= 0 && ix0 + a->kw <= a->in_w;
    for (int32_t ky = 0; ky < a->kh; ++ky, d += run) {
        const int32_t iy = iy0 + ky;
        if (iy < 0 || iy >= a->in_h) {
            for (int32_t i = 0; i < run; ++i) d[i] = 0;
            continue;
        }
        const int8_t *src = a->in + (iy * a->in_w + ix0) * cin; /* (ix0 < 0: only read at i >= -ix0*cin) */
        if (cols_in) {
            for (int32_t i = 0; i < run; ++i) d[i] = (int16_t)(src[i] + off);
        } else {
            for (int32_t i = 0; i < run; ++i) {
                const int32_t ix = ix0 + i / cin;
                d[i] = ix >= 0 && ix < a->in_w ? (int16_t)(src[i] + off) : 0;
            }
        }
    }
}

#define SMPQ_DSP_QUAD_STACK_K 64 /* K % 4 != 0 (the 3-channel stem): 4 padded patches on the stack up to this K */
#define SMPQ_DSP_DECODED_STACK 1024 /* ... and its weights decoded to int8 on the stack up to this many */

/* 4 pixels x all channels per tile (tile_4x1.c) in `patches` (4*kp int16, word-aligned; kp = K rounded up to
 * whole groups, zero-padded); a last tile of fewer pixels repeats its last one. */
static void conv_quads(const smpq_op_args *a, int32_t k, int16_t *patches) {
    const int32_t n = a->out_h * a->out_w, cout = a->out_c, kp = (k + 3) & ~3;
    const int positive = all_positive(a);
    int32_t tmp32[SMPQ_DSP_QUAD_STACK_K / 2]; /* in_c % 4 != 0: one patch gathered contiguously, then interleaved */
    int16_t *tmp = (int16_t *)(void *)tmp32;
    for (int32_t q = 0; q < n; q += 4) {
        const int32_t n_pix = n - q < 4 ? n - q : 4;
        for (int32_t p = 0; p < 4; ++p) {
            const int32_t pix = q + (p < n_pix ? p : n_pix - 1);
            if ((a->in_c & 3) == 0 || kp > SMPQ_DSP_QUAD_STACK_K) { /* (then K % 4 == 0: see smpq_conv2d) */
                gather(a, pix, patches + 4 * p, k, kp, 16);
                continue;
            }
            gather_values(a, pix, tmp);
            for (int32_t i = k; i < kp; ++i) tmp[i] = 0;
            smpq_dsp_sigma(tmp, kp);
            for (int32_t g = 0; g < kp >> 2; ++g) smpq_st64(patches + 16 * g + 4 * p, smpq_ld32(tmp + 4 * g), smpq_ld32(tmp + 4 * g + 2));
        }
        smpq_dsp_tile4 t;
        t.patches = patches, t.row = (const int8_t *)(const void *)a->weights, t.groups = kp >> 2, t.row_step = k - kp;
        t.bias = a->bias, t.mult = a->mult, t.shift = a->shift;
        t.out = a->out + (size_t)q * (size_t)cout, t.offset = a->out_offset;
        t.at1 = (n_pix > 1 ? 1 : n_pix - 1) * cout, t.at2 = (n_pix > 2 ? 2 : n_pix - 1) * cout;
        t.at3 = (n_pix > 3 ? 3 : n_pix - 1) * cout, t.channels = cout;
        t.lo = a->act_min, t.hi = a->act_max, t.clamp = !(a->act_min == -128 && a->act_max == 127), t.all_positive = positive;
        t.bits = 8;
        smpq_dsp_tile_4x1(&t);
    }
}

/* 1/2/4-bit rows that start on a byte (K % 4 == 0), read packed by the 4-pixel tile (tile_4x1.c): the patches
 * (4*K int16 in the scratch, no padding) in the order of the rows' whole words (rows.h) and tail
 * (smpq_dsp_permute_tail); 1-bit: each pixel's patch sum starts its accumulator (w = 2b - 1). */
static void conv_quads_packed(const smpq_op_args *a, int32_t k, int bits, int16_t *patches) {
    const int32_t n = a->out_h * a->out_w, cout = a->out_c, c = 32 / bits;
    const int positive = all_positive(a);
    const int32_t tail_bytes = (k % c) * bits / 8;
    smpq_dsp_tile4 t;
    t.patches = patches, t.groups = k >> 2, t.row_step = 0;
    t.word_bytes = (k / c) * 4, t.tail = tail_bytes, t.bits = bits;
    t.lo = a->act_min, t.hi = a->act_max, t.clamp = !(a->act_min == -128 && a->act_max == 127), t.all_positive = positive;
    for (int32_t q = 0; q < n; q += 4) {
        const int32_t n_pix = n - q < 4 ? n - q : 4;
        for (int32_t p = 0; p < 4; ++p) {
            int16_t *patch = patches + 4 * p;
            if (p < n_pix) {
                int32_t sum = 0;
                if (bits == 1) gather_sum(a, q + p, patch, k, k, 16, &sum);
                else gather(a, q + p, patch, k, k, 16);
                smpq_dsp_permute_patch(patch, k, bits, 16);
                smpq_dsp_permute_tail(patch, k, bits, 16);
                t.init[p] = sum * 64;
            } else { /* a last tile of fewer pixels repeats its last one */
                for (int32_t g = 0; g < k >> 2; ++g) smpq_st64(patch + 16 * g, smpq_ld32(patch - 4 + 16 * g), smpq_ld32(patch - 2 + 16 * g));
                t.init[p] = t.init[p - 1];
            }
        }
        t.row = (const int8_t *)(const void *)a->weights, t.bias = a->bias, t.mult = a->mult, t.shift = a->shift;
        t.out = a->out + (size_t)q * (size_t)cout, t.offset = a->out_offset;
        t.at1 = (n_pix > 1 ? 1 : n_pix - 1) * cout, t.at2 = (n_pix > 2 ? 2 : n_pix - 1) * cout;
        t.at3 = (n_pix > 3 ? 3 : n_pix - 1) * cout, t.channels = cout;
        smpq_dsp_tile_4x1(&t);
    }
}

/* How the tile's patches are laid out and multiplied (see the file comment). */
enum { SEPARATE, INT8_PAIRS, DECODED_PAIRS, PACKED_PAIRS };

void smpq_conv2d(const smpq_op_args *a) {
    const int32_t k = a->kh * a->kw * a->in_c, k4 = k & ~3, n = a->out_h * a->out_w, cout = a->out_c;
    const int bits = (int)a->w_bits;
    const smpq_dsp_out oc = smpq_dsp_out_of(a);
    int16_t *patches = a->scratch;
    int8_t *rows = (int8_t *)(void *)(a->scratch + (size_t)SMPQ_TILE * (size_t)k);
    /* Pairs of patches (word-aligned scratch): 8-bit rows read in place; 1/2/4-bit rows that start on a
     * byte read packed (no decoding); other rows decoded into `rows` (then the patches may not be padded).
     * Paired patches are zero-padded to kp (a whole number of row words); two pairs per tile when they fit
     * SMPQ_SCRATCH_CONV2D, else one. Otherwise contiguous patches, SMPQ_TILE per tile. */
    const uint64_t room = SMPQ_SCRATCH_CONV2D((uint64_t)k, (uint32_t)bits);
    if (bits == 8) {
        const int32_t kq = (k + 3) & ~3;
        if ((k & 3) == 0 && ((uintptr_t)(void *)patches & 3u) == 0 && 8u * (uint64_t)k <= room) {
            conv_quads(a, k, patches);
            return;
        }
        if ((k & 3) != 0 && kq <= SMPQ_DSP_QUAD_STACK_K) {
            int32_t quad[2 * SMPQ_DSP_QUAD_STACK_K]; /* 4 patches of kq int16, word-aligned */
            conv_quads(a, k, (int16_t *)(void *)quad);
            return;
        }
    }
    const int32_t c = smpq_dsp_codes_per_word(bits);
    if (c && (k & 3) == 0 && (k * bits) % 8 == 0 && ((uintptr_t)(void *)patches & 3u) == 0 && 8u * (uint64_t)k <= room) {
        conv_quads_packed(a, k, bits, patches);
        return;
    }
    if (bits < 8 && (k & 3) != 0 && ((k + 3) & ~3) <= SMPQ_DSP_QUAD_STACK_K && (uint64_t)cout * (uint64_t)k <= SMPQ_DSP_DECODED_STACK) {
        /* a small op of K % 4 != 0 (the 3-channel stem): its weights decoded to int8 once, then the 8-bit tile */
        int32_t decoded32[SMPQ_DSP_DECODED_STACK / 4];
        int32_t quad[2 * SMPQ_DSP_QUAD_STACK_K];
        int8_t *decoded = (int8_t *)(void *)decoded32;
        int32_t i = 0;
        if (bits == 1) /* 4 codes (a nibble) at a time: bit j spread to byte j by one multiply, then 2b - 1 */
            for (; i + 4 <= cout * k; i += 4) {
                const uint32_t t = ((((uint32_t)a->weights[i >> 3] >> (i & 4)) & 0xFu) * 0x00204081u) & 0x01010101u;
                smpq_st32(decoded + i, smpq_sub8(t + t, 0x01010101u));
            }
        for (; i < cout * k; ++i) decoded[i] = (int8_t)smpq_code_at(a->weights, (uint32_t)i, bits);
        smpq_op_args b = *a;
        b.weights = (const uint8_t *)(const void *)decoded, b.w_bits = 8;
        conv_quads(&b, k, (int16_t *)(void *)quad);
        return;
    }
    int mode = SEPARATE;
    int32_t kp = k;
    if (((uintptr_t)(void *)patches & 3u) == 0 && (k & 3) == 0) { /* (k % 4 != 0: the one-by-one gather costs more) */
        if (bits == 8) mode = INT8_PAIRS, kp = (k + 3) & ~3;
        else if (c && (k * bits) % 8 == 0) mode = PACKED_PAIRS, kp = (k + c - 1) / c * c;
        else if ((k & 3) == 0) mode = DECODED_PAIRS;
    }
    const uint64_t patch_room = mode == DECODED_PAIRS ? room - 2u * (uint64_t)k : room;
    const int32_t pairs = mode == SEPARATE ? 0 : 8u * (uint64_t)kp <= patch_room ? 2 : 4u * (uint64_t)kp <= patch_room ? 1 : 0;
    if (!pairs) mode = SEPARATE, kp = k;
    const int32_t tile = mode == SEPARATE ? SMPQ_TILE : 2 * pairs, stride = mode == SEPARATE ? 4 : 8;
    for (int32_t q = 0; q < n; q += tile) {
        const int32_t n_pix = n - q < tile ? n - q : tile;
        /* pairs: an odd last pixel fills its pair's second slot too (computed, not stored) */
        const int32_t n_gather = mode == SEPARATE ? n_pix : (n_pix + 1) & ~1;
        for (int32_t p = 0; p < n_gather; ++p) {
            int16_t *patch = mode == SEPARATE ? patches + (size_t)p * (size_t)k
                                              : patches + (size_t)(p >> 1) * 2u * (size_t)kp + (size_t)(p & 1) * 4u;
            gather(a, q + (p < n_pix ? p : n_pix - 1), patch, k, kp, stride);
            if (bits < 8) smpq_dsp_permute_patch(patch, kp, bits, stride);
        }
        for (int32_t o = 0; o < cout; o += 2) {
            const int two = o + 1 < cout;
            const int8_t *w0 = 0, *w1 = 0;
            const uint8_t *r0 = 0, *r1 = 0;
            if (mode == PACKED_PAIRS) {
                const size_t row = (size_t)k * (size_t)bits / 8u;
                r0 = a->weights + (size_t)o * row;
                r1 = two ? r0 + row : r0;
            } else if (bits == 8) {
                w0 = (const int8_t *)(const void *)a->weights + (size_t)o * (size_t)k;
                w1 = two ? w0 + k : w0;
            } else {
                smpq_dsp_decode_row(rows, a->weights, (uint32_t)o * (uint32_t)k, k, 0, k, bits);
                if (two) smpq_dsp_decode_row(rows + k, a->weights, (uint32_t)(o + 1) * (uint32_t)k, k, 0, k, bits);
                w0 = rows;
                w1 = two ? rows + k : rows;
            }
            int32_t acc[2 * SMPQ_TILE]; /* acc[pixel * 2 + channel], pixels of the tile */
            for (int32_t p = 0; p < n_pix; p += 2) {
                const int16_t *pair = patches + (size_t)(p >> 1) * 2u * (size_t)kp;
                if (mode == PACKED_PAIRS) {
                    smpq_dsp_mac_2x2_packed(pair, r0, r1, k, bits, acc + 2 * p);
                } else if (mode != SEPARATE) {
                    smpq_dsp_mac_2x2(pair, w0, w1, k, acc + 2 * p);
                } else {
                    const int16_t *pa = patches + (size_t)p * (size_t)k;
                    dot_2x2(pa, p + 1 < n_pix ? pa + k : pa, w0, w1, k4, k, acc + 2 * p);
                }
            }
            /* requantized a channel at a time (its constants stay in registers) */
            int8_t *out = a->out + (size_t)q * (size_t)cout + (size_t)o;
            const smpq_dsp_rq rq0 = smpq_dsp_rq_of(a, o);
            smpq_dsp_rq_store(&rq0, acc, 2, n_pix, out, cout, oc);
            if (two) {
                const smpq_dsp_rq rq1 = smpq_dsp_rq_of(a, o + 1);
                smpq_dsp_rq_store(&rq1, acc + 1, 2, n_pix, out + 1, cout, oc);
            }
        }
    }
}
