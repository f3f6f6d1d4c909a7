/* An example C guest: greets, prints its exit counts and its arguments, halts. */
#include "matrix_hc.h"

static void print_counts(void) {
    HC_printStr("exit counts:\n");
    HC_printStr(HC_numExitsByType());
}

int main(void) {
    for (const char *p = "Hello from C!\n"; *p; ++p) HC_print8bit(*p);
    HC_printStr("args:");
    HC_print32bit((uint32_t)matrix_arg_count());
    for (uint64_t i = 0; i < matrix_arg_count(); i++) HC_print32bit((uint32_t)matrix_arg(i));
    HC_print32bit(HC_numExits());
    print_counts();
    return 0;
}

MATRIX_ENTRY(main)
