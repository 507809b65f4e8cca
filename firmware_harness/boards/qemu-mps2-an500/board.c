/* QEMU mps2-an500 (Cortex-M7): CMSDK APB UART0 at 0x40004000, a free-running CMSDK timer, SysTick as
 * the tick counter. Under -icount shift=N SysTick counts instructions·2^N/40; board_init measures the
 * ratio on a loop of known length, so smpq-info can report it. */
#include <stdint.h>

#include "../board.h"
#include "../common/systick.h"

#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t *)(UART0_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(UART0_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(UART0_BASE + 0x08u))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART0_BASE + 0x10u))
#define UART_STATE_TX_FULL 1u
#define UART_STATE_RX_FULL 2u
#define UART_CTRL_TX_RX_EN 3u

#define TIMER0_BASE 0x40000000u
#define TIMER_CTRL (*(volatile uint32_t *)(TIMER0_BASE + 0x00u))
#define TIMER_VALUE (*(volatile uint32_t *)(TIMER0_BASE + 0x04u))
#define TIMER_RELOAD (*(volatile uint32_t *)(TIMER0_BASE + 0x08u))

#define SYSCLK_HZ 25000000u
#define CAL_LOOPS 50000u /* 2 instructions each */

const char board_name[] = "qemu-mps2-an500";
static char timer_info[64];

static void put_dec(char **p, uint32_t v) {
    char t[10];
    int n = 0;
    do t[n++] = (char)('0' + v % 10u); while ((v /= 10u) != 0u);
    while (n) *(*p)++ = t[--n];
}

static void put_str(char **p, const char *s) {
    while (*s) *(*p)++ = *s++;
}

/* Ticks per instruction is 2^N/40 under -icount shift=N; anything else means QEMU runs without -icount. */
static void calibrate(void) {
    const uint64_t t0 = systick_ticks();
    uint32_t n = CAL_LOOPS;
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n)::"cc");
    const uint64_t ticks = systick_ticks() - t0;
    const uint64_t scaled = ticks * 40u * 1024u / (2u * CAL_LOOPS); /* 2^N · 1024 */
    char *p = timer_info;
    for (uint32_t shift = 0; shift <= 10u; ++shift) {
        const uint64_t want = (uint64_t)1024u << shift, tol = want / 32u;
        if (scaled + tol >= want && scaled <= want + tol) {
            put_str(&p, "timer=instructions,ticks_per_instr=");
            put_dec(&p, 1u << shift);
            put_str(&p, "/40,icount_shift=");
            put_dec(&p, shift);
            *p = 0;
            return;
        }
    }
    put_str(&p, "timer=ticks,timer_hz=");
    put_dec(&p, SYSCLK_HZ);
    *p = 0;
}

void board_init(void) {
    UART_BAUDDIV = SYSCLK_HZ / 115200u;
    UART_CTRL = UART_CTRL_TX_RX_EN;
    TIMER_RELOAD = 0xFFFFFFFFu; /* free-running: keeps QEMU's virtual clock moving while the CPU polls */
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 1u;
    systick_start(0);
    calibrate();
}

void board_putc(uint8_t c) {
    while (UART_STATE & UART_STATE_TX_FULL) {
    }
    UART_DATA = c;
}

uint8_t board_getc(void) {
    while (!(UART_STATE & UART_STATE_RX_FULL)) {
    }
    return (uint8_t)UART_DATA;
}

uint64_t board_ticks(void) { return systick_ticks(); }

uint32_t board_ticks32(void) { return (uint32_t)systick_ticks(); }

const char *board_timer_info(void) { return timer_info; }
