/* Several vCPUs from C, with the header alone: every vCPU adds its share to
 * one counter with an atomic add and says it is done; the last one to finish
 * wakes vCPU 0 with an IPI, and vCPU 0, asleep in hlt until then, prints the
 * total. Run it with vcpus = N (--vcpus smp=4); argument 0: adds per vCPU
 * (default 1000). */
#include "matrix_hc.h"

#define WAKE_VECTOR 0x40

static volatile uint64_t total;
static volatile uint32_t done;

__attribute__((interrupt)) static void on_wake(struct mh_interrupt_frame *frame) { (void)frame; }

int main(void) {
    uint32_t me = mh_vcpu_id(), count = mh_vcpu_count();
    uint64_t adds = matrix_arg(0) ? matrix_arg(0) : 1000;
    mh_idt_set(WAKE_VECTOR, on_wake); /* every vCPU loads the IDT itself */
    for (uint64_t i = 0; i < adds; i++) __atomic_fetch_add(&total, 1, __ATOMIC_RELAXED);
    uint32_t finished = __atomic_add_fetch(&done, 1, __ATOMIC_ACQ_REL);
    if (me != 0) {
        HC_printStr("done\n");
        if (finished == count) HC_ipi(0, WAKE_VECTOR);
        return 0;
    }
    /* sti; hlt cannot lose the IPI in between; the check runs with interrupts off. */
    while (__atomic_load_n(&done, __ATOMIC_ACQUIRE) != count) __asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
    HC_printStr("total: ");
    HC_print32bit((uint32_t)total);
    return 0;
}

MATRIX_ENTRY(main)
