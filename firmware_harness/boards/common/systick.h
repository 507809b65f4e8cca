/* SysTick extended to 64 bits (see systick.c). */
#ifndef SMPQ_SYSTICK_H
#define SMPQ_SYSTICK_H

#include <stdint.h>

/* Start SysTick at the core clock with its wrap interrupt; `hook` (may be NULL) runs at every wrap. */
void systick_start(void (*hook)(void));

/* Core-clock ticks since systick_start. */
uint64_t systick_ticks(void);

#endif /* SMPQ_SYSTICK_H */
