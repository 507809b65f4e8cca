/* MLPerf Tiny DUT commands and smpq- extensions (see docs/protocol.md for every reply line). */
#include "dut.h"

#include <stdint.h>
#include <string.h>

#include "../boards/board.h"
#include "io.h"
#include "model_data.h"
#include "smpq.h"

#ifndef SMPQ_FW_HASH
#define SMPQ_FW_HASH "unknown"
#endif
#ifndef SMPQ_KERNELS
#define SMPQ_KERNELS "reference"
#endif
#ifndef SMPQ_MODEL_ID
#define SMPQ_MODEL_ID "ic01"
#endif
#define MAX_OPS 512u /* per-op timing slots (smpq-time) */
#define HEX_PER_LINE 32u

static uint8_t arena[SMPQ_MODEL_DATA_ARENA_SIZE] __attribute__((aligned(16), section(".bss.smpq_arena")));
static uint8_t input[SMPQ_MODEL_DATA_INPUT_SIZE];
static int8_t output[SMPQ_MODEL_DATA_OUTPUT_SIZE];
static uint32_t op_ticks[MAX_OPS];
static smpq_model model;
static int load_status;
static uint32_t blob_crc;
static uint32_t expected, loaded; /* db load N / bytes received since */
static int have_results;
static uint64_t lap_t0, lap_t1; /* timestamps of the last infer */
static int32_t out_zero_point;
static float out_scale;

void dut_init(void) {
    blob_crc = smpq_crc32(smpq_model_data, SMPQ_MODEL_DATA_SIZE);
    load_status = smpq_load(&model, smpq_model_data, SMPQ_MODEL_DATA_SIZE, arena, sizeof arena);
    if (load_status == SMPQ_OK) {
        uint32_t bits = 0;
        smpq_tensor_quant(&model, model.output, &out_zero_point, &bits);
        memcpy(&out_scale, &bits, sizeof out_scale);
    }
}

static void error(const char *what, const char *detail) {
    out_str("e-[");
    out_str(what);
    out_str(detail);
    out_line("]");
}

/* Parse a decimal number; returns 0 on anything but digits (or more than 9 of them). */
static int parse_u32(const char *s, uint32_t *v) {
    uint32_t n = 0, digits = 0;
    for (; *s; ++s, ++digits) {
        if (*s < '0' || *s > '9' || digits >= 9u) return 0;
        n = n * 10u + (uint32_t)(*s - '0');
    }
    *v = n;
    return digits > 0u;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Split `text` in place at spaces into at most `max` words; returns the count. */
static int split(char *text, char **argv, int max) {
    int argc = 0;
    while (*text) {
        while (*text == ' ') *text++ = '\0';
        if (!*text) break;
        if (argc == max) return max + 1;
        argv[argc++] = text;
        while (*text && *text != ' ') ++text;
    }
    return argc;
}

static int model_ready(void) {
    if (load_status != SMPQ_OK) {
        error("model did not load: ", smpq_status_name(load_status));
        return 0;
    }
    if (model.n_ops > MAX_OPS) {
        out_str("e-[the model has ");
        out_u64(model.n_ops);
        out_str(" ops; this firmware times at most ");
        out_u64(MAX_OPS);
        out_line("]");
        return 0;
    }
    return 1;
}

static void db_load(const char *n_text) {
    uint32_t n = 0;
    if (!parse_u32(n_text, &n) || n == 0u) {
        error("db load needs a byte count N >= 1", "");
        return;
    }
    if (n > sizeof input) {
        out_str("e-[db load ");
        out_u64(n);
        out_str(" exceeds the input buffer of ");
        out_u64(sizeof input);
        out_line(" bytes]");
        return;
    }
    expected = n;
    loaded = 0;
    out_str("m-[Expecting ");
    out_u64(n);
    out_line(" bytes]");
}

static void db_data(const char *hex) {
    const uint32_t len = (uint32_t)strlen(hex);
    if (expected == 0u) {
        error("db data before db load", "");
        return;
    }
    if (len % 2u) {
        error("bad hex: odd number of digits", "");
        return;
    }
    for (uint32_t i = 0; i < len; ++i)
        if (hex_digit(hex[i]) < 0) {
            error("bad hex: ", hex);
            return;
        }
    if (loaded + len / 2u > expected) {
        error("db data beyond the db load count", "");
        return;
    }
    for (uint32_t i = 0; i < len; i += 2u)
        input[loaded++] = (uint8_t)(hex_digit(hex[i]) << 4 | hex_digit(hex[i + 1u]));
    if (loaded == expected) out_line("m-load-done");
}

static void db_print(int argc, char **argv) {
    uint32_t start = 0, count = loaded;
    for (int k = 2; k < argc; ++k) {
        uint32_t *dst = argv[k][0] == 'i' ? &start : argv[k][0] == 'l' ? &count : 0;
        if (!dst || argv[k][1] != '=' || !parse_u32(argv[k] + 2, dst)) {
            error("db print takes i=<index> l=<length>: ", argv[k]);
            return;
        }
    }
    if (start > loaded) start = loaded;
    if (count > loaded - start) count = loaded - start;
    for (uint32_t i = 0; i < count; i += HEX_PER_LINE) {
        out_str("m-buffer-[");
        out_hex(input + start + i, count - i < HEX_PER_LINE ? count - i : HEX_PER_LINE);
        out_line("]");
    }
}

static void print_results(void) {
    out_str("m-results-[");
    for (uint32_t i = 0; i < SMPQ_MODEL_DATA_OUTPUT_SIZE; ++i) {
        if (i) out_str(",");
        out_fixed3((float)((int32_t)output[i] - out_zero_point) * out_scale);
    }
    out_line("]");
}

static void run_once(void) {
    uint32_t in_size = 0, out_size = 0;
    memcpy(smpq_input(&model, &in_size), input, sizeof input); /* the arena may reuse the input tensor */
    smpq_invoke_timed(&model, board_ticks32, op_ticks);
    memcpy(output, smpq_output(&model, &out_size), sizeof output);
}

static void infer(int argc, char **argv) {
    uint32_t n = 1, warmup = 0;
    if ((argc > 1 && (!parse_u32(argv[1], &n) || n == 0u)) || (argc > 2 && !parse_u32(argv[2], &warmup)) || argc > 3) {
        error("infer takes N W (N >= 1)", "");
        return;
    }
    if (!model_ready()) return;
    if (expected != sizeof input || loaded != expected) {
        out_str("e-[input not loaded: ");
        out_u64(loaded);
        out_str(" of ");
        out_u64(sizeof input);
        out_line(" bytes]");
        return;
    }
    out_str("m-warmup-start-");
    out_u64(warmup);
    out_eol();
    for (uint32_t i = 0; i < warmup; ++i) run_once();
    out_line("m-warmup-done");
    out_str("m-infer-start-");
    out_u64(n);
    out_eol();
    const uint64_t t0 = board_ticks();
    for (uint32_t i = 0; i < n; ++i) run_once();
    const uint64_t t1 = board_ticks();
    lap_t0 = t0;
    lap_t1 = t1;
    out_str("m-lap-us-");
    out_u64(t0);
    out_eol();
    out_str("m-lap-us-");
    out_u64(t1);
    out_eol();
    out_line("m-infer-done");
    have_results = 1;
    print_results();
}

static int results_ready(void) {
    if (have_results) return 1;
    error("no inference yet", "");
    return 0;
}

static void smpq_info(void) {
    if (!model_ready()) return;
    out_str("m-smpq-info-[board=");
    out_str(board_name);
    out_str(",");
    out_str(board_timer_info());
    out_str(",blob_crc=");
    out_hex32(blob_crc);
    out_str(",blob_bytes=");
    out_u64(SMPQ_MODEL_DATA_SIZE);
    out_str(",arena=");
    out_u64(model.arena_size);
    out_str(",input_bytes=");
    out_u64(SMPQ_MODEL_DATA_INPUT_SIZE);
    out_str(",output_bytes=");
    out_u64(SMPQ_MODEL_DATA_OUTPUT_SIZE);
    out_str(",n_ops=");
    out_u64(model.n_ops);
    out_str(",kernels=" SMPQ_KERNELS ",fw=" SMPQ_FW_HASH);
    out_line("]");
}

static void smpq_layers(void) {
    if (!model_ready()) return;
    for (uint32_t i = 0; i < model.n_ops; ++i) {
        smpq_op_info op;
        smpq_op_describe(&model, i, &op);
        out_str("m-smpq-layer-[");
        out_u64(i);
        out_str(",");
        out_str(smpq_op_kind_name(op.kind));
        out_str(",");
        out_u64(op.w_bits);
        out_str(",");
        out_u64(op.a_bits);
        out_line("]");
    }
}

static void smpq_raw(void) {
    if (!results_ready()) return;
    out_str("m-smpq-raw-[");
    out_hex((const uint8_t *)output, sizeof output);
    out_str("]-crc-[");
    out_hex32(smpq_crc32((const uint8_t *)output, sizeof output));
    out_line("]");
}

static void smpq_lap(void) {
    if (!results_ready()) return;
    char text[44];
    uint32_t n = fmt_u64(text, lap_t0);
    text[n++] = ',';
    n += fmt_u64(text + n, lap_t1);
    out_str("m-smpq-lap-[");
    out_str(text);
    out_str("]-crc-[");
    out_hex32(smpq_crc32((const uint8_t *)text, n));
    out_line("]");
}

static void smpq_time(void) {
    if (!results_ready()) return;
    for (uint32_t i = 0; i < model.n_ops; ++i) {
        out_str("m-smpq-time-[");
        out_u64(i);
        out_str(",");
        out_u64(op_ticks[i]);
        out_line("]");
    }
}

void dut_command(char *text) {
    char *argv[4];
    const int argc = split(text, argv, 4);
    const char *cmd = argc > 0 ? argv[0] : "";
    if (argc > 4 || (argc > 3 && strcmp(cmd, "db") != 0)) {
        error("too many arguments: ", cmd);
    } else if (argc == 0) {
        error("empty command", "");
    } else if (!strcmp(cmd, "name")) {
        out_str("m-name-dut-[smpq-");
        out_str(board_name);
        out_line("]");
    } else if (!strcmp(cmd, "profile")) {
        out_line("m-profile-[ULPMark for tinyML Firmware V0.0.1]");
        out_line("m-model-[" SMPQ_MODEL_ID "]");
    } else if (!strcmp(cmd, "timestamp")) {
        out_str("m-lap-us-");
        out_u64(board_ticks());
        out_eol();
    } else if (!strcmp(cmd, "db")) {
        if (argc >= 2 && !strcmp(argv[1], "load")) db_load(argc == 3 ? argv[2] : "");
        else if (argc >= 2 && !strcmp(argv[1], "print")) db_print(argc, argv);
        else if (argc == 2) db_data(argv[1]);
        else error("db takes load N, print or hex bytes", "");
    } else if (!strcmp(cmd, "infer")) {
        infer(argc, argv);
    } else if (!strcmp(cmd, "results")) {
        if (results_ready()) print_results();
    } else if (!strcmp(cmd, "smpq-info")) {
        smpq_info();
    } else if (!strcmp(cmd, "smpq-layers")) {
        smpq_layers();
    } else if (!strcmp(cmd, "smpq-crc")) {
        out_str("m-smpq-crc-[");
        out_hex32(smpq_crc32(input, loaded));
        out_str(",");
        out_u64(loaded);
        out_line("]");
    } else if (!strcmp(cmd, "smpq-raw")) {
        smpq_raw();
    } else if (!strcmp(cmd, "smpq-lap")) {
        smpq_lap();
    } else if (!strcmp(cmd, "smpq-time")) {
        smpq_time();
    } else {
        error("unknown command: ", cmd);
    }
}
