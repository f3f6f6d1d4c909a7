/*
 * matrix_hc.h: the matrix-tui guest ABI for C guests (see the README's
 * hypercall table). Every hypercall is one `in` or `out` on its port, so one VM
 * exit; HC_gvaToHva is two.
 *
 * A guest is a freestanding static executable linked at 0x10000 with
 * guest/link.ld. In exactly one file, write MATRIX_ENTRY(main) to get _start
 * (which aligns the stack, calls main and halts) and the memcpy/memset/memmove/
 * memcmp that gcc may emit calls to. See guest/examples/c/Makefile.
 *
 * Interrupts: the hypervisor injects MATRIX_TIMER_VECTOR every period once
 * the guest starts its virtual timer (HC_timerStart) and turns interrupts on.
 * Handlers are GCC interrupt functions (compile with -mgeneral-regs-only):
 *     __attribute__((interrupt)) void tick(struct mh_interrupt_frame *f) { ... }
 *     mh_idt_set(MATRIX_TIMER_VECTOR, tick); HC_timerStart(10000); mh_interrupts_on();
 * mh_sleep_us(us) waits in hlt for one tick: the VM is not run meanwhile.
 *
 * Several vCPUs (vcpus = N): every vCPU runs main on a stack of its own;
 * mh_vcpu_id(), mh_vcpu_count(), HC_ipi(vcpu, vector) and HC_yieldTo(vcpu)
 * are below, and guest/examples/c/smp.c uses them. Each vCPU loads the IDT
 * itself (mh_idt_set does) before a sibling may interrupt it.
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
#define HC_PORT_TIMER_START 0xF0
#define HC_PORT_TIMER_STOP 0xF1
#define HC_PORT_VCPU_ID 0xF2
#define HC_PORT_VCPU_COUNT 0xF3
#define HC_PORT_IPI 0xF4
#define HC_PORT_YIELD_TO 0xF5
#define HC_PORT_LOCK_WATCH 0xF6

/* The vector the virtual timer interrupts on. */
#define MATRIX_TIMER_VECTOR 0x20

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

/* HC_timerStart: vector MATRIX_TIMER_VECTOR every period_us of host time
 * (at least 1000: shorter periods are raised to it). */
static inline void HC_timerStart(uint32_t period_us) { matrix_outl(HC_PORT_TIMER_START, period_us); }

/* HC_timerStop: no more ticks. */
static inline void HC_timerStop(void) { matrix_outb(HC_PORT_TIMER_STOP, 0); }

/* Several vCPUs: each starts at _start with a stack of its own (16 KiB below
 * the previous one's) and runs main. mh_vcpu_id tells them apart (so does
 * CPUID: leaf 1's EBX bits 31-24 hold the same index, its initial APIC id). */
static inline uint32_t mh_vcpu_id(void) { return matrix_inl(HC_PORT_VCPU_ID); }
static inline uint32_t mh_vcpu_count(void) { return matrix_inl(HC_PORT_VCPU_COUNT); }

/* HC_ipi: raises vector (32 to 255) on vCPU vcpu of this VM, waking it if it
 * waits in hlt; refused with a console note for a vCPU that does not exist
 * or has halted, or a vector below 32. */
static inline void HC_ipi(uint32_t vcpu, uint8_t vector) {
    matrix_outl(HC_PORT_IPI, (vcpu & 0xffff) | ((uint32_t)vector << 16));
}

/* HC_yieldTo: the rest of this vCPU's slice to vCPU vcpu, if it can run. */
static inline void HC_yieldTo(uint32_t vcpu) { matrix_outl(HC_PORT_YIELD_TO, vcpu); }

/* Lock records (HC_lockWatch): one per vCPU, in one 4 KiB page, which the
 * hypervisor reads without an exit when a vCPU's quantum ends (holding a
 * lock or waiting for one: counted and traced) and when it shows the VM.
 * Each vCPU writes only its own record. */
#define MH_LOCK_NEITHER 0
#define MH_LOCK_HOLDS 1
#define MH_LOCK_WAITS 2
struct mh_lock_record {
    volatile uint32_t state;     /* MH_LOCK_* */
    uint32_t reserved;           /* zero */
    volatile uint64_t sections;  /* critical sections done */
    volatile uint64_t spins;     /* loop iterations spent spinning for a lock */
    volatile uint64_t work;      /* loop iterations spent on anything else */
} __attribute__((aligned(32)));

/* HC_lockWatch: names the table (a record per vCPU, 32-byte aligned, within
 * one page; 0 stops); a table that is not is refused with a console note. */
static inline void HC_lockWatch(struct mh_lock_record *records) {
    matrix_outl(HC_PORT_LOCK_WATCH, (uint32_t)(uintptr_t)records);
}

/* What the CPU pushes for an interrupt, as GCC's interrupt functions take it. */
struct mh_interrupt_frame {
    uint64_t rip, cs, rflags, rsp, ss;
};

/* A handler: __attribute__((interrupt)) void f(struct mh_interrupt_frame *). */
typedef void (*mh_handler)(struct mh_interrupt_frame *);

/* One 64-bit interrupt gate. The table is defined by MATRIX_ENTRY. */
struct mh_gate {
    uint16_t offset_low, selector;
    uint8_t ist, type_attributes;
    uint16_t offset_middle;
    uint32_t offset_high, reserved;
} __attribute__((packed));
extern struct mh_gate mh_idt[256];

/* The handler mh_sleep_us installs when the guest set none (does nothing). */
__attribute__((interrupt)) void mh_default_tick(struct mh_interrupt_frame *frame);

/* Points vector at handler (code selector 0x8, interrupts off inside it) and
 * loads the IDT. Other vectors stay empty: an exception ends the VM. */
static inline void mh_idt_set(uint8_t vector, mh_handler handler) {
    uint64_t at = (uint64_t)(uintptr_t)handler;
    struct mh_gate gate = {(uint16_t)at, 0x8, 0, 0x8e, (uint16_t)(at >> 16), (uint32_t)(at >> 32), 0};
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) pointer = {sizeof(struct mh_gate) * 256 - 1, (uint64_t)(uintptr_t)mh_idt};
    mh_idt[vector] = gate;
    __asm__ volatile("lidt %0" : : "m"(pointer) : "memory");
}

/* sti / cli. */
static inline void mh_interrupts_on(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void mh_interrupts_off(void) { __asm__ volatile("cli" : : : "memory"); }

/* Sleeps us microseconds of host time: starts the timer, waits for one tick
 * with `sti; hlt` (the pair cannot miss it), stops the timer. */
static inline void mh_sleep_us(uint32_t us) {
    if (!(mh_idt[MATRIX_TIMER_VECTOR].type_attributes & 0x80)) mh_idt_set(MATRIX_TIMER_VECTOR, mh_default_tick);
    HC_timerStart(us);
    __asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
    HC_timerStop();
}

/* Stops the vCPU; the hypervisor ends the VM (with interrupts off). */
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
    struct mh_gate mh_idt[256] __attribute__((aligned(16)));                \
    __attribute__((interrupt)) void mh_default_tick(struct mh_interrupt_frame *frame) { (void)frame; } \
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
