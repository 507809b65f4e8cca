/* Cortex-M7 startup shared by the boards: vector table, reset handler (FPU on, .data copied, .bss
 * zeroed), default exception handlers. The linker script of each board provides the symbols below. */
#include <stdint.h>

#include "../board.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern int main(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)

void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

typedef void (*vector)(void);

/* Core exceptions only: the firmware polls its peripherals and enables no device interrupt. */
__attribute__((section(".vectors"), used)) const vector vector_table[16] = {
    (vector)(uintptr_t)&__stack_top__,
    Reset_Handler,
    Default_Handler, /* NMI */
    HardFault_Handler,
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
};

void Reset_Handler(void) {
    SCB_CPACR |= 0xFu << 20; /* CP10/CP11 full access: the application prints floats */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    SCB_VTOR = (uint32_t)(uintptr_t)vector_table;
    uint32_t *src = &__data_load__, *dst = &__data_start__;
    while (dst < &__data_end__) *dst++ = *src++;
    for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
    board_init();
    main();
    for (;;) {
    }
}

void Default_Handler(void) {
    for (;;) {
    }
}
