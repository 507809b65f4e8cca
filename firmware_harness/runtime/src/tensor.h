/* Decoded view of one tensor record (shared by the loader and the interpreter). */
#ifndef SMPQ_TENSOR_H
#define SMPQ_TENSOR_H

#include "smpq.h"
#include "smpq_format.h"

typedef struct {
    uint32_t dims[4]; /* N, H, W, C (leading unused dims are 1) */
    uint64_t size;    /* bytes = elements (int8 storage) */
    uint32_t offset;  /* arena offset */
    int32_t zero_point;
} smpq_tensor;

static inline smpq_tensor smpq_tensor_at(const smpq_model *m, uint32_t index) {
    const uint8_t *r = m->tensors + (size_t)index * SMPQ_TENSOR_RECORD;
    smpq_tensor t;
    t.size = 1;
    for (int i = 0; i < 4; ++i) {
        t.dims[i] = smpq_ld_u16(r + T_DIMS + 2 * i);
        t.size *= t.dims[i];
    }
    t.offset = smpq_ld_u32(r + T_ARENA_OFFSET);
    t.zero_point = (int8_t)r[T_ZERO_POINT];
    return t;
}

#endif /* SMPQ_TENSOR_H */
