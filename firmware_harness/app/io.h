/* Reply formatting on the board's serial link, without printf (newlib-nano prints neither 64-bit
 * integers nor floats by default). */
#ifndef SMPQ_APP_IO_H
#define SMPQ_APP_IO_H

#include <stdint.h>

/* Decimal digits of `v` into `buf` (room for 21 chars), NUL-terminated; returns their count. */
uint32_t fmt_u64(char *buf, uint64_t v);

void out_str(const char *s);
void out_u64(uint64_t v);
void out_i32(int32_t v);
void out_hex(const uint8_t *bytes, uint32_t n); /* two lower-case digits per byte */
void out_hex32(uint32_t v);                     /* eight digits */
void out_fixed3(float v);                       /* "%0.3f": three decimals, rounded half away from zero */
void out_eol(void);                             /* "\r\n" */

/* `s` followed by "\r\n". */
void out_line(const char *s);

#endif /* SMPQ_APP_IO_H */
