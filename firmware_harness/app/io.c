/* Reply formatting (see io.h). */
#include "io.h"

#include "../boards/board.h"

void out_str(const char *s) {
    while (*s) board_putc((uint8_t)*s++);
}

uint32_t fmt_u64(char *buf, uint64_t v) {
    char t[20];
    uint32_t n = 0, len = 0;
    do t[n++] = (char)('0' + (int)(v % 10u)); while ((v /= 10u) != 0u);
    while (n) buf[len++] = t[--n];
    buf[len] = '\0';
    return len;
}

void out_u64(uint64_t v) {
    char t[21];
    fmt_u64(t, v);
    out_str(t);
}

void out_i32(int32_t v) {
    if (v < 0) {
        board_putc('-');
        out_u64((uint64_t)(-(int64_t)v));
    } else {
        out_u64((uint64_t)v);
    }
}

static const char HEX[] = "0123456789abcdef";

void out_hex(const uint8_t *bytes, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
        board_putc((uint8_t)HEX[bytes[i] >> 4]);
        board_putc((uint8_t)HEX[bytes[i] & 15u]);
    }
}

void out_hex32(uint32_t v) {
    for (int s = 28; s >= 0; s -= 4) board_putc((uint8_t)HEX[(v >> s) & 15u]);
}

void out_fixed3(float v) {
    const int neg = v < 0.0f;
    const uint64_t k = (uint64_t)((neg ? -v : v) * 1000.0f + 0.5f);
    if (neg && k) board_putc('-');
    out_u64(k / 1000u);
    board_putc('.');
    const uint32_t frac = (uint32_t)(k % 1000u);
    board_putc((uint8_t)('0' + frac / 100u));
    board_putc((uint8_t)('0' + frac / 10u % 10u));
    board_putc((uint8_t)('0' + frac % 10u));
}

void out_eol(void) { out_str("\r\n"); }

void out_line(const char *s) {
    out_str(s);
    out_eol();
}
