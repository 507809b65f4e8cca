/* smpq_invoke: run the validated op table in order, resolving records to kernel arguments. */
#include <string.h>

#include "../kernels/kernels.h"
#include "smpq.h"
#include "smpq_format.h"
#include "tensor.h"

static void run_op(const smpq_model *m, const uint8_t *r) {
    const smpq_tensor in = smpq_tensor_at(m, smpq_ld_u16(r + O_IN0));
    const smpq_tensor out = smpq_tensor_at(m, smpq_ld_u16(r + O_OUT));
    int32_t params[SMPQ_N_PARAMS];
    for (int k = 0; k < SMPQ_N_PARAMS; ++k) params[k] = smpq_ld_i32(r + O_PARAMS + 4 * k);
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    a.in = (const int8_t *)(m->arena + in.offset);
    a.out = (int8_t *)(m->arena + out.offset);
    a.in_h = (int32_t)in.dims[1];
    a.in_w = (int32_t)in.dims[2];
    a.in_c = (int32_t)in.dims[3];
    a.out_h = (int32_t)out.dims[1];
    a.out_w = (int32_t)out.dims[2];
    a.out_c = (int32_t)out.dims[3];
    a.kh = r[O_KERNEL];
    a.kw = r[O_KERNEL + 1];
    a.sh = r[O_STRIDE];
    a.sw = r[O_STRIDE + 1];
    a.pad_t = r[O_PAD];
    a.pad_l = r[O_PAD + 1];
    a.in_offset = -in.zero_point;
    a.out_offset = out.zero_point;
    a.act_min = (int8_t)r[O_ACT_MIN];
    a.act_max = (int8_t)r[O_ACT_MAX];
    a.w_bits = r[O_W_BITS];
    a.params = params;
    a.size = (uint32_t)out.size;
    const uint8_t kind = r[O_KIND];
    if (kind == SMPQ_OP_CONV2D || kind == SMPQ_OP_DEPTHWISE_CONV2D || kind == SMPQ_OP_FULLY_CONNECTED) {
        const uint32_t q = smpq_ld_u32(r + O_DATA_OFFSET), c = out.dims[3];
        a.bias = m->data + q;
        a.mult = m->data + q + 4u * c;
        a.shift = (const int8_t *)(const void *)(m->data + q + 8u * c);
        a.weights = m->data + smpq_ld_u32(r + O_WEIGHTS_OFFSET);
        a.scratch = (int16_t *)(void *)(m->arena + smpq_ld_u32(r + O_SCRATCH_OFFSET));
    }
    switch (kind) {
        case SMPQ_OP_CONV2D:
            if (a.kh == 1 && a.kw == 1 && a.pad_t == 0 && a.pad_l == 0)
                smpq_conv2d_1x1(&a);
            else
                smpq_conv2d(&a);
            break;
        case SMPQ_OP_DEPTHWISE_CONV2D: smpq_depthwise_conv2d(&a); break;
        case SMPQ_OP_FULLY_CONNECTED:
            a.in_c = (int32_t)in.size;
            smpq_fully_connected(&a);
            break;
        case SMPQ_OP_ADD: {
            const smpq_tensor in2 = smpq_tensor_at(m, smpq_ld_u16(r + O_IN1));
            a.in2 = (const int8_t *)(m->arena + in2.offset);
            a.in2_offset = -in2.zero_point;
            smpq_add(&a);
            break;
        }
        case SMPQ_OP_AVG_POOL: smpq_avg_pool(&a); break;
        case SMPQ_OP_MAX_POOL: smpq_max_pool(&a); break;
        case SMPQ_OP_RESHAPE: smpq_reshape(&a); break;
        case SMPQ_OP_REQUANTIZE: smpq_requantize(&a); break;
        case SMPQ_OP_SOFTMAX: smpq_softmax(&a); break;
        default: break; /* unreachable: kinds are validated by smpq_load */
    }
}

int smpq_invoke(smpq_model *m) { return smpq_invoke_timed(m, NULL, NULL); }

int smpq_invoke_timed(smpq_model *m, smpq_clock clock, uint32_t *ticks) {
    if (!m) return SMPQ_E_NULL;
    if (!m->loaded) return SMPQ_E_NOT_LOADED;
    const int timed = clock != NULL && ticks != NULL;
    for (uint32_t i = 0; i < m->n_ops; ++i) {
        const uint32_t t0 = timed ? clock() : 0u;
        run_op(m, m->ops + (size_t)i * SMPQ_OP_RECORD);
        if (timed) ticks[i] = clock() - t0;
    }
    return SMPQ_OK;
}

static int is_weighted(uint8_t kind) {
    return kind == SMPQ_OP_CONV2D || kind == SMPQ_OP_DEPTHWISE_CONV2D || kind == SMPQ_OP_FULLY_CONNECTED;
}

int smpq_op_describe(const smpq_model *m, uint32_t index, smpq_op_info *info) {
    if (!m || !info) return SMPQ_E_NULL;
    if (!m->loaded) return SMPQ_E_NOT_LOADED;
    if (index >= m->n_ops) return SMPQ_E_OP_INDEX;
    const uint8_t *r = m->ops + (size_t)index * SMPQ_OP_RECORD;
    const uint16_t out = smpq_ld_u16(r + O_OUT);
    info->kind = r[O_KIND];
    info->w_bits = is_weighted(r[O_KIND]) ? r[O_W_BITS] : 0u;
    info->a_bits = m->tensors[(size_t)out * SMPQ_TENSOR_RECORD + T_BITS];
    return SMPQ_OK;
}

int smpq_tensor_quant(const smpq_model *m, uint32_t index, int32_t *zero_point, uint32_t *scale_bits) {
    if (!m || !zero_point || !scale_bits) return SMPQ_E_NULL;
    if (!m->loaded) return SMPQ_E_NOT_LOADED;
    if (index >= m->n_tensors) return SMPQ_E_OP_INDEX;
    const uint8_t *r = m->tensors + (size_t)index * SMPQ_TENSOR_RECORD;
    *zero_point = (int8_t)r[T_ZERO_POINT];
    *scale_bits = smpq_ld_u32(r + T_SCALE);
    return SMPQ_OK;
}

const char *smpq_op_kind_name(int kind) {
    static const char *const names[] = SMPQ_OP_KIND_NAMES; /* generated from firmware_harness/format_spec.py */
    return kind >= 1 && kind <= SMPQ_OP_KIND_MAX ? names[kind] : names[0];
}

int8_t *smpq_input(const smpq_model *m, uint32_t *size) {
    if (!m || !m->loaded) return NULL;
    const smpq_tensor t = smpq_tensor_at(m, m->input);
    if (size) *size = (uint32_t)t.size;
    return (int8_t *)(m->arena + t.offset);
}

const int8_t *smpq_output(const smpq_model *m, uint32_t *size) {
    if (!m || !m->loaded) return NULL;
    const smpq_tensor t = smpq_tensor_at(m, m->output);
    if (size) *size = (uint32_t)t.size;
    return (const int8_t *)(m->arena + t.offset);
}

int smpq_tensor_shape(const smpq_model *m, uint32_t index, uint32_t dims[4]) {
    if (!m || !dims) return SMPQ_E_NULL;
    if (!m->loaded) return SMPQ_E_NOT_LOADED;
    if (index >= m->n_tensors) return SMPQ_E_OP_INDEX;
    const smpq_tensor t = smpq_tensor_at(m, index);
    for (int d = 0; d < 4; ++d) dims[d] = t.dims[d];
    return m->tensors[(size_t)index * SMPQ_TENSOR_RECORD + T_RANK];
}

int smpq_run_batch(smpq_model *m, const int8_t *inputs, uint32_t n, int8_t *outputs) {
    if (!m || (n && (!inputs || !outputs))) return SMPQ_E_NULL;
    if (!m->loaded) return SMPQ_E_NOT_LOADED;
    uint32_t in_size = 0, out_size = 0;
    int8_t *in = smpq_input(m, &in_size);
    const int8_t *out = smpq_output(m, &out_size);
    for (uint32_t i = 0; i < n; ++i) {
        memcpy(in, inputs + (size_t)i * in_size, in_size);
        const int st = smpq_invoke(m);
        if (st != SMPQ_OK) return st;
        memcpy(outputs + (size_t)i * out_size, out, out_size);
    }
    return SMPQ_OK;
}
