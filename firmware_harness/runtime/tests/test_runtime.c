/* C unit tests of the runtime's arithmetic and kernels, with hand-computed expectations.
 * Exit status 0 when every check passes; prints one line per failure. */
#include <stdio.h>
#include <string.h>

#include "fixedpoint.h"
#include "kernels.h"
#include "packed.h"
#include "smpq.h"

static int failures = 0;
#define CHECK_EQ(got, want)                                                                  \
    do {                                                                                     \
        long long g_ = (long long)(got), w_ = (long long)(want);                             \
        if (g_ != w_) {                                                                      \
            printf("FAIL %s:%d: %s = %lld, expected %lld\n", __FILE__, __LINE__, #got, g_, w_); \
            ++failures;                                                                      \
        }                                                                                    \
    } while (0)

static void put_le32(uint8_t *p, int32_t v) {
    uint32_t u = (uint32_t)v;
    p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24);
}

static void test_fixedpoint(void) {
    CHECK_EQ(smpq_srdhm(INT32_MIN, INT32_MIN), INT32_MAX);
    CHECK_EQ(smpq_srdhm(3, 1 << 30), 2);    /* 1.5 -> 2 */
    CHECK_EQ(smpq_srdhm(-3, 1 << 30), -1);  /* gemmlowp's negative nudge: -1.5 -> -1 */
    CHECK_EQ(smpq_srdhm(1000, 1 << 30), 500);
    CHECK_EQ(smpq_rdbpot(5, 1), 3);   /* 2.5 -> 3 */
    CHECK_EQ(smpq_rdbpot(-5, 1), -3); /* -2.5 -> -3 */
    CHECK_EQ(smpq_rdbpot(7, 2), 2);   /* 1.75 -> 2 */
    CHECK_EQ(smpq_rdbpot(-6, 2), -2); /* -1.5 -> -2 */
    CHECK_EQ(smpq_rdbpot(-5, 2), -1); /* -1.25 -> -1 */
    CHECK_EQ(smpq_mbqm(1000, 1 << 30, -3), 63);   /* 1000 * 0.5 / 8 = 62.5 -> 63 */
    CHECK_EQ(smpq_mbqm(-1000, 1 << 30, -3), -63);
    CHECK_EQ(smpq_mbqm(10, 1 << 30, 2), 20);      /* (10 << 2) * 0.5 */
    CHECK_EQ(smpq_mbqm(100, 1518500250, 0), 71);  /* 100 * 0.7071 */
    CHECK_EQ(smpq_clamp8(300, -128, 127), 127);
    CHECK_EQ(smpq_clamp8(-5, 0, 127), 0);
}

static void test_crc(void) {
    CHECK_EQ(smpq_crc32((const uint8_t *)"123456789", 9), 0xCBF43926u);
    CHECK_EQ(smpq_crc32((const uint8_t *)"", 0), 0);
}

/* Reference bit packer (one bit at a time), independent of the runtime's readers. */
static void pack(uint8_t *dst, const int8_t *codes, int n, int bits) {
    memset(dst, 0, (size_t)(n * bits + 7) / 8);
    for (int i = 0; i < n; ++i) {
        uint32_t u = bits == 1 ? (codes[i] > 0) : ((uint32_t)(int32_t)codes[i] & ((1u << bits) - 1u));
        for (int b = 0; b < bits; ++b)
            if (u >> b & 1u) dst[(i * bits + b) / 8] |= (uint8_t)(1u << ((i * bits + b) % 8));
    }
}

static void test_packed(void) {
    enum { N = 61 };
    int8_t codes[N];
    int16_t x[N];
    uint8_t buf[N];
    for (int bits = 1; bits <= 8; ++bits) {
        const int hi = bits == 1 ? 1 : (1 << (bits - 1)) - 1;
        uint32_t s = 12345u + (uint32_t)bits;
        for (int i = 0; i < N; ++i) {
            s = s * 1103515245u + 12345u;
            int v = (int)((s >> 16) % (uint32_t)(2 * hi + 1)) - hi;
            codes[i] = (int8_t)(bits == 1 ? (v >= 0 ? 1 : -1) : v);
            x[i] = (int16_t)((int)((s >> 8) % 511u) - 255);
        }
        codes[0] = (int8_t)(bits == 1 ? -1 : -hi);
        codes[1] = (int8_t)hi;
        pack(buf, codes, N, bits);
        for (int i = 0; i < N; ++i) CHECK_EQ(smpq_code_at(buf, (uint32_t)i, bits), codes[i]);
        /* rows starting at every element offset (mid-byte starts included), every length */
        for (int start = 0; start < 17; ++start) {
            for (int n = 1; start + n <= N; n += 7) {
                int32_t want = 0;
                for (int i = 0; i < n; ++i) want += x[i] * codes[start + i];
                CHECK_EQ(smpq_dot_packed(x, buf, (uint32_t)start, n, bits), want);
                int16_t row[N];
                smpq_unpack_row(row, buf, (uint32_t)start, n, bits);
                for (int i = 0; i < n; ++i) CHECK_EQ(row[i], codes[start + i]);
            }
        }
    }
    /* 1-bit codes: bit 0 -> -1, bit 1 -> +1 */
    const uint8_t one = 0x02;
    CHECK_EQ(smpq_code_at(&one, 0, 1), -1);
    CHECK_EQ(smpq_code_at(&one, 1, 1), 1);
    /* 4-bit: low nibble first, two's complement */
    const uint8_t nib = 0x9F; /* low 0xF = -1, high 0x9 = -7 */
    CHECK_EQ(smpq_code_at(&nib, 0, 4), -1);
    CHECK_EQ(smpq_code_at(&nib, 1, 4), -7);
}

/* 3x3x1 input, 2x2 kernel, 2 output channels, stride 1, padding 0 -> 2x2x2 output. */
static void test_conv2d(void) {
    const int8_t in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const int8_t w[8] = {1, 0, 0, 1, /* ch0: x[y][x] + x[y+1][x+1] */ -1, -1, 1, 1 /* ch1 */};
    uint8_t wp[8], bias[8], mult[8];
    int8_t shift[2] = {0, -1};
    pack(wp, w, 8, 2);
    put_le32(bias, 1); put_le32(bias + 4, 0);
    put_le32(mult, 1 << 30); put_le32(mult + 4, 1 << 30); /* x 0.5 */
    int16_t scratch[64];
    int8_t out[8];
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    a.in = in; a.out = out; a.in_h = 3; a.in_w = 3; a.in_c = 1; a.out_h = 2; a.out_w = 2; a.out_c = 2;
    a.kh = 2; a.kw = 2; a.sh = 1; a.sw = 1; a.in_offset = -1; a.out_offset = -3; a.act_min = -128; a.act_max = 127;
    a.weights = wp; a.w_bits = 2; a.bias = bias; a.mult = mult; a.shift = shift; a.scratch = scratch;
    smpq_conv2d(&a);
    /* ch0 at (0,0): (1-1)+(5-1)+1 = 5 -> 2.5 -> 3, -3 -> 0; (0,1): 1+5+1=7 -> 3.5 -> 4 -> 1;
       (1,0): 3+7+1=11 -> 6 -> 3; (1,1): 4+8+1=13 -> 7 -> 4.
       ch1: -(x00+x01)+(x10+x11) = 6 everywhere -> 6*0.5=3, /2 = 1.5 -> 2 -> -1 */
    const int8_t want[8] = {0, -1, 1, -1, 3, -1, 4, -1};
    for (int i = 0; i < 8; ++i) CHECK_EQ(out[i], want[i]);
    /* same data through the 1x1 path: 1x1 kernel, weights ch0 = 1, ch1 = -1 */
    const int8_t w1[2] = {1, -1};
    pack(wp, w1, 2, 3);
    a.kh = a.kw = 1; a.out_h = 3; a.out_w = 3; a.w_bits = 3; a.sh = a.sw = 1;
    put_le32(bias, 0); shift[1] = 0;
    int8_t out1[18];
    a.out = out1;
    smpq_conv2d_1x1(&a);
    for (int i = 0; i < 9; ++i) {
        const int32_t v = in[i] - 1; /* ch0: v*0.5 rounded; ch1: -v*0.5 */
        CHECK_EQ(out1[2 * i], smpq_rdbpot(smpq_srdhm(v, 1 << 30), 0) - 3);
        CHECK_EQ(out1[2 * i + 1], smpq_srdhm(-v, 1 << 30) - 3);
    }
    CHECK_EQ(out1[2 * 8], 1);  /* (9-1)*0.5 - 3 */
    CHECK_EQ(out1[2 * 8 + 1], -7);
}

static void test_depthwise(void) {
    /* 2x2x2 input, 3x3 kernel, padding 1: every tap = +1 (8-bit), so each output sums the 2x2 block */
    const int8_t in[8] = {1, 10, 2, 20, 3, 30, 4, 40};
    int8_t w[18];
    for (int i = 0; i < 18; ++i) w[i] = 1;
    uint8_t bias[8], mult[8];
    int8_t shift[2] = {0, 0};
    put_le32(bias, 0); put_le32(bias + 4, 100);
    put_le32(mult, INT32_MAX); put_le32(mult + 4, INT32_MAX); /* ~ x 1.0 */
    int8_t out[8];
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    a.in = in; a.out = out; a.in_h = 2; a.in_w = 2; a.in_c = 2; a.out_h = 2; a.out_w = 2; a.out_c = 2;
    a.kh = 3; a.kw = 3; a.sh = 1; a.sw = 1; a.pad_t = 1; a.pad_l = 1; a.act_min = -128; a.act_max = 127;
    a.weights = (const uint8_t *)w; a.w_bits = 8; a.bias = bias; a.mult = mult; a.shift = shift;
    smpq_depthwise_conv2d(&a);
    for (int p = 0; p < 4; ++p) {
        CHECK_EQ(out[2 * p], 10);                  /* 1+2+3+4 */
        CHECK_EQ(out[2 * p + 1], 127);             /* 100+100 clamped */
    }
}

static void test_pool_add_requant(void) {
    /* avg pool 2x2 stride 2 over a 2x2x1 input: -10 / 4 = -2.5 -> -3 ; 10/4 = 2.5 -> 3 */
    const int8_t in[4] = {-1, -2, -3, -4}, in_pos[4] = {1, 2, 3, 4};
    int8_t out[1];
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    a.in = in; a.out = out; a.in_h = 2; a.in_w = 2; a.in_c = 1; a.out_h = 1; a.out_w = 1; a.out_c = 1;
    a.kh = 2; a.kw = 2; a.sh = 2; a.sw = 2; a.act_min = -128; a.act_max = 127;
    smpq_avg_pool(&a);
    CHECK_EQ(out[0], -3);
    a.in = in_pos;
    smpq_avg_pool(&a);
    CHECK_EQ(out[0], 3);
    smpq_max_pool(&a);
    CHECK_EQ(out[0], 4);
    a.act_max = 2;
    smpq_max_pool(&a);
    CHECK_EQ(out[0], 2);

    /* add: both inputs scale 1/2 of output (multiplier 0.5 each), left shift 0 */
    const int8_t x1[3] = {10, -10, 100}, x2[3] = {4, 4, 100};
    int8_t y[3];
    const int32_t p[9] = {0, 1 << 30, 0, 1 << 30, 0, INT32_MAX, 0, 0, 0};
    memset(&a, 0, sizeof a);
    a.in = x1; a.in2 = x2; a.out = y; a.size = 3; a.params = p; a.act_min = -128; a.act_max = 127;
    a.in_offset = 2; a.in2_offset = 0; a.out_offset = -1;
    smpq_add(&a);
    CHECK_EQ(y[0], 7);  /* 12*0.5 + 4*0.5 = 8, x ~1 = 8, -1 => 7 */
    CHECK_EQ(y[1], -3); /* -8*0.5 + 4*0.5 = -2, -1 => -3 */
    CHECK_EQ(y[2], 100); /* 102*0.5 + 50 = 101, -1 => 100 */

    /* requantize: x 0.5 with offsets */
    const int8_t r_in[3] = {-128, 0, 127};
    int8_t r_out[3];
    const int32_t rp[9] = {1 << 30, 0, 0, 0, 0, 0, 0, 0, 0};
    memset(&a, 0, sizeof a);
    a.in = r_in; a.out = r_out; a.size = 3; a.params = rp; a.in_offset = 128; a.out_offset = -128;
    a.act_min = -128; a.act_max = 127;
    smpq_requantize(&a);
    CHECK_EQ(r_out[0], -128);
    CHECK_EQ(r_out[1], -64);
    CHECK_EQ(r_out[2], 0); /* 255*0.5 = 127.5 -> 128, -128 */
}

int main(void) {
    test_fixedpoint();
    test_crc();
    test_packed();
    test_conv2d();
    test_depthwise();
    test_pool_add_requant();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all runtime unit tests passed\n");
    return 0;
}
