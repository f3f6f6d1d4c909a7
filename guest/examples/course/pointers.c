/*
 * HC_printStr in every mode: the pointer is an address as this code sees it
 * (DS:offset in real mode, linear in protected mode, translated by the page
 * tables in paged32 and long mode). Prints one string, then hands the
 * hypervisor a pointer it must refuse, and halts with 42 in eax.
 */
#include <stdint.h>

static void print_str(const char *text)
{
	asm volatile("outl %0, %1" : : "a"((uint32_t)(uintptr_t)text), "Nd"((uint16_t)0xEC) : "memory");
}

void __attribute__((noreturn, section(".start"))) _start(void)
{
	print_str("printed through a pointer\n");
	/* Past 2 MiB of memory, and not a 16-bit offset: refused in every mode. */
	print_str((const char *)0x80000000u);
	for (;;)
		asm volatile("hlt" : : "a"(42) : "memory");
}
