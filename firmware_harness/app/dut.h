/* The device under test: MLPerf Tiny commands and the smpq- extensions (docs/protocol.md) on the model
 * linked in from model_data.c. */
#ifndef SMPQ_APP_DUT_H
#define SMPQ_APP_DUT_H

/* Bind the linked-in blob to the static arena (a load error is reported by every model command). */
void dut_init(void);

/* Run one command (text without its '%'); prints its reply lines, not the final m-ready. */
void dut_command(char *text);

#endif /* SMPQ_APP_DUT_H */
