/*
 * A course starter's guest, written for matrix-tui: one C file built for
 * 16-, 32- and 64-bit code (see the Makefile), linked at 0 as a flat binary.
 * It prints "Hello, world!" byte by byte on port 0xE9, writes 42 at 0x400
 * and halts with 42 in eax, as the hypercall part of the course checks.
 */
#include <stdint.h>

static void outb(uint16_t port, uint8_t value)
{
	asm volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

/* Placed first by flat.ld, so the image is entered at its first byte. */
void __attribute__((noreturn, section(".start"))) _start(void)
{
	const char *p;

	for (p = "Hello, world!\n"; *p; ++p)
		outb(0xE9, *p);
	*(volatile uint32_t *)0x400 = 42;
	for (;;)
		asm volatile("hlt" : : "a"(42) : "memory");
}
