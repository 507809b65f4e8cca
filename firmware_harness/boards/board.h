/* The board interface the firmware application (firmware_harness/app/) is written against.
 * One implementation per folder under firmware_harness/boards/; common/startup.c is shared. */
#ifndef SMPQ_BOARD_H
#define SMPQ_BOARD_H

#include <stdint.h>

/* Clocks, UART at 115200 8N1 (a loopback socket on QEMU), the tick counter. Called once by the reset handler. */
void board_init(void);

/* Blocking byte I/O on the host link. */
void board_putc(uint8_t c);
uint8_t board_getc(void);

/* Monotonic 64-bit tick count: instructions·2^N/40 on QEMU (-icount shift=N), CPU cycles on a real board. */
uint64_t board_ticks(void);

/* Low 32 bits of board_ticks(), cheap enough to call around every op (smpq_clock). */
uint32_t board_ticks32(void);

/* Board name as reported by `name%` (m-name-dut-[smpq-<name>]). */
extern const char board_name[];

/* The smpq-info fields describing the tick unit, e.g. "timer=instructions,ticks_per_instr=8/40". */
const char *board_timer_info(void);

#endif /* SMPQ_BOARD_H */
