/* Assembles MLPerf Tiny commands from serial bytes: a command ends with '%' and is at most
 * CMD_SIZE characters including the '%'; CR/LF are dropped anywhere, and bytes up to a command's first
 * printable character are skipped. A longer line is discarded up to its '%' and reported once. */
#ifndef SMPQ_APP_CMDLINE_H
#define SMPQ_APP_CMDLINE_H

#include <stdint.h>

#define CMD_SIZE 80 /* EE_CMD_SIZE of the EEMBC / MLCommons firmware */

typedef enum { CMD_PENDING, CMD_READY, CMD_TOO_LONG } cmd_state;

typedef struct {
    char text[CMD_SIZE]; /* the command without its '%', NUL-terminated when CMD_READY */
    uint32_t len;
    int discarding;
} cmdline;

/* Feed one received byte. CMD_READY: `text` holds a command; CMD_TOO_LONG: a line over CMD_SIZE ended. */
cmd_state cmdline_feed(cmdline *c, uint8_t byte);

#endif /* SMPQ_APP_CMDLINE_H */
