/* Kernel benchmark firmware (bench/kernels_qemu.py builds and runs it on QEMU mps2-an500): every layer
 * shape of bench_cases.h through the reference kernels (ref_*), the Cortex-M DSP kernels (smpq_*) at
 * 8/4/2/1-bit weights, and Arm's CMSIS-NN (s8; s4 for conv), timed with the board's tick counter
 * (SysTick; instructions*2^N/40 under -icount shift=N). Inputs, weights and requantization parameters
 * are pseudo-random from a fixed seed. One line per measurement on the UART:
 *     R <case> <impl> <w_bits> <ticks> <fnv1a of the output>
 * then "timer <board_timer_info()>" and "done"; QEMU is stopped with a semihosting exit. */
#include <stdint.h>
#include <string.h>

#ifndef BENCH_NO_CMSIS
#include "arm_nnfunctions.h"
#endif
#include "board.h"
#include "kernels.h"

#include "bench_cases.h" /* BENCH_CASES[], BENCH_N_CASES, BENCH_MAX_* (written by bench/kernels_qemu.py) */

void ref_conv2d(const smpq_op_args *a);
void ref_conv2d_1x1(const smpq_op_args *a);
void ref_depthwise_conv2d(const smpq_op_args *a);
void ref_fully_connected(const smpq_op_args *a);

/* 16-byte aligned like the firmware's arena (search/planner.py aligns every buffer to 16 bytes) */
#define ALIGNED __attribute__((aligned(16)))
static ALIGNED int8_t in_buf[BENCH_MAX_IN];
static ALIGNED int8_t out_buf[BENCH_MAX_OUT];
static ALIGNED uint8_t w_buf[BENCH_MAX_W];
static int32_t bias[BENCH_MAX_COUT], mult[BENCH_MAX_COUT], shift32[BENCH_MAX_COUT];
static int8_t shift8[BENCH_MAX_COUT];
static ALIGNED int16_t scratch[BENCH_MAX_SCRATCH / 2 + 1];

static uint32_t rng = 12345u;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
    return rng;
}

static void puts_(const char *s) {
    while (*s) board_putc((uint8_t)*s++);
}
static void put_u(uint64_t v) {
    char t[21];
    int n = 0;
    do t[n++] = (char)('0' + v % 10u); while ((v /= 10u) != 0u);
    while (n) board_putc((uint8_t)t[--n]);
}
static void put_i(int32_t v) {
    if (v < 0) board_putc('-'), v = -v;
    put_u((uint32_t)v);
}

static uint32_t fnv1a(const int8_t *p, uint32_t n) {
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; ++i) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

static void report(int c, const char *impl, int bits, uint64_t ticks, uint32_t n_out) {
    puts_("R "), put_i(c), puts_(" "), puts_(impl), puts_(" "), put_i(bits), puts_(" "), put_u(ticks);
    puts_(" "), put_u(fnv1a(out_buf, n_out)), puts_("\n");
}

static void semihosting_exit(void) {
    register uint32_t r0 __asm__("r0") = 0x18u;    /* SYS_EXIT */
    register uint32_t r1 __asm__("r1") = 0x20026u; /* ADP_Stopped_ApplicationExit */
    __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
}

static void run_ours(int c, const bench_case *b, int bits, int dsp) {
    smpq_op_args a;
    memset(&a, 0, sizeof a);
    a.in = in_buf, a.out = out_buf, a.weights = w_buf, a.w_bits = bits;
    a.in_h = b->in_h, a.in_w = b->in_w, a.in_c = b->in_c;
    a.out_h = b->out_h, a.out_w = b->out_w, a.out_c = b->out_c;
    a.kh = b->kh, a.kw = b->kw, a.sh = b->sh, a.sw = b->sw, a.pad_t = b->pad_t, a.pad_l = b->pad_l;
    a.in_offset = 3, a.out_offset = -5, a.act_min = -128, a.act_max = 127;
#ifdef BENCH_VARIED_REQUANT
    if (c % 2) a.act_min = -100, a.act_max = 90; /* a clamp inside int8 */
#endif
    a.bias = (const uint8_t *)bias, a.mult = (const uint8_t *)mult, a.shift = shift8;
    a.scratch = b->kind == BENCH_DEPTHWISE ? 0 : scratch;
    if (b->kind == BENCH_FC) a.in_c = b->in_h * b->in_w * b->in_c;
    const uint32_t n_out = (uint32_t)(b->out_h * b->out_w * b->out_c);
    const int one = b->kh == 1 && b->kw == 1 && b->pad_t == 0 && b->pad_l == 0;
    const uint64_t t0 = board_ticks();
    switch (b->kind) {
        case BENCH_CONV:
            if (one) dsp ? smpq_conv2d_1x1(&a) : ref_conv2d_1x1(&a);
            else dsp ? smpq_conv2d(&a) : ref_conv2d(&a);
            break;
        case BENCH_DEPTHWISE: dsp ? smpq_depthwise_conv2d(&a) : ref_depthwise_conv2d(&a); break;
        default: dsp ? smpq_fully_connected(&a) : ref_fully_connected(&a); break;
    }
    const uint64_t t1 = board_ticks();
    report(c, dsp ? "dsp" : "ref", bits, t1 - t0, n_out);
}

#ifndef BENCH_NO_CMSIS
static ALIGNED int32_t cmsis_buf[BENCH_CMSIS_BUF / 4 + 1];

static void run_cmsis(int c, const bench_case *b, int bits) {
    const cmsis_nn_dims in_d = {1, b->in_h, b->in_w, b->in_c};
    const cmsis_nn_dims out_d = {1, b->out_h, b->out_w, b->out_c};
    const cmsis_nn_dims bias_d = {1, 1, 1, b->out_c};
    const cmsis_nn_activation act = {-128, 127};
    const cmsis_nn_per_channel_quant_params q = {mult, shift32};
    cmsis_nn_context ctx = {cmsis_buf, 0};
    const uint32_t n_out = (uint32_t)(b->out_h * b->out_w * b->out_c);
    arm_cmsis_nn_status st = ARM_CMSIS_NN_SUCCESS;
    uint64_t t0 = 0, t1 = 0;
    if (b->kind == BENCH_CONV) {
        const cmsis_nn_conv_params p = {3, -5, {b->sw, b->sh}, {b->pad_l, b->pad_t}, {1, 1}, act};
        const cmsis_nn_dims f_d = {b->out_c, b->kh, b->kw, b->in_c};
        ctx.size = bits == 8 ? arm_convolve_wrapper_s8_get_buffer_size(&p, &in_d, &f_d, &out_d)
                             : arm_convolve_wrapper_s4_get_buffer_size(&p, &in_d, &f_d, &out_d);
        if (ctx.size > BENCH_CMSIS_BUF) st = ARM_CMSIS_NN_ARG_ERROR;
        t0 = board_ticks();
        if (st == ARM_CMSIS_NN_SUCCESS)
            st = bits == 8 ? arm_convolve_wrapper_s8(&ctx, &p, &q, &in_d, in_buf, &f_d, (const int8_t *)w_buf, &bias_d, bias, &out_d, out_buf)
                           : arm_convolve_wrapper_s4(&ctx, &p, &q, &in_d, in_buf, &f_d, (const int8_t *)w_buf, &bias_d, bias, &out_d, out_buf);
        t1 = board_ticks();
    } else if (b->kind == BENCH_DEPTHWISE) {
        const cmsis_nn_dw_conv_params p = {3, -5, 1, {b->sw, b->sh}, {b->pad_l, b->pad_t}, {1, 1}, act};
        const cmsis_nn_dims f_d = {1, b->kh, b->kw, b->out_c};
        ctx.size = arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &in_d, &f_d, &out_d);
        if (ctx.size > BENCH_CMSIS_BUF) st = ARM_CMSIS_NN_ARG_ERROR;
        t0 = board_ticks();
        if (st == ARM_CMSIS_NN_SUCCESS)
            st = arm_depthwise_conv_wrapper_s8(&ctx, &p, &q, &in_d, in_buf, &f_d, (const int8_t *)w_buf, &bias_d, bias, &out_d, out_buf);
        t1 = board_ticks();
    } else {
        const int32_t k = b->in_h * b->in_w * b->in_c;
        const cmsis_nn_fc_params p = {3, 0, -5, act};
        const cmsis_nn_per_tensor_quant_params qt = {mult[0], shift32[0]};
        const cmsis_nn_dims fc_in = {1, 1, 1, k}, f_d = {k, 1, 1, b->out_c};
        ctx.size = arm_fully_connected_s8_get_buffer_size(&f_d);
        if (ctx.size > BENCH_CMSIS_BUF) st = ARM_CMSIS_NN_ARG_ERROR;
        t0 = board_ticks();
        if (st == ARM_CMSIS_NN_SUCCESS)
            st = arm_fully_connected_s8(&ctx, &p, &qt, &fc_in, in_buf, &f_d, (const int8_t *)w_buf, &bias_d, bias, &out_d, out_buf);
        t1 = board_ticks();
    }
    if (st != ARM_CMSIS_NN_SUCCESS) {
        puts_("E "), put_i(c), puts_(" cmsis "), put_i(bits), puts_(" status "), put_i(st), puts_("\n");
        return;
    }
    report(c, "cmsis", bits, t1 - t0, n_out);
}
#endif

int main(void) {
    puts_("bench-start\n");
    for (int c = 0; c < BENCH_N_CASES; ++c) {
        const bench_case *b = &BENCH_CASES[c];
        for (uint32_t i = 0; i < BENCH_MAX_IN; ++i) in_buf[i] = (int8_t)rnd();
        for (uint32_t i = 0; i < BENCH_MAX_W; ++i) w_buf[i] = (uint8_t)rnd();
#ifdef BENCH_VARIED_REQUANT /* small inputs and weights, so that outputs at small shifts are not all clamped */
        for (uint32_t i = 0; i < BENCH_MAX_IN; ++i) in_buf[i] = (int8_t)((int32_t)(rnd() % 5u) - 5);
        for (uint32_t i = 0; i < BENCH_MAX_W; ++i) w_buf[i] = (uint8_t)(rnd() % 2u ? 0x00u : rnd() % 2u ? 0x11u : 0xFFu);
#endif
        for (int32_t o = 0; o < b->out_c; ++o) {
            bias[o] = (int32_t)(rnd() % 4001u) - 2000;
            mult[o] = (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu));
            shift32[o] = -(int32_t)(6u + rnd() % 4u);
#ifdef BENCH_VARIED_REQUANT /* every form of the requantization: right shifts 0, 1, >= 2, left shifts, multiplier <= 0 */
            shift32[o] = (int32_t)(rnd() % 6u) - 3;
            bias[o] = (int32_t)(rnd() % 41u) - 20;
            if (rnd() % 8u == 0) mult[o] = -mult[o];
#endif
            shift8[o] = (int8_t)shift32[o];
        }
        static const int widths[] = BENCH_WIDTHS;
        for (unsigned w = 0; w < sizeof widths / sizeof widths[0]; ++w) {
            run_ours(c, b, widths[w], 0);
            run_ours(c, b, widths[w], 1);
        }
#ifndef BENCH_NO_CMSIS
        run_cmsis(c, b, 8);
        if (b->kind == BENCH_CONV) run_cmsis(c, b, 4);
#endif
    }
    puts_("timer "), puts_(board_timer_info()), puts_("\ndone\n");
    semihosting_exit();
    return 0;
}
