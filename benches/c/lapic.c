/*
 * The C side of `matrix-tui bench`'s injection latency: KVM's own in-kernel
 * LAPIC timer, periodic, interrupting a guest that waits in `hlt`, timed the
 * way matrix-tui's virtual timer is.
 *
 *   lapic PERIOD_US N   a long-mode guest (set up as matrix-tui sets up its
 *                       guests, with the LAPIC's page mapped) arms its LAPIC timer
 *                       (periodic, vector 0x20, PERIOD_US), says so with
 *                       `out 0x11`, then waits in `sti; hlt`; its handler's
 *                       first instruction is `out 0x10`. Tick k is due at the
 *                       arming exit's time + k * PERIOD; the latency is from
 *                       then to the handler's exit returning from KVM_RUN.
 *                       Prints "p50_us p99_us" over N ticks.
 *
 * Build (beside bench.h): gcc -O2 -o lapic lapic.c
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#include "bench.h"

#define MEMORY (2u << 20)
#define IDT 0x1000
#define PML4 0x2000
#define PDPT 0x3000
#define PD 0x4000
#define GDT 0x5000
#define PD_LAPIC 0x6000
#define CODE 0x10000
#define HANDLER 0x10100
#define LAPIC 0xfee00000u

/* `mov dword [rbx + offset], value`, rbx holding the LAPIC's base. */
static uint8_t *store(uint8_t *at, uint32_t offset, uint32_t value) {
    *at++ = 0xc7;
    *at++ = 0x83;
    memcpy(at, &offset, 4);
    memcpy(at + 4, &value, 4);
    return at + 8;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PERIOD_US COUNT\n", argv[0]);
        return 2;
    }
    uint64_t period_ns = strtoull(argv[1], NULL, 10) * 1000;
    size_t count = strtoul(argv[2], NULL, 10);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    uint8_t *memory = mmap(NULL, MEMORY, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEMORY, .userspace_addr = (uint64_t)memory};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    /* Identity-mapped 2 MiB pages: memory, and the LAPIC's page (uncached). */
    uint64_t *pml4 = (uint64_t *)(memory + PML4), *pdpt = (uint64_t *)(memory + PDPT);
    pml4[0] = PDPT | 3;
    pdpt[0] = PD | 3;
    pdpt[3] = PD_LAPIC | 3;
    ((uint64_t *)(memory + PD))[0] = 0x83;
    ((uint64_t *)(memory + PD_LAPIC))[(LAPIC - 0xc0000000u) >> 21] = LAPIC | 0x93;
    /* GDT: null, flat 64-bit code (0x8), flat data (0x10). */
    uint64_t gdt[3] = {0, 0x00af9b000000ffffull, 0x00cf93000000ffffull};
    memcpy(memory + GDT, gdt, sizeof gdt);
    /* IDT: a 64-bit interrupt gate for vector 0x20. */
    uint64_t gate[2] = {(HANDLER & 0xffff) | (0x8 << 16) | (0x8eull << 40) | ((uint64_t)(HANDLER >> 16) << 48), 0};
    memcpy(memory + IDT + 0x20 * 16, gate, sizeof gate);
    /* The guest: enable the LAPIC, periodic timer on 0x20 at period_ns
     * (divide by 1 of KVM's 1 GHz bus), say so, wait. */
    uint8_t *code = memory + CODE;
    *code++ = 0xbb; /* mov ebx, LAPIC */
    memcpy(code, &(uint32_t){LAPIC}, 4);
    code += 4;
    code = store(code, 0xf0, 0x1ff);
    code = store(code, 0x3e0, 0xb);
    code = store(code, 0x320, 0x20020);
    code = store(code, 0x380, (uint32_t)period_ns);
    const uint8_t wait[] = {0xe6, 0x11, 0xfb, 0xf4, 0xeb, 0xfd}; /* out 0x11; sti; hlt; jmp hlt */
    memcpy(code, wait, sizeof wait);
    /* The handler: out 0x10; EOI; iretq. */
    uint8_t *handler = memory + HANDLER;
    *handler++ = 0xe6;
    *handler++ = 0x10;
    handler = store(handler, 0xb0, 0);
    *handler++ = 0x48;
    *handler = 0xcf;

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct {
        struct kvm_cpuid2 header;
        struct kvm_cpuid_entry2 entries[256];
    } cpuid = {.header.nent = 256};
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment flat = {.base = 0, .limit = 0xffffffff, .present = 1, .s = 1, .g = 1};
    sregs.cs = flat;
    sregs.cs.selector = 0x8;
    sregs.cs.type = 0xb;
    sregs.cs.l = 1;
    flat.selector = 0x10;
    flat.db = 1;
    flat.type = 0x3;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = sizeof gdt - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 8 - 1;
    sregs.cr3 = PML4;
    sregs.cr4 = 0x620;
    sregs.efer = 0x500;
    sregs.cr0 = 0x80050033;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = CODE, .rsp = MEMORY, .rflags = 2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    uint64_t *samples = calloc(count, sizeof *samples);
    uint64_t armed = 0;
    size_t taken = 0, tick = 0;
    while (taken < count) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        uint64_t at = now_ns();
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
        if (run->io.port == 0x11) {
            armed = at;
        } else if (run->io.port == 0x10) {
            tick++;
            uint64_t due = armed + tick * period_ns;
            /* The first ticks settle the host; each later one is a sample. */
            if (tick > 2) samples[taken++] = at > due ? at - due : 0;
        }
    }
    qsort(samples, count, sizeof *samples, compare);
    printf("%.3f %.3f\n", rank(samples, count, 0.5) / 1e3, rank(samples, count, 0.99) / 1e3);
    return 0;
}
