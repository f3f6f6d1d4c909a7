/* An example C guest: greets, prints its exit counts and its arguments, and,
 * like the reference guest, leaves 42 at 0x400 before it halts. The global,
 * the local and the write are there for the README's gdb session. */
#include "matrix_hc.h"

/* Characters greet() has printed: a global for gdb's `print printed`. */
static uint64_t printed;

static void print_counts(void) {
    HC_printStr("exit counts:\n");
    HC_printStr(HC_numExitsByType());
}

/* Prints `text` a character at a time; `count` is a local for gdb. */
__attribute__((noinline)) static uint64_t greet(const char *text) {
    uint64_t count = 0;
    for (const char *p = text; *p; ++p) {
        HC_print8bit(*p);
        count++;
    }
    printed += count;
    return count;
}

int main(void) {
    greet("Hello from C!\n");
    HC_printStr("args:");
    HC_print32bit((uint32_t)matrix_arg_count());
    for (uint64_t i = 0; i < matrix_arg_count(); i++) HC_print32bit((uint32_t)matrix_arg(i));
    HC_print32bit(HC_numExits());
    print_counts();
    *(volatile uint64_t *)0x400 = 42;
    return 0;
}

MATRIX_ENTRY(main)
