/* STM32H743ZI on a Nucleo-H743ZI2 (register addresses and bit fields from RM0433; no vendor headers):
 * 480 MHz from PLL1 fed by the ST-LINK's 8 MHz clock (HSE bypass), LDO supply at VOS0, caches on,
 * USART3 on PD8/PD9 (AF7) = the ST-LINK virtual COM port at 115200 8N1, DWT cycle counter extended to
 * 64 bits by a SysTick interrupt every 2^24 cycles. */
#include <stdint.h>

#include "../board.h"
#include "../common/systick.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

/* RCC (0x58024400) */
#define RCC_CR REG(0x58024400u)
#define RCC_CFGR REG(0x58024410u)
#define RCC_D1CFGR REG(0x58024418u)
#define RCC_D2CFGR REG(0x5802441Cu)
#define RCC_D3CFGR REG(0x58024420u)
#define RCC_PLLCKSELR REG(0x58024428u)
#define RCC_PLLCFGR REG(0x5802442Cu)
#define RCC_PLL1DIVR REG(0x58024430u)
#define RCC_AHB4ENR REG(0x580244E0u)
#define RCC_APB1LENR REG(0x580244E8u)
#define RCC_APB4ENR REG(0x580244F4u)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_HSEBYP (1u << 18)
#define RCC_CR_PLL1ON (1u << 24)
#define RCC_CR_PLL1RDY (1u << 25)

/* PWR (0x58024800), SYSCFG (0x58000400), FLASH (0x52002000) */
#define PWR_CR3 REG(0x5802480Cu)
#define PWR_CSR1 REG(0x58024804u)
#define PWR_D3CR REG(0x58024818u)
#define PWR_CR3_LDOEN (1u << 1)
#define PWR_CR3_SCUEN (1u << 2)
#define PWR_CR3_BYPASS (1u << 0)
#define PWR_CSR1_ACTVOSRDY (1u << 13)
#define PWR_D3CR_VOS_1 (3u << 14)
#define PWR_D3CR_VOSRDY (1u << 13)
#define SYSCFG_PWRCR REG(0x5800042Cu)
#define SYSCFG_PWRCR_ODEN 1u
#define FLASH_ACR REG(0x52002000u)

/* GPIOD (0x58020C00), USART3 (0x40004800) */
#define GPIOD_MODER REG(0x58020C00u)
#define GPIOD_OSPEEDR REG(0x58020C08u)
#define GPIOD_AFRH REG(0x58020C24u)
#define USART3_CR1 REG(0x40004800u)
#define USART3_CR3 REG(0x40004808u)
#define USART3_BRR REG(0x4000480Cu)
#define USART3_ISR REG(0x4000481Cu)
#define USART3_RDR REG(0x40004824u)
#define USART3_TDR REG(0x40004828u)
#define USART_ISR_RXNE (1u << 5)
#define USART_ISR_TXE (1u << 7)

/* Cortex-M7 core: DWT, caches */
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)
#define SCB_CCR REG(0xE000ED14u)
#define SCB_CCSIDR REG(0xE000ED80u)
#define SCB_CSSELR REG(0xE000ED84u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_DCISW REG(0xE000EF60u)

#define HSE_HZ 8000000u
#define SYSCLK_HZ 480000000u /* HSE / M1 (1) * N1 (120) / P1 (2) */
#define PCLK1_HZ 120000000u  /* SYSCLK / D1CPRE (1) / HPRE (2) / D2PPRE1 (2) */

const char board_name[] = "stm32h7";

static void barrier(void) { __asm__ volatile("dsb\n\tisb" ::: "memory"); }

static void wait_set(volatile uint32_t *reg, uint32_t mask) {
    while ((*reg & mask) != mask) {
    }
}

static void caches_on(void) {
    barrier();
    SCB_ICIALLU = 0u;
    barrier();
    SCB_CCR |= 1u << 17; /* IC */
    SCB_CSSELR = 0u;     /* level 1 data cache */
    barrier();
    const uint32_t ccsidr = SCB_CCSIDR;
    const uint32_t sets = (ccsidr >> 13) & 0x7FFFu, ways = (ccsidr >> 3) & 0x3FFu;
    for (uint32_t s = 0; s <= sets; ++s)
        for (uint32_t w = 0; w <= ways; ++w) SCB_DCISW = (s << 5) | (w << 30); /* 32-byte lines, 4 ways */
    barrier();
    SCB_CCR |= 1u << 16; /* DC */
    barrier();
}

/* RM0433 §6.8.4 and §8.5: LDO supply, VOS1, then VOS0 (overdrive) before the core runs above 400 MHz. */
static void clocks_480mhz(void) {
    PWR_CR3 = (PWR_CR3 & ~(PWR_CR3_BYPASS | PWR_CR3_SCUEN)) | PWR_CR3_LDOEN;
    wait_set(&PWR_CSR1, PWR_CSR1_ACTVOSRDY);
    PWR_D3CR = (PWR_D3CR & ~(3u << 14)) | PWR_D3CR_VOS_1;
    wait_set(&PWR_D3CR, PWR_D3CR_VOSRDY);
    RCC_APB4ENR |= 1u << 1; /* SYSCFGEN */
    (void)RCC_APB4ENR;
    SYSCFG_PWRCR |= SYSCFG_PWRCR_ODEN; /* VOS0 */
    wait_set(&PWR_D3CR, PWR_D3CR_VOSRDY);

    FLASH_ACR = (2u << 4) | 4u; /* WRHIGHFREQ 2, 4 wait states: AXI clock 240 MHz at VOS0 */
    while ((FLASH_ACR & 0xFu) != 4u) {
    }

    RCC_CR |= RCC_CR_HSEBYP | RCC_CR_HSEON; /* the ST-LINK's MCO drives OSC_IN */
    wait_set(&RCC_CR, RCC_CR_HSERDY);
    RCC_PLLCKSELR = (1u << 4) | 2u;                               /* DIVM1 = 1, PLLSRC = HSE */
    RCC_PLLCFGR = (1u << 16) | (1u << 17) | (1u << 18) | (3u << 2); /* DIVP1/Q1/R1 on, 8-16 MHz input, wide VCO */
    RCC_PLL1DIVR = (119u << 0) | (1u << 9) | (3u << 16) | (1u << 24); /* N 120 (VCO 960 MHz), P 2, Q 4, R 2 */
    RCC_CR |= RCC_CR_PLL1ON;
    wait_set(&RCC_CR, RCC_CR_PLL1RDY);

    RCC_D1CFGR = (0u << 8) | (4u << 4) | 8u; /* D1CPRE /1, D1PPRE /2, HPRE /2: AXI/AHB 240 MHz, APB3 120 MHz */
    RCC_D2CFGR = (4u << 8) | (4u << 4);      /* APB1, APB2 120 MHz */
    RCC_D3CFGR = 4u << 4;                    /* APB4 120 MHz */
    RCC_CFGR = (RCC_CFGR & ~7u) | 3u;        /* SYSCLK = PLL1 P */
    while (((RCC_CFGR >> 3) & 7u) != 3u) {
    }
}

static void usart3_on(void) {
    RCC_AHB4ENR |= 1u << 3;   /* GPIODEN */
    RCC_APB1LENR |= 1u << 18; /* USART3EN */
    (void)RCC_APB1LENR;
    GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u; /* PD8, PD9: AF7 */
    GPIOD_OSPEEDR |= 0xFu << 16;
    GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16); /* alternate function */
    USART3_BRR = (PCLK1_HZ + 115200u / 2u) / 115200u;            /* kernel clock: PCLK1 (reset default) */
    USART3_CR3 = 1u << 12;                                       /* OVRDIS: an overrun never blocks reception */
    USART3_CR1 = (1u << 3) | (1u << 2) | 1u;                     /* TE, RE, UE */
}

static volatile uint32_t cyc_hi, cyc_last;

/* Fold the 32-bit DWT counter into cyc_hi:cyc_last; runs at least every 2^24 cycles (SysTick). */
static void cycles_extend(void) {
    const uint32_t now = DWT_CYCCNT;
    if (now < cyc_last) cyc_hi = cyc_hi + 1u;
    cyc_last = now;
}

void board_init(void) {
    caches_on();
    clocks_480mhz();
    usart3_on();
    DEMCR |= 1u << 24; /* TRCENA */
    DWT_LAR = 0xC5ACCE55u;
    DWT_CYCCNT = 0u;
    DWT_CTRL |= 1u; /* CYCCNTENA */
    systick_start(cycles_extend);
}

void board_putc(uint8_t c) {
    while (!(USART3_ISR & USART_ISR_TXE)) {
    }
    USART3_TDR = c;
}

uint8_t board_getc(void) {
    while (!(USART3_ISR & USART_ISR_RXNE)) {
    }
    return (uint8_t)USART3_RDR;
}

uint64_t board_ticks(void) {
    uint32_t primask;
    __asm__ volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    cycles_extend();
    const uint64_t t = (uint64_t)cyc_hi << 32 | cyc_last;
    __asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
    return t;
}

uint32_t board_ticks32(void) { return DWT_CYCCNT; }

const char *board_timer_info(void) { return "timer=cycles,timer_hz=480000000"; }
