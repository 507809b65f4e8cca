/* Command assembly (see cmdline.h). */
#include "cmdline.h"

cmd_state cmdline_feed(cmdline *c, uint8_t byte) {
    if (byte == '\r' || byte == '\n') return CMD_PENDING;
    if (byte == '%') {
        const int too_long = c->discarding;
        c->text[c->len] = '\0';
        c->len = 0;
        c->discarding = 0;
        return too_long ? CMD_TOO_LONG : CMD_READY;
    }
    if (c->discarding) return CMD_PENDING;
    if (c->len == 0 && (byte <= ' ' || byte >= 0x7f)) return CMD_PENDING;
    if (c->len >= CMD_SIZE - 1u) { /* no room left for the '%' */
        c->discarding = 1;
        c->len = 0;
        return CMD_PENDING;
    }
    c->text[c->len++] = (char)byte;
    return CMD_PENDING;
}
