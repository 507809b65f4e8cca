/* The Cortex-M DSP kernels (kernels/cortex_m_dsp, here with the portable emulation of the DSP instructions,
 * or the real ones on a DSP target) against the reference kernels (compiled with a ref_ prefix) over random
 * shapes, bit widths, paddings, strides, offsets and requantization parameters. Every output byte must be
 * equal. Usage: test_kernels_dsp [cases per op (default 400)] [seed (default 1)]. Exit status 0 when all pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "cortex_m_dsp/requant.h"

void ref_conv2d(const smpq_op_args *a);
void ref_conv2d_1x1(const smpq_op_args *a);
void ref_depthwise_conv2d(const smpq_op_args *a);
void ref_fully_connected(const smpq_op_args *a);
void ref_add(const smpq_op_args *a);
void ref_requantize(const smpq_op_args *a);

static uint64_t rng_state;
static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static int32_t uniform(int32_t lo, int32_t hi) { return lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1)); }
static void fill(void *p, size_t n) {
    for (size_t i = 0; i < n; ++i) ((uint8_t *)p)[i] = (uint8_t)rnd();
}
static void put_le32(uint8_t *p, int32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = (uint8_t)((uint32_t)v >> (8 * i));
}

enum { CONV, CONV_1X1, DEPTHWISE, FC, ADD, REQUANTIZE };
static const char *const names[] = {"conv2d", "conv2d_1x1", "depthwise_conv2d", "fully_connected", "add", "requantize_op"};

/* One random REQUANTIZE op (short and long tensors, any TFLite parameters); 1 when both sets agree. */
static int run_requantize_op(void) {
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    const uint32_t n = rnd() % 2 ? (uint32_t)uniform(1, 300) : (uint32_t)uniform(512, 5000);
    int8_t *x = malloc(n), *o_ref = malloc(n), *o_dsp = malloc(n);
    int32_t params[2] = {rnd() % 8 ? (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu)) : (int32_t)rnd(), uniform(-20, 8)};
    fill(x, n);
    a.in = x, a.size = n, a.params = params;
    a.in_offset = uniform(-127, 128), a.out_offset = uniform(-128, 127);
    a.act_min = uniform(-128, 0), a.act_max = uniform(a.act_min, 127);
    a.out = o_ref, ref_requantize(&a);
    a.out = o_dsp, smpq_requantize(&a);
    const int ok = memcmp(o_ref, o_dsp, n) == 0;
    if (!ok) printf("FAIL requantize_op: %u elements\n", (unsigned)n);
    free(x), free(o_ref), free(o_dsp);
    return ok;
}

/* One random ADD (short and long tensors, random TFLite parameters); 1 when both sets agree. */
static int run_add(void) {
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    const uint32_t n = rnd() % 2 ? (uint32_t)uniform(1, 300) : (uint32_t)uniform(1024, 5000);
    int8_t *x1 = malloc(n), *x2 = malloc(n), *o_ref = malloc(n), *o_dsp = malloc(n);
    int32_t params[8] = {uniform(0, 20), (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu)), uniform(-12, 0),
                         (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu)), uniform(-12, 0),
                         (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu)), uniform(-24, 0), 0};
    fill(x1, n), fill(x2, n);
    a.in = x1, a.in2 = x2, a.size = n, a.params = params;
    a.in_offset = uniform(-127, 128), a.in2_offset = uniform(-127, 128), a.out_offset = uniform(-128, 127);
    a.act_min = uniform(-128, 0), a.act_max = uniform(a.act_min, 127);
    if (rnd() % 4 == 0) a.act_min = -128, a.act_max = 127; /* no clamp: the kernels' SSAT path */
    a.out = o_ref, ref_add(&a);
    a.out = o_dsp, smpq_add(&a);
    const int ok = memcmp(o_ref, o_dsp, n) == 0;
    if (!ok) printf("FAIL add: %u elements, left %d\n", (unsigned)n, (int)params[0]);
    free(x1), free(x2), free(o_ref), free(o_dsp);
    return ok;
}

/* The DSP requantization before its clamp (smpq_dsp_rq_fast, and smpq_dsp_rq_apply with a clamp wide enough
 * to show it) against smpq_mbqm for n random accumulators, multipliers and shifts: near-ties of both roundings,
 * extremes and INT32_MIN included. Returns the number of mismatches. */
static int run_requant(int n) {
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        const uint32_t pick = rnd() % 8;
        const int32_t mult = pick == 0 ? INT32_MIN : pick == 1 ? (int32_t)rnd() : (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu));
        const int shift = rnd() % 4 ? uniform(-14, 1) : uniform(-31, 20);
        int32_t x = rnd() % 2 ? (int32_t)rnd() : uniform(-70000, 70000);
        if (rnd() % 4 == 0) x = (int32_t)(rnd() % 3) - 1 + (rnd() % 2 ? INT32_MIN : INT32_MAX);
        const int32_t want = smpq_mbqm(x, mult, shift);
        smpq_op_args a;
        memset(&a, 0, sizeof a);
        uint8_t cp[9];
        put_le32(cp, 0), put_le32(cp + 4, mult), cp[8] = (uint8_t)(int8_t)shift;
        a.bias = cp, a.mult = cp + 4, a.shift = (const int8_t *)(cp + 8);
        const smpq_dsp_rq r = smpq_dsp_rq_of(&a, 0);
        int wrong = r.fast && smpq_dsp_rq_fast(x, mult, r.hi, r.right - 1) != want;
        /* through the clamp: a window of 256 values around the expected one shows any difference */
        smpq_dsp_out o = {(int32_t)(-(int64_t)want % 128), -128, 127};
        const int32_t o8 = smpq_clamp8(smpq_add_wrap(want, o.offset), o.lo, o.hi);
        int8_t got;
        smpq_dsp_rq_store(&r, &x, 1, 1, &got, 1, o);
        wrong |= got != o8 || smpq_dsp_rq_apply(&r, x, o) != o8;
        if (wrong && !bad++) printf("FAIL requantize: x %d mult %d shift %d: want %d\n", (int)x, (int)mult, shift, (int)want);
    }
    return bad;
}

/* One random case of op `kind`; returns 1 when the two kernel sets agree on every output byte. */
static int run_case(int kind) {
    if (kind == ADD) return run_add();
    if (kind == REQUANTIZE) return run_requantize_op();
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    const int bits_choice[] = {1, 2, 4, 8, 8, 3, 5, 6, 7, 4, 2, 1};
    a.w_bits = bits_choice[rnd() % 12];
    if (kind == FC) {
        a.in_h = a.in_w = a.out_h = a.out_w = 1;
        a.in_c = uniform(1, 700);
        a.out_c = uniform(1, 11);
        a.kh = a.kw = a.sh = a.sw = 1;
    } else {
        a.kh = kind == CONV_1X1 ? 1 : uniform(1, 3 + (kind == DEPTHWISE) * 2);
        a.kw = kind == CONV_1X1 ? 1 : uniform(1, 3);
        a.sh = uniform(1, 2), a.sw = uniform(1, 2);
        a.pad_t = kind == CONV_1X1 ? 0 : uniform(0, a.kh - 1);
        a.pad_l = kind == CONV_1X1 ? 0 : uniform(0, a.kw - 1);
        a.in_h = uniform(a.kh, 9), a.in_w = uniform(a.kw, 9);
        a.in_c = rnd() % 2 ? 4 * uniform(1, 12) : uniform(1, 40);
        a.out_c = kind == DEPTHWISE ? a.in_c : uniform(1, 9);
        if (kind == DEPTHWISE && rnd() % 8 == 0) { /* many pixels, few channels, 1x1: the tabulated path */
            a.kh = a.kw = a.sh = a.sw = 1, a.pad_t = a.pad_l = 0;
            a.in_h = uniform(23, 40), a.in_w = uniform(23, 40), a.in_c = a.out_c = uniform(1, 4);
        }
        a.out_h = (a.in_h + 2 * a.pad_t - a.kh) / a.sh + 1;
        a.out_w = (a.in_w + 2 * a.pad_l - a.kw) / a.sw + 1;
    }
    const int32_t k = kind == DEPTHWISE ? a.kh * a.kw : a.kh * a.kw * a.in_c;
    const size_t n_in = (size_t)a.in_h * a.in_w * a.in_c, n_out = (size_t)a.out_h * a.out_w * a.out_c;
    const size_t n_w = (size_t)k * (size_t)(kind == DEPTHWISE ? a.in_c : a.out_c);
    const size_t scratch = kind == CONV || kind == CONV_1X1 ? SMPQ_SCRATCH_CONV2D(k, (uint32_t)a.w_bits)
                           : kind == FC                    ? SMPQ_SCRATCH_FULLY_CONNECTED(k, (uint32_t)a.w_bits) : 0;
    const size_t w_skew = rnd() % 4; /* weights need not start on a word */
    int8_t *in = malloc(n_in), *out_ref = malloc(n_out), *out_dsp = malloc(n_out);
    uint8_t *w_buf = malloc(w_skew + (n_w * (size_t)a.w_bits + 7) / 8), *cp = malloc(9 * (size_t)a.out_c);
    const size_t s_skew = rnd() % 4 == 0; /* sometimes a scratch that is not word-aligned (contiguous patches) */
    int16_t *scr_buf = scratch ? malloc(scratch + 2) : NULL, *scr = scr_buf ? scr_buf + s_skew : NULL;
    fill(in, n_in), fill(w_buf, w_skew + (n_w * (size_t)a.w_bits + 7) / 8);
    const int plain = rnd() % 3 == 0; /* every channel as TFLite makes them (the kernels' fastest paths) */
    for (int32_t o = 0; o < a.out_c; ++o) {
        put_le32(cp + 4 * o, uniform(-20000, 20000));
        const uint32_t pick = plain ? 2 : rnd() % 16; /* mostly TFLite's [2^30, 2^31); sometimes INT32_MIN or any value */
        put_le32(cp + 4 * (a.out_c + o), pick == 0 ? INT32_MIN : pick == 1 ? (int32_t)rnd() : (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu)));
        cp[8 * a.out_c + o] = (uint8_t)(int8_t)(plain ? uniform(-14, -2) : rnd() % 8 ? uniform(-14, 1) : uniform(-31, 20));
    }
    a.in = in, a.weights = w_buf + w_skew, a.bias = cp, a.mult = cp + 4 * a.out_c;
    a.shift = (const int8_t *)(cp + 8 * a.out_c), a.scratch = scr;
    a.in_offset = uniform(-127, 128), a.out_offset = uniform(-128, 127);
    a.act_min = uniform(-128, 0), a.act_max = uniform(a.act_min, 127);
    if (rnd() % 4 == 0) a.act_min = -128, a.act_max = 127; /* no clamp: the kernels' SSAT path */
    if (kind == FC) a.in_c = (int32_t)n_in;
    void (*const ref[])(const smpq_op_args *) = {ref_conv2d, ref_conv2d_1x1, ref_depthwise_conv2d, ref_fully_connected};
    void (*const dsp[])(const smpq_op_args *) = {smpq_conv2d, smpq_conv2d_1x1, smpq_depthwise_conv2d, smpq_fully_connected};
    memset(out_ref, 0x55, n_out), memset(out_dsp, 0x2A, n_out);
    a.out = out_ref, ref[kind](&a);
    if (scr) fill(scr, scratch); /* the DSP kernel must not depend on what the reference left there */
    a.out = out_dsp, dsp[kind](&a);
    const int ok = memcmp(out_ref, out_dsp, n_out) == 0;
    if (!ok) {
        size_t i = 0;
        while (out_ref[i] == out_dsp[i]) ++i;
        printf("FAIL %s: in %dx%dx%d out %dx%dx%d k %dx%d s %dx%d pad %d,%d w_bits %d in_offset %d: "
               "first difference at byte %zu (reference %d, dsp %d)\n", names[kind], (int)a.in_h, (int)a.in_w,
               (int)a.in_c, (int)a.out_h, (int)a.out_w, (int)a.out_c, (int)a.kh, (int)a.kw, (int)a.sh, (int)a.sw,
               (int)a.pad_t, (int)a.pad_l, (int)a.w_bits, (int)a.in_offset, i, out_ref[i], out_dsp[i]);
    }
    free(in), free(out_ref), free(out_dsp), free(w_buf), free(cp), free(scr_buf);
    return ok;
}

int main(int argc, char **argv) {
    const int cases = argc > 1 ? atoi(argv[1]) : 400;
    rng_state = 0x9E3779B97F4A7C15ull ^ (uint64_t)(argc > 2 ? strtoull(argv[2], NULL, 10) : 1u);
    int failures = 0;
    for (int kind = CONV; kind <= REQUANTIZE; ++kind) {
        int bad = 0;
        for (int i = 0; i < cases; ++i) bad += !run_case(kind);
        printf("%s: %d/%d cases bit-exact\n", names[kind], cases - bad, cases);
        failures += bad;
    }
    const int rq_bad = run_requant(200 * cases);
    printf("requantize: %d/%d values exact\n", 200 * cases - rq_bad, 200 * cases);
    failures += rq_bad;
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
