/* smpq_load: validate every field of a blob before use (see docs/smpq-format.md, "Validation"). */
#include <string.h>

#include "smpq.h"
#include "smpq_format.h"
#include "tensor.h"
#include "../kernels/kernels.h"

static int is_little_endian(void) {
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static int overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) {
    return an != 0 && bn != 0 && a < b + bn && b < a + an;
}

/* out may share exactly its start with an elementwise input, or not overlap it at all */
static int bad_alias(const smpq_tensor *out, const smpq_tensor *in, int elementwise) {
    if (elementwise && out->offset == in->offset) return 0;
    return overlaps(out->offset, out->size, in->offset, in->size);
}

static int check_tensor(const smpq_model *m, uint32_t i) {
    const uint8_t *r = m->tensors + (size_t)i * SMPQ_TENSOR_RECORD;
    const uint8_t rank = r[T_RANK], bits = r[T_BITS];
    if (rank < 1 || rank > 4 || bits < 1 || bits > 8) return SMPQ_E_TENSOR;
    if ((int8_t)r[T_QMIN] > (int8_t)r[T_QMAX]) return SMPQ_E_TENSOR;
    if (r[T_RESERVED] | r[T_RESERVED + 1] | r[T_RESERVED + 2]) return SMPQ_E_TENSOR;
    for (int d = 0; d < 4; ++d) {
        uint16_t v = smpq_ld_u16(r + T_DIMS + 2 * d);
        if (v == 0 || (d < 4 - rank && v != 1)) return SMPQ_E_TENSOR;
    }
    smpq_tensor t = smpq_tensor_at(m, i);
    if (t.dims[0] != 1) return SMPQ_E_TENSOR; /* batch 1 */
    if ((uint64_t)t.offset + t.size > m->arena_size) return SMPQ_E_ARENA_RANGE;
    return SMPQ_OK;
}

static int check_shift(int32_t s) { return s >= -31 && s <= 31; }

/* output size of a window op along one axis; 0 when inconsistent */
static int window_ok(uint32_t in, uint32_t out, uint32_t k, uint32_t s, uint32_t p0, uint32_t p1) {
    if (k == 0 || s == 0 || p0 >= k || p1 >= k) return 0;
    if (in + p0 + p1 < k) return 0;
    return out == (in + p0 + p1 - k) / s + 1;
}

static int zero_bytes(const uint8_t *p, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i)
        if (p[i]) return 0;
    return 1;
}

static uint64_t align_data(uint64_t n) { return (n + SMPQ_DATA_ALIGN - 1u) / SMPQ_DATA_ALIGN * SMPQ_DATA_ALIGN; }

static int is_weighted(uint8_t kind) {
    return kind == SMPQ_OP_CONV2D || kind == SMPQ_OP_DEPTHWISE_CONV2D || kind == SMPQ_OP_FULLY_CONNECTED;
}

/* The two data-section regions of a weighted op, sizes padded to SMPQ_DATA_ALIGN: its channel
 * parameters (bias i32[C], multiplier i32[C], shift i8[C]) and its packed weights (ceil(codes*bits/8)). */
typedef struct {
    uint64_t cp_off, cp_size;
    uint64_t w_off, w_bytes, w_size;
    uint64_t codes;
    uint32_t bits, channels;
} layer_regions;

/* Only for records whose tensor indices and K / taps / FC input size are already checked (no overflow). */
static layer_regions regions_of(const smpq_model *m, const uint8_t *r) {
    const smpq_tensor in = smpq_tensor_at(m, smpq_ld_u16(r + O_IN0)), out = smpq_tensor_at(m, smpq_ld_u16(r + O_OUT));
    const uint64_t taps = (uint64_t)r[O_KERNEL] * r[O_KERNEL + 1];
    layer_regions g;
    g.channels = out.dims[3];
    g.bits = r[O_W_BITS];
    g.codes = r[O_KIND] == SMPQ_OP_CONV2D ? taps * in.dims[3] * out.dims[3]
            : r[O_KIND] == SMPQ_OP_DEPTHWISE_CONV2D ? taps * out.dims[3]
            : in.size * out.dims[3];
    g.cp_off = smpq_ld_u32(r + O_DATA_OFFSET);
    g.cp_size = align_data((uint64_t)SMPQ_CHANNEL_BYTES * g.channels);
    g.w_off = smpq_ld_u32(r + O_WEIGHTS_OFFSET);
    g.w_bytes = (g.codes * g.bits + 7u) / 8u;
    g.w_size = align_data(g.w_bytes);
    return g;
}

/* Data section of weighted op i: both regions inside it and aligned, its channel parameters
 * overlapping nothing else, its weights overlapping no channel parameters and no other op's weights
 * unless they are the same (offset, bits and code count: instances of one layer). Checked against
 * the weighted ops before i (each pair once, in op order), as firmware_harness/smpq_format.py does. */
static int check_weights(const smpq_model *m, uint32_t i) {
    const uint8_t *r = m->ops + (size_t)i * SMPQ_OP_RECORD;
    const layer_regions a = regions_of(m, r);
    if (a.bits < 1 || a.bits > 8) return SMPQ_E_OP_PARAM;
    if (a.cp_off % SMPQ_DATA_ALIGN || a.cp_off + a.cp_size > m->data_size) return SMPQ_E_DATA_RANGE;
    if (a.w_bytes > SMPQ_MAX_WEIGHT_BYTES || a.w_off % SMPQ_DATA_ALIGN || a.w_off + a.w_size > m->data_size)
        return SMPQ_E_WEIGHTS_RANGE;
    if (overlaps(a.cp_off, a.cp_size, a.w_off, a.w_size)) return SMPQ_E_WEIGHTS_RANGE;
    for (uint32_t j = 0; j < i; ++j) {
        const uint8_t *rj = m->ops + (size_t)j * SMPQ_OP_RECORD;
        if (!is_weighted(rj[O_KIND])) continue;
        const layer_regions b = regions_of(m, rj);
        if (overlaps(a.cp_off, a.cp_size, b.cp_off, b.cp_size)) return SMPQ_E_DATA_RANGE;
        if (overlaps(a.cp_off, a.cp_size, b.w_off, b.w_size) || overlaps(a.w_off, a.w_size, b.cp_off, b.cp_size))
            return SMPQ_E_WEIGHTS_RANGE;
        if (overlaps(a.w_off, a.w_size, b.w_off, b.w_size) && (a.w_off != b.w_off || a.bits != b.bits || a.codes != b.codes))
            return SMPQ_E_WEIGHTS_SHARED;
    }
    if (!zero_bytes(r + O_WEIGHTED_END, SMPQ_OP_RECORD - O_WEIGHTED_END)) return SMPQ_E_OP_PARAM;
    const int8_t *shift = (const int8_t *)(const void *)(m->data + a.cp_off + 8ull * a.channels);
    for (uint32_t c = 0; c < a.channels; ++c)
        if (!check_shift(shift[c])) return SMPQ_E_OP_PARAM;
    return SMPQ_OK;
}

static int check_scratch(const smpq_model *m, const uint8_t *r, uint64_t need, const smpq_tensor *in, const smpq_tensor *out) {
    const uint64_t off = smpq_ld_u32(r + O_SCRATCH_OFFSET), size = smpq_ld_u32(r + O_SCRATCH_SIZE);
    if (size < need) return SMPQ_E_OP_PARAM;
    if (off + size > m->arena_size || (off & 1u)) return SMPQ_E_ARENA_RANGE;
    if (overlaps(off, size, in->offset, in->size) || overlaps(off, size, out->offset, out->size)) return SMPQ_E_ALIAS;
    return SMPQ_OK;
}

static int check_op(const smpq_model *m, uint32_t i) {
    const uint8_t *r = m->ops + (size_t)i * SMPQ_OP_RECORD;
    const uint8_t kind = r[O_KIND];
    const uint32_t i0 = smpq_ld_u16(r + O_IN0), i1 = smpq_ld_u16(r + O_IN1), o = smpq_ld_u16(r + O_OUT);
    if (kind < SMPQ_OP_CONV2D || kind > SMPQ_OP_KIND_MAX) return SMPQ_E_OP_KIND;
    if (i0 >= m->n_tensors || o >= m->n_tensors) return SMPQ_E_OP_INDEX;
    if (kind == SMPQ_OP_ADD ? i1 >= m->n_tensors : i1 != SMPQ_NO_TENSOR) return SMPQ_E_OP_INDEX;
    if (smpq_ld_u16(r + O_RESERVED) != 0) return SMPQ_E_OP_PARAM;
    if ((int8_t)r[O_ACT_MIN] > (int8_t)r[O_ACT_MAX]) return SMPQ_E_OP_PARAM;
    const smpq_tensor in = smpq_tensor_at(m, i0), out = smpq_tensor_at(m, o);
    const uint32_t kh = r[O_KERNEL], kw = r[O_KERNEL + 1], sh = r[O_STRIDE], sw = r[O_STRIDE + 1];
    const uint32_t pt = r[O_PAD], pl = r[O_PAD + 1], pb = r[O_PAD + 2], pr = r[O_PAD + 3];
    int32_t p[SMPQ_N_PARAMS];
    for (int k = 0; k < SMPQ_N_PARAMS; ++k) p[k] = smpq_ld_i32(r + O_PARAMS + 4 * k);
    int st;
    switch (kind) {
        case SMPQ_OP_CONV2D:
        case SMPQ_OP_DEPTHWISE_CONV2D:
        case SMPQ_OP_AVG_POOL:
        case SMPQ_OP_MAX_POOL: {
            if (kh == 0 || kw == 0 || sh == 0 || sw == 0 || pt >= kh || pb >= kh || pl >= kw || pr >= kw) return SMPQ_E_OP_PARAM;
            if (!window_ok(in.dims[1], out.dims[1], kh, sh, pt, pb) || !window_ok(in.dims[2], out.dims[2], kw, sw, pl, pr))
                return SMPQ_E_OP_SHAPE;
            if (kind != SMPQ_OP_CONV2D && in.dims[3] != out.dims[3]) return SMPQ_E_OP_SHAPE;
            if (bad_alias(&out, &in, 0)) return SMPQ_E_ALIAS;
            if (kind == SMPQ_OP_CONV2D) {
                const uint64_t k = (uint64_t)kh * kw * in.dims[3];
                if (k > SMPQ_MAX_K) return SMPQ_E_OP_PARAM;
                if ((st = check_weights(m, i)) != SMPQ_OK) return st;
                return check_scratch(m, r, SMPQ_SCRATCH_CONV2D(k, r[O_W_BITS]), &in, &out);
            }
            if (kind == SMPQ_OP_DEPTHWISE_CONV2D) {
                if ((uint64_t)kh * kw > SMPQ_DW_MAX_TAPS || smpq_ld_u32(r + O_SCRATCH_OFFSET) || smpq_ld_u32(r + O_SCRATCH_SIZE))
                    return SMPQ_E_OP_PARAM; /* depthwise takes no scratch */
                return check_weights(m, i);
            }
            return zero_bytes(r + O_UNION, SMPQ_OP_RECORD - O_UNION) ? SMPQ_OK : SMPQ_E_OP_PARAM; /* pools */
        }
        case SMPQ_OP_FULLY_CONNECTED: {
            if (in.size > SMPQ_MAX_K) return SMPQ_E_OP_PARAM;
            if (out.size != out.dims[3]) return SMPQ_E_OP_SHAPE;
            if (bad_alias(&out, &in, 0)) return SMPQ_E_ALIAS;
            if ((st = check_weights(m, i)) != SMPQ_OK) return st;
            return check_scratch(m, r, SMPQ_SCRATCH_FULLY_CONNECTED(in.size, r[O_W_BITS]), &in, &out);
        }
        case SMPQ_OP_ADD: {
            const smpq_tensor in2 = smpq_tensor_at(m, i1);
            for (int d = 0; d < 4; ++d)
                if (in.dims[d] != out.dims[d] || in2.dims[d] != out.dims[d]) return SMPQ_E_OP_SHAPE;
            if (p[0] < 0 || p[0] > 31 || !check_shift(p[2]) || !check_shift(p[4]) || !check_shift(p[6])) return SMPQ_E_OP_PARAM;
            if (!zero_bytes(r + O_PARAMS + 4 * SMPQ_N_PARAMS, SMPQ_OP_RECORD - O_PARAMS - 4 * SMPQ_N_PARAMS)) return SMPQ_E_OP_PARAM;
            if (bad_alias(&out, &in, 1) || bad_alias(&out, &in2, 1)) return SMPQ_E_ALIAS;
            return SMPQ_OK;
        }
        case SMPQ_OP_RESHAPE:
        case SMPQ_OP_REQUANTIZE:
            if (in.size != out.size) return SMPQ_E_OP_SHAPE;
            if (kind == SMPQ_OP_REQUANTIZE) {
                for (int d = 0; d < 4; ++d)
                    if (in.dims[d] != out.dims[d]) return SMPQ_E_OP_SHAPE;
                if (!check_shift(p[1]) || !zero_bytes(r + O_PARAMS + 8, SMPQ_OP_RECORD - O_PARAMS - 8)) return SMPQ_E_OP_PARAM;
            } else if (!zero_bytes(r + O_UNION, SMPQ_OP_RECORD - O_UNION)) {
                return SMPQ_E_OP_PARAM;
            }
            if (bad_alias(&out, &in, 1)) return SMPQ_E_ALIAS;
            return SMPQ_OK;
        case SMPQ_OP_SOFTMAX: /* along the last axis: shapes equal; left shift 0..31, diff_min <= 0 */
            for (int d = 0; d < 4; ++d)
                if (in.dims[d] != out.dims[d]) return SMPQ_E_OP_SHAPE;
            if (p[0] < 0 || p[1] < 0 || p[1] > 31 || p[2] > 0) return SMPQ_E_OP_PARAM;
            if (!zero_bytes(r + O_PARAMS + 12, SMPQ_OP_RECORD - O_PARAMS - 12)) return SMPQ_E_OP_PARAM;
            if (bad_alias(&out, &in, 0)) return SMPQ_E_ALIAS;
            return SMPQ_OK;
        default:
            return SMPQ_E_OP_KIND;
    }
}

uint32_t smpq_arena_size(const uint8_t *blob, uint32_t blob_size) {
    if (!blob || blob_size < SMPQ_HEADER_SIZE || memcmp(blob, "SMPQ", 4) != 0) return 0;
    return smpq_ld_u32(blob + H_ARENA_SIZE);
}

int smpq_load(smpq_model *m, const uint8_t *blob, uint32_t blob_size, uint8_t *arena, uint32_t arena_capacity) {
    if (!m) return SMPQ_E_NULL;
    memset(m, 0, sizeof *m);
    if (!blob || !arena) return SMPQ_E_NULL;
    if (!is_little_endian()) return SMPQ_E_PLATFORM;
    if (blob_size < 4) return SMPQ_E_TRUNCATED;
    if (memcmp(blob, "SMPQ", 4) != 0) return SMPQ_E_MAGIC;
    if (blob_size < SMPQ_HEADER_SIZE) return SMPQ_E_TRUNCATED;
    if (smpq_ld_u16(blob + H_VERSION) != SMPQ_FORMAT_VERSION) return SMPQ_E_VERSION;
    const uint32_t total = smpq_ld_u32(blob + H_TOTAL_SIZE);
    if (smpq_ld_u16(blob + H_FLAGS) != 0 || smpq_ld_u32(blob + H_RESERVED) != 0 || total < SMPQ_HEADER_SIZE) return SMPQ_E_HEADER;
    if (total > blob_size) return SMPQ_E_TRUNCATED;
    if (smpq_crc32(blob + SMPQ_HEADER_SIZE, total - SMPQ_HEADER_SIZE) != smpq_ld_u32(blob + H_CRC32)) return SMPQ_E_CRC;

    const uint32_t n_t = smpq_ld_u16(blob + H_N_TENSORS), n_o = smpq_ld_u16(blob + H_N_OPS);
    const uint32_t input = smpq_ld_u16(blob + H_INPUT), output = smpq_ld_u16(blob + H_OUTPUT);
    const uint32_t arena_size = smpq_ld_u32(blob + H_ARENA_SIZE);
    if (n_t == 0 || n_o == 0 || input >= n_t || output >= n_t || arena_size > SMPQ_MAX_ARENA) return SMPQ_E_HEADER;
    const uint64_t tt = SMPQ_HEADER_SIZE, ot = tt + (uint64_t)n_t * SMPQ_TENSOR_RECORD;
    const uint64_t doff = ot + (uint64_t)n_o * SMPQ_OP_RECORD;
    if (doff > total) return SMPQ_E_TABLE_RANGE;
    const uint64_t dsize = total - doff;
    if (arena_size > arena_capacity || ((uintptr_t)arena & 3u)) return SMPQ_E_ARENA_SMALL;

    m->blob = blob;
    m->tensors = blob + tt;
    m->ops = blob + ot;
    m->data = blob + doff;
    m->arena = arena;
    m->blob_size = total;
    m->data_size = (uint32_t)dsize;
    m->arena_size = arena_size;
    m->n_tensors = (uint16_t)n_t;
    m->n_ops = (uint16_t)n_o;
    m->input = (uint16_t)input;
    m->output = (uint16_t)output;
    int st;
    for (uint32_t i = 0; i < n_t; ++i)
        if ((st = check_tensor(m, i)) != SMPQ_OK) goto fail;
    for (uint32_t i = 0; i < n_o; ++i)
        if ((st = check_op(m, i)) != SMPQ_OK) goto fail;
    m->loaded = 1;
    return SMPQ_OK;
fail:
    memset(m, 0, sizeof *m);
    return st;
}

const char *smpq_status_name(int status) {
    static const char *const names[] = SMPQ_STATUS_NAMES;
    if (status > 0 || status < -(int)(sizeof names / sizeof names[0] - 1)) return "E_UNKNOWN";
    return names[-status];
}
