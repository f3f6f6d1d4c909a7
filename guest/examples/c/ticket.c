/* A ticket spinlock from C, with the header alone, two ways: its vCPUs take
 * a number and wait to be served, then do a short critical section and some
 * work outside it. Argument 0 picks how a waiter waits: 0 spins blindly
 * until served; 1 spins 8 times, then gives the rest of its slice to the
 * vCPU whose ticket is served (HC_yieldTo), as KVM's directed yield lets a
 * paravirtual spinlock do. Arguments 1 and 2: loop iterations inside and
 * outside the lock (default 10 and 30, about 20 and 60 us where each guest
 * instruction is emulated). Each vCPU counts its critical sections in its
 * lock record (HC_lockWatch), which the hypervisor reads without an exit:
 * the report's lock.sections. Run it with vcpus = 4 (--vcpus t=4). */
#include "matrix_hc.h"

static volatile uint32_t next_ticket, serving;
static volatile uint32_t holder_of[64];
static struct mh_lock_record records[64] __attribute__((aligned(4096)));

/* n iterations of dec; jnz. */
static void spin_work(uint64_t n) {
    if (n) __asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(n));
}

int main(void) {
    uint32_t me = mh_vcpu_id();
    uint64_t yielding = matrix_arg(0);
    uint64_t inside = matrix_arg_count() > 1 ? matrix_arg(1) : 10;
    uint64_t outside = matrix_arg_count() > 2 ? matrix_arg(2) : 30;
    struct mh_lock_record *mine = &records[me % 64];
    if (me == 0) {
        HC_printStr(yielding ? "ticket lock, yielding to the served vCPU\n" : "ticket lock, spinning blindly\n");
        HC_lockWatch(records);
    }
    for (;;) {
        mine->state = MH_LOCK_WAITS;
        uint32_t ticket = __atomic_fetch_add(&next_ticket, 1, __ATOMIC_RELAXED);
        holder_of[ticket % 64] = me;
        uint64_t spins = 0;
        for (;;) {
            uint32_t now = __atomic_load_n(&serving, __ATOMIC_ACQUIRE);
            if (now == ticket) break;
            spins++;
            if (yielding && spins % 8 == 0) {
                uint32_t holder = holder_of[now % 64];
                if (holder != me) HC_yieldTo(holder);
            }
            __asm__ volatile("pause");
        }
        mine->state = MH_LOCK_HOLDS;
        spin_work(inside);
        mine->state = MH_LOCK_NEITHER;
        __atomic_store_n(&serving, ticket + 1, __ATOMIC_RELEASE);
        spin_work(outside);
        mine->sections = mine->sections + 1;
        mine->spins = mine->spins + spins;
        mine->work = mine->work + inside + outside;
    }
}

MATRIX_ENTRY(main)
