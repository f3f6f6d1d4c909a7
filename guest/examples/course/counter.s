# The Matrix starter's counter: 16-bit real-mode code, loaded at 0x10000 and
# entered at CS:IP = 0x1000:0. It writes a climbing count to port 0x10
# forever; map the port to a hypercall (ports = { "0x10" = "print32bit" })
# or show it (show_ports = true) to see the count.
	.code16
	.text
	.globl	_start
_start:
	xor	%ax, %ax
1:	out	%ax, $0x10
	inc	%ax
	jmp	1b
