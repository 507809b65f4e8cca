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

#define SMPQ_FORMAT_VERSION 2u

/* Error codes (negative); keep in sync with firmware_harness/smpq_format.py ERRORS. */
typedef enum {
    SMPQ_OK = 0,
    SMPQ_E_NULL = -1,          /* a NULL pointer argument */
    SMPQ_E_TRUNCATED = -2,     /* blob shorter than its header or its declared total size */
    SMPQ_E_MAGIC = -3,         /* not an .smpq blob */
    SMPQ_E_VERSION = -4,       /* unsupported format version */
    SMPQ_E_HEADER = -5,        /* header fields inconsistent (sizes, flags, reserved, counts) */
    SMPQ_E_CRC = -6,           /* CRC32 of the payload does not match */
    SMPQ_E_TABLE_RANGE = -7,   /* tensor table, op table or data section outside the blob */
    SMPQ_E_TENSOR = -8,        /* a tensor record is invalid (rank, dims, bits, clamp range) */
    SMPQ_E_ARENA_RANGE = -9,   /* a tensor or scratch region lies outside the arena */
    SMPQ_E_OP_KIND = -10,      /* unknown op kind */
    SMPQ_E_OP_INDEX = -11,     /* an op refers to a tensor that does not exist */
    SMPQ_E_OP_SHAPE = -12,     /* an op's tensor shapes are inconsistent */
    SMPQ_E_OP_PARAM = -13,     /* bits, kernel, stride, padding, shift or clamp out of range */
    SMPQ_E_DATA_RANGE = -14,   /* channel parameters misaligned, outside the data section or overlapping another op's */
    SMPQ_E_ARENA_SMALL = -15,  /* the caller's arena is smaller than the blob's arena size */
    SMPQ_E_ALIAS = -16,        /* an op's output overlaps its inputs or its scratch */
    SMPQ_E_NOT_LOADED = -17,   /* smpq_invoke on a model that did not load */
    SMPQ_E_PLATFORM = -18,     /* the runtime was built for a big-endian target */
    SMPQ_E_WEIGHTS_RANGE = -19, /* packed weights misaligned, outside the data section or over channel parameters */
    SMPQ_E_WEIGHTS_SHARED = -20 /* two ops' packed weights overlap without being the same (offset, bits, codes) */
} smpq_status;

/* A loaded model: views into the caller's blob and arena (the runtime owns no memory). */
typedef struct {
    const uint8_t *blob;
    const uint8_t *tensors;  /* tensor table */
    const uint8_t *ops;      /* op table */
    const uint8_t *data;     /* data section (channel parameters, packed weights) */
    uint8_t *arena;
    uint32_t blob_size;
    uint32_t data_size;
    uint32_t arena_size;     /* bytes the model needs */
    uint16_t n_tensors;
    uint16_t n_ops;
    uint16_t input;
    uint16_t output;
    int loaded;
} smpq_model;

/* Validate `blob` and bind it to `arena` (`arena_capacity` bytes). Returns SMPQ_OK or an error. */
int smpq_load(smpq_model *m, const uint8_t *blob, uint32_t blob_size, uint8_t *arena, uint32_t arena_capacity);

/* Arena bytes the blob asks for (0 when the header is unreadable); no other validation. */
uint32_t smpq_arena_size(const uint8_t *blob, uint32_t blob_size);

/* Run all ops once. The input tensor must have been written (see smpq_input). */
int smpq_invoke(smpq_model *m);

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
