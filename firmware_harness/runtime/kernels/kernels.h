/* Kernel entry points. Arguments are validated by smpq_load(); kernels trust them. */
#ifndef SMPQ_KERNELS_H
#define SMPQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/smpq_format.h" /* SMPQ_TILE, SMPQ_DW_MAX_TAPS and the scratch sizes (SMPQ_SCRATCH_*) */

/* Geometry and quantization of one op, resolved to pointers by the interpreter. */
typedef struct {
    const int8_t *in;
    const int8_t *in2;      /* ADD only */
    int8_t *out;
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t kh, kw, sh, sw, pad_t, pad_l;
    int32_t in_offset;      /* -zero_point of the input */
    int32_t in2_offset;     /* ADD only */
    int32_t out_offset;     /* zero_point of the output */
    int32_t act_min, act_max;
    const uint8_t *weights; /* packed codes */
    int32_t w_bits;
    const uint8_t *bias;    /* int32[out_c], little-endian */
    const uint8_t *mult;    /* int32[out_c] */
    const int8_t *shift;    /* int8[out_c] */
    int16_t *scratch;       /* conv2d: see SMPQ_TILE; fully connected: K int16 */
    const int32_t *params;  /* ADD / REQUANTIZE / SOFTMAX parameters (see smpq_format.h) */
    uint32_t size;          /* elementwise ops: number of elements */
} smpq_op_args;

void smpq_conv2d(const smpq_op_args *a);
void smpq_conv2d_1x1(const smpq_op_args *a);
void smpq_depthwise_conv2d(const smpq_op_args *a);
void smpq_fully_connected(const smpq_op_args *a);
void smpq_add(const smpq_op_args *a);
void smpq_avg_pool(const smpq_op_args *a);
void smpq_max_pool(const smpq_op_args *a);
void smpq_reshape(const smpq_op_args *a);
void smpq_requantize(const smpq_op_args *a);
void smpq_softmax(const smpq_op_args *a); /* along the last axis (out_c) */

/* Shared by conv2d and its 1x1 path: all output channels of a tile of n_pix pixels. */
void smpq_output_tile(const smpq_op_args *a, const int16_t *patches, int32_t n_pix, int32_t k, int8_t *out);

#endif /* SMPQ_KERNELS_H */
