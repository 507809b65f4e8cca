/* Firmware main loop: assemble commands from the serial link, run them, end every reply with m-ready. */
#include "../boards/board.h"
#include "cmdline.h"
#include "dut.h"
#include "io.h"

int main(void) {
    static cmdline line;
    dut_init();
    out_line("m-init-done");
    out_line("m-ready");
    for (;;) {
        const cmd_state st = cmdline_feed(&line, board_getc());
        if (st == CMD_PENDING) continue;
        if (st == CMD_TOO_LONG) {
            out_line("e-[command longer than 80 characters]");
        } else {
            dut_command(line.text);
        }
        out_line("m-ready");
    }
}
