/* SysTick as a 64-bit tick counter: the 24-bit down-counter runs at the core clock and each wrap is
 * counted by SysTick_Handler. Used by the QEMU board (instruction counts under -icount) and for the
 * periodic interrupt that extends the STM32's DWT counter. */
#include "systick.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)
#define ICSR_PENDSTSET (1u << 26)
#define SYST_ENABLE_TICKINT_CORECLK 7u
#define SYST_SPAN (1u << 24)

static volatile uint32_t wraps;
static void (*volatile on_wrap)(void);

void SysTick_Handler(void) {
    wraps = wraps + 1u;
    if (on_wrap) on_wrap();
}

void systick_start(void (*hook)(void)) {
    on_wrap = hook;
    SYST_RVR = SYST_SPAN - 1u;
    SYST_CVR = 0u;
    SYST_CSR = SYST_ENABLE_TICKINT_CORECLK;
}

uint64_t systick_ticks(void) {
    uint32_t primask;
    __asm__ volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    uint32_t hi = wraps, cvr = SYST_CVR;
    if (SCB_ICSR & ICSR_PENDSTSET) { /* wrapped, handler not run yet: count the wrap here */
        cvr = SYST_CVR;
        hi += 1u;
    }
    __asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
    return (uint64_t)hi * SYST_SPAN + (SYST_SPAN - 1u - cvr);
}
