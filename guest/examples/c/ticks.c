/* The virtual timer from C: a handler counts ticks every 10 ms while main
 * waits in hlt, then main sleeps 100 ms three times with mh_sleep_us and
 * halts. Compiled with -mgeneral-regs-only, as GCC's interrupt functions need. */
#include "matrix_hc.h"

static volatile uint32_t ticks;

__attribute__((interrupt)) static void on_tick(struct mh_interrupt_frame *frame) {
    (void)frame;
    ticks++;
}

int main(void) {
    mh_idt_set(MATRIX_TIMER_VECTOR, on_tick);
    HC_timerStart(10000);
    mh_interrupts_on();
    while (ticks < 5) __asm__ volatile("hlt");
    mh_interrupts_off();
    HC_timerStop();
    HC_printStr("ticks: ");
    HC_print32bit(ticks);
    for (int i = 0; i < 3; i++) {
        mh_sleep_us(100000);
        HC_printStr("slept 100 ms\n");
    }
    return 0;
}

MATRIX_ENTRY(main)
