/* smpq runtime: run a bit-packed mixed-precision integer model (.smpq blob) from one static arena.
 *
 * C99, no malloc, no recursion, no floating point in kernels. The blob format is specified in
 * docs/smpq-format.md. smpq_load() validates the whole blob before anything else touches it; a bad
 * blob gives a negative error code and is never read or written out of bounds.
 */
#ifndef SMPQ_H
#define SMPQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Format version, status codes (smpq_status) and smpq_model: generated from firmware_harness/format_spec.py. */
#include "smpq_types.h"

/* Validate `blob` and bind it to `arena` (`arena_capacity` bytes). Returns SMPQ_OK or an error. */
int smpq_load(smpq_model *m, const uint8_t *blob, uint32_t blob_size, uint8_t *arena, uint32_t arena_capacity);

/* Arena bytes the blob asks for (0 when the header is unreadable); no other validation. */
uint32_t smpq_arena_size(const uint8_t *blob, uint32_t blob_size);

/* Run all ops once. The input tensor must have been written (see smpq_input). */
int smpq_invoke(smpq_model *m);

/* A free-running tick counter (wraps modulo 2^32), e.g. a board's cycle or instruction timer. */
typedef uint32_t (*smpq_clock)(void);

/* smpq_invoke that also stores each op's duration, clock() after minus before, in ticks[0 .. n_ops-1]
 * (per-op timing hook; `clock` and `ticks` may be NULL, then it is smpq_invoke). */
int smpq_invoke_timed(smpq_model *m, smpq_clock clock, uint32_t *ticks);

/* One op as the firmware reports it: kind (SMPQ_OP_* of the format), weight bits (0 when it has no
 * weights) and the bit width of its output activation. */
typedef struct {
    uint8_t kind;
    uint8_t w_bits;
    uint8_t a_bits;
} smpq_op_info;

int smpq_op_describe(const smpq_model *m, uint32_t index, smpq_op_info *info);

/* Quantization of tensor `index`: zero point and the IEEE-754 bits of its float32 scale (the runtime
 * itself does no floating point; a caller that prints dequantised values converts). */
int smpq_tensor_quant(const smpq_model *m, uint32_t index, int32_t *zero_point, uint32_t *scale_bits);

/* Lower-case name of an op kind ("conv2d", ...), "?" for an unknown kind. */
const char *smpq_op_kind_name(int kind);

/* Copy each of `n` inputs into the input tensor, invoke, copy the output out (host batches). */
int smpq_run_batch(smpq_model *m, const int8_t *inputs, uint32_t n, int8_t *outputs);

/* Pointer to the input / output tensor data inside the arena and its size in bytes. */
int8_t *smpq_input(const smpq_model *m, uint32_t *size);
const int8_t *smpq_output(const smpq_model *m, uint32_t *size);

/* Shape of tensor `index` (NHWC, dims[4], unused leading dims are 1); returns rank or an error. */
int smpq_tensor_shape(const smpq_model *m, uint32_t index, uint32_t dims[4]);

/* Short name of an error code. */
const char *smpq_status_name(int status);

/* CRC-32 (IEEE 802.3, the one zlib computes). */
uint32_t smpq_crc32(const uint8_t *data, uint32_t len);

#ifdef __cplusplus
}
#endif
#endif /* SMPQ_H */
