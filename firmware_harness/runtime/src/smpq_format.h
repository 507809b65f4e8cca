/* Layout constants of the .smpq format (docs/smpq-format.md) and little-endian field readers. */
#ifndef SMPQ_FORMAT_H
#define SMPQ_FORMAT_H

#include <stdint.h>
#include <string.h>

#define SMPQ_HEADER_SIZE 32u   /* = search/cost.py HEADER_BYTES */
#define SMPQ_TENSOR_RECORD 24u
#define SMPQ_OP_RECORD 64u     /* = search/cost.py OP_RECORD_BYTES */
#define SMPQ_CHANNEL_BYTES 9u  /* bias i32 + multiplier i32 + shift i8 (= BYTES_PER_OUT_CHANNEL) */
#define SMPQ_DATA_ALIGN 4u     /* channel parameters and packed weights start at / are padded to this (= LAYER_DATA_ALIGN) */
#define SMPQ_NO_TENSOR 0xFFFFu

/* Sections follow each other: header | tensor table | op table | data (to total_size).
 * Data (version 2): per weighted op, its channel parameters; per layer, its packed weights (once,
 * shared by the layer's instances). */

/* header field offsets */
#define H_MAGIC 0
#define H_VERSION 4
#define H_FLAGS 6
#define H_TOTAL_SIZE 8
#define H_CRC32 12 /* over bytes [SMPQ_HEADER_SIZE, total_size) */
#define H_N_TENSORS 16
#define H_N_OPS 18
#define H_INPUT 20
#define H_OUTPUT 22
#define H_ARENA_SIZE 24
#define H_RESERVED 28 /* 4 bytes, must be zero */

/* tensor record field offsets */
#define T_RANK 0
#define T_BITS 1
#define T_ZERO_POINT 2
#define T_QMIN 3
#define T_QMAX 4
#define T_RESERVED 5 /* 3 bytes, zero */
#define T_DIMS 8     /* u16[4], NHWC, leading unused dims are 1 */
#define T_SCALE 16   /* f32, informative only */
#define T_ARENA_OFFSET 20

/* op record field offsets */
#define O_KIND 0
#define O_W_BITS 1
#define O_ACT_MIN 2
#define O_ACT_MAX 3
#define O_IN0 4
#define O_IN1 6
#define O_OUT 8
#define O_RESERVED 10 /* u16, zero */
#define O_KERNEL 12   /* u8 kh, kw */
#define O_STRIDE 14   /* u8 sh, sw */
#define O_PAD 16      /* u8 top, left, bottom, right */
#define O_UNION 20    /* 44 bytes, by kind: */
/*   conv2d / depthwise / fully connected: */
#define O_DATA_OFFSET 20    /* u32 channel parameters (bias, multiplier, shift) in the data section (multiple of 4) */
#define O_SCRATCH_OFFSET 24 /* u32 arena offset of the int16 patch scratch */
#define O_SCRATCH_SIZE 28   /* u32 bytes */
#define O_WEIGHTS_OFFSET 32 /* u32 packed weights in the data section (multiple of 4; shared by a layer's instances) */
#define O_WEIGHTED_END 36   /* bytes 36..63 zero */
/*   add: i32 left_shift, in1_multiplier, in1_shift, in2_multiplier, in2_shift, out_multiplier,
 *   out_shift at 20..47 (48..63 zero); requantize: i32 multiplier, shift at 20..27 (28..63 zero). */
#define O_PARAMS 20
#define SMPQ_N_PARAMS 7

enum {
    SMPQ_OP_CONV2D = 1,
    SMPQ_OP_DEPTHWISE_CONV2D = 2,
    SMPQ_OP_FULLY_CONNECTED = 3,
    SMPQ_OP_ADD = 4,
    SMPQ_OP_AVG_POOL = 5,
    SMPQ_OP_MAX_POOL = 6,
    SMPQ_OP_RESHAPE = 7,
    SMPQ_OP_REQUANTIZE = 8
};


static inline uint16_t smpq_ld_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t smpq_ld_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline int32_t smpq_ld_i32(const uint8_t *p) {
    uint32_t u = smpq_ld_u32(p);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

#endif /* SMPQ_FORMAT_H */
