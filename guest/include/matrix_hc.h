/*
 * matrix_hc.h: the matrix-tui guest ABI for C guests (see the README's
 * hypercall table). Every hypercall is one `in` or `out` on its port, so one VM
 * exit; HC_gvaToHva is two.
 *
 * A guest is a freestanding static executable linked at 0x10000 with
 * guest/link.ld. In exactly one file, write MATRIX_ENTRY(main) to get _start
 * (which aligns the stack, calls main and halts) and the memcpy/memset/memmove/
 * memcmp that gcc may emit calls to. See guest/examples/c/Makefile.
 */
#ifndef MATRIX_HC_H
#define MATRIX_HC_H

#include <stddef.h>
#include <stdint.h>

#define HC_PORT_PRINT8 0xE9
#define HC_PORT_PRINT32 0xEA
#define HC_PORT_NUM_EXITS 0xEB
#define HC_PORT_PRINT_STR 0xEC
#define HC_PORT_NUM_EXITS_BY_TYPE 0xED
#define HC_PORT_GVA_TO_HVA 0xEE
#define HC_PORT_YIELD 0xEF

/* Guest arguments: a u64 count at 0x500, then up to 31 u64 values. */
#define MATRIX_ARGS_ADDR 0x500
#define MATRIX_MAX_ARGS 31

static inline void matrix_outb(uint16_t port, uint8_t value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline void matrix_outl(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint32_t matrix_inl(uint16_t port) {
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

/* HC_print8bit: prints one byte. */
static inline void HC_print8bit(uint8_t value) { matrix_outb(HC_PORT_PRINT8, value); }

/* HC_print32bit: prints value in decimal and a newline. */
static inline void HC_print32bit(uint32_t value) { matrix_outl(HC_PORT_PRINT32, value); }

/* HC_numExits: exits this VM has made, this one included. */
static inline uint32_t HC_numExits(void) { return matrix_inl(HC_PORT_NUM_EXITS); }

/* HC_printStr: prints a NUL-terminated string (at most 4096 bytes read). */
static inline void HC_printStr(const char *text) {
    matrix_outl(HC_PORT_PRINT_STR, (uint32_t)(uintptr_t)text);
}

/* HC_numExitsByType: "IO in: X\nIO out: Y\n", valid for 32 more calls. */
static inline char *HC_numExitsByType(void) {
    return (char *)(uintptr_t)matrix_inl(HC_PORT_NUM_EXITS_BY_TYPE);
}

/* HC_gvaToHva: low 32 bits of the host address backing gva, or 0 if invalid. */
static inline uint32_t HC_gvaToHva(uint32_t gva) {
    matrix_outl(HC_PORT_GVA_TO_HVA, gva);
    return matrix_inl(HC_PORT_GVA_TO_HVA);
}

/* HC_yield: gives up the rest of this VM's time slice. */
static inline void HC_yield(void) { matrix_outb(HC_PORT_YIELD, 0); }

/* Stops the vCPU; the hypervisor ends the VM. */
static inline void hlt(void) { __asm__ volatile("hlt"); }

/* Number of guest arguments, and argument i (0 when not given). */
static inline uint64_t matrix_arg_count(void) {
    uint64_t count = *(volatile uint64_t *)MATRIX_ARGS_ADDR;
    return count > MATRIX_MAX_ARGS ? MATRIX_MAX_ARGS : count;
}

static inline uint64_t matrix_arg(uint64_t index) {
    if (index >= matrix_arg_count()) return 0;
    return ((volatile uint64_t *)(MATRIX_ARGS_ADDR + 8))[index];
}

/* _start and the memory functions a freestanding gcc build may need. */
#define MATRIX_ENTRY(main_function)                                          \
    __asm__(".section .text._start, \"ax\"\n"                               \
            ".global _start\n"                                              \
            "_start:\n"                                                     \
            "    and $-16, %rsp\n"                                          \
            "    call " #main_function "\n"                                 \
            "1:  hlt\n"                                                     \
            "    jmp 1b\n"                                                  \
            ".previous\n");                                                 \
    void *memcpy(void *dest, const void *src, size_t n) {                   \
        void *ret = dest;                                                   \
        __asm__ volatile("rep movsb" : "+D"(dest), "+S"(src), "+c"(n) : : "memory"); \
        return ret;                                                         \
    }                                                                       \
    void *memset(void *dest, int c, size_t n) {                             \
        void *ret = dest;                                                   \
        __asm__ volatile("rep stosb" : "+D"(dest), "+c"(n) : "a"(c) : "memory"); \
        return ret;                                                         \
    }                                                                       \
    void *memmove(void *dest, const void *src, size_t n) {                  \
        unsigned char *d = dest;                                            \
        const unsigned char *s = src;                                       \
        if (d <= s || d >= s + n) return memcpy(dest, src, n);              \
        while (n--) ((volatile unsigned char *)d)[n] = s[n];                \
        return dest;                                                        \
    }                                                                       \
    int memcmp(const void *a, const void *b, size_t n) {                    \
        const volatile unsigned char *x = a, *y = b;                        \
        for (size_t i = 0; i < n; i++)                                      \
            if (x[i] != y[i]) return x[i] - y[i];                           \
        return 0;                                                           \
    }

#endif /* MATRIX_HC_H */
