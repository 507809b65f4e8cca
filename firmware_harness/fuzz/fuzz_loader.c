/* libFuzzer harness: the .smpq loader and, when a mutated blob still loads, one inference.
 *
 * The harness rewrites the header's CRC32 so mutations reach the deeper validation (the CRC check
 * itself is covered by the unit tests). The arena is small so that every accepted model runs fast.
 * Build: make -C firmware_harness/fuzz (clang, -fsanitize=fuzzer,address,undefined). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smpq.h"

#define FUZZ_ARENA 4096u
#define FUZZ_MAX_BLOB (1u << 20)

static uint32_t arena_words[FUZZ_ARENA / 4];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_BLOB) return 0;
    uint8_t *blob = (uint8_t *)malloc(size ? size : 1); /* exact-size copy: ASan sees any over-read */
    if (!blob) return 0;
    memcpy(blob, data, size);
    if (size >= 32) {
        uint32_t total = (uint32_t)blob[8] | (uint32_t)blob[9] << 8 | (uint32_t)blob[10] << 16 | (uint32_t)blob[11] << 24;
        if (total >= 32 && total <= size) {
            uint32_t crc = smpq_crc32(blob + 32, total - 32);
            for (int i = 0; i < 4; ++i) blob[12 + i] = (uint8_t)(crc >> (8 * i));
        }
    }
    smpq_model m;
    uint8_t *arena = (uint8_t *)arena_words;
    if (smpq_load(&m, blob, (uint32_t)size, arena, FUZZ_ARENA) == SMPQ_OK) {
        uint32_t n = 0;
        int8_t *in = smpq_input(&m, &n);
        for (uint32_t i = 0; i < n; ++i) in[i] = (int8_t)(i * 37u);
        if (smpq_invoke(&m) != SMPQ_OK) abort(); /* a loaded model must run */
    }
    free(blob);
    return 0;
}
