/*
 * The C baseline for `matrix-tui bench`: the least a KVM program can do, timed
 * the same way matrix-tui's figures are.
 *
 *   baseline exit N     a guest doing `out 0xe9, al` in a loop, in 64-bit long
 *                       mode set up as matrix-tui sets up its guests (identity
 *                       2 MiB pages, flat 64-bit segments): the time from one
 *                       KVM_RUN return to the next, N exits; prints
 *                       "p50_ns p99_ns"
 *   baseline preempt N  the same guest spinning in `jmp $`, preempted N times by a
 *                       POSIX timer (SIGEV_THREAD_ID + immediate_exit) 1 ms
 *                       after each entry; prints "p50_us p99_us max_us" of the
 *                       time from the deadline to KVM_RUN's return
 *
 * Build (beside bench.h): gcc -O2 -o baseline baseline.c -lrt
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include "bench.h"
#include <unistd.h>

static volatile struct kvm_run *run;

static void on_kick(int signal) {
    (void)signal;
    run->immediate_exit = 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s exit|preempt COUNT\n", argv[0]);
        return 2;
    }
    int preempt = strcmp(argv[1], "preempt") == 0;
    size_t count = strtoul(argv[2], NULL, 10);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    size_t memory_size = 2 << 20;
    uint8_t *memory = mmap(NULL, memory_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) die("mmap");
    /* Page tables as matrix-tui writes them: PML4 0x2000 -> PDPT 0x3000 ->
     * PD 0x4000, one 2 MiB identity page. */
    uint64_t *pml4 = (uint64_t *)(memory + 0x2000), *pdpt = (uint64_t *)(memory + 0x3000),
             *pd = (uint64_t *)(memory + 0x4000);
    pml4[0] = 0x3000 | 3;
    pdpt[0] = 0x4000 | 3;
    pd[0] = 0x83;
    /* exit: mov al, 'x'; 1: out 0xe9, al; jmp 1b.   preempt: 1: jmp 1b */
    static const uint8_t out_loop[] = {0xb0, 'x', 0xe6, 0xe9, 0xeb, 0xfc};
    static const uint8_t spin[] = {0xeb, 0xfe};
    if (preempt) memcpy(memory + 0x10000, spin, sizeof spin);
    else memcpy(memory + 0x10000, out_loop, sizeof out_loop);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = memory_size, .userspace_addr = (uint64_t)memory};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x8, .type = 11, .present = 1,
                               .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
    struct kvm_segment data = {.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1,
                               .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.cr3 = 0x2000;
    sregs.cr4 = 0x620;
    sregs.cr0 = 0x80050033;
    sregs.efer = 0x500;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = 0x10000, .rsp = memory_size, .rflags = 2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    uint64_t *samples = calloc(count, sizeof *samples);
    if (!samples) die("calloc");
    if (!preempt) {
        for (int i = 0; i < 100; i++) ioctl(vcpu, KVM_RUN, 0); /* warm up */
        uint64_t previous = now_ns();
        for (size_t i = 0; i < count; i++) {
            if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_IO) {
                fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
                return 1;
            }
            uint64_t t = now_ns();
            samples[i] = t - previous;
            previous = t;
        }
        qsort(samples, count, sizeof *samples, compare);
        printf("%llu %llu\n", (unsigned long long)rank(samples, count, 0.5), (unsigned long long)rank(samples, count, 0.99));
        return 0;
    }

    struct sigaction action = {0};
    action.sa_handler = on_kick;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGRTMIN, &action, NULL) < 0) die("sigaction");
    struct sigevent event = {0};
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = SIGRTMIN;
    event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &event, &timer) < 0) die("timer_create");
    for (size_t i = 0; i < count; i++) {
        uint64_t deadline = now_ns() + 1000000;
        struct itimerspec spec = {0};
        spec.it_value.tv_sec = (time_t)(deadline / 1000000000ull);
        spec.it_value.tv_nsec = (long)(deadline % 1000000000ull);
        run->immediate_exit = 0;
        if (timer_settime(timer, TIMER_ABSTIME, &spec, NULL) < 0) die("timer_settime");
        while (ioctl(vcpu, KVM_RUN, 0) == 0) {
        }
        if (errno != EINTR) die("KVM_RUN");
        uint64_t t = now_ns();
        samples[i] = t > deadline ? t - deadline : 0;
    }
    qsort(samples, count, sizeof *samples, compare);
    printf("%.3f %.3f %.3f\n", rank(samples, count, 0.5) / 1e3, rank(samples, count, 0.99) / 1e3, samples[count - 1] / 1e3);
    return 0;
}
