/* Several vCPUs from C, with the header alone. vCPU 0 wakes the others from
 * hlt with an IPI each; every vCPU adds its share to one counter with an
 * atomic add and says it is done; the last one to finish wakes vCPU 0 with
 * an IPI, and vCPU 0, asleep in hlt until then, prints the total. Run it
 * with vcpus = N (--vcpus smp=4); argument 0: adds per vCPU (default 1000). */
#include "matrix_hc.h"

#define WAKE_VECTOR 0x40

static volatile uint64_t total;
static volatile uint32_t done, go;

__attribute__((interrupt)) static void on_wake(struct mh_interrupt_frame *frame) { (void)frame; }

/* Sleeps in hlt until *flag reaches want. sti; hlt cannot lose the IPI in
 * between (sti takes effect after the next instruction); the check runs with
 * interrupts off. */
static void sleep_until(volatile uint32_t *flag, uint32_t want) {
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != want) __asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
}

int main(void) {
    uint32_t me = mh_vcpu_id(), count = mh_vcpu_count();
    uint64_t adds = matrix_arg(0) ? matrix_arg(0) : 1000;
    mh_idt_set(WAKE_VECTOR, on_wake); /* every vCPU loads the IDT itself */
    if (me == 0) {
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        for (uint32_t vcpu = 1; vcpu < count; vcpu++) HC_ipi(vcpu, WAKE_VECTOR);
    } else {
        sleep_until(&go, 1);
    }
    for (uint64_t i = 0; i < adds; i++) __atomic_fetch_add(&total, 1, __ATOMIC_RELAXED);
    uint32_t finished = __atomic_add_fetch(&done, 1, __ATOMIC_ACQ_REL);
    if (me != 0) {
        HC_printStr("done\n");
        if (finished == count) HC_ipi(0, WAKE_VECTOR);
        return 0;
    }
    sleep_until(&done, count);
    HC_printStr("total: ");
    HC_print32bit((uint32_t)total);
    return 0;
}

MATRIX_ENTRY(main)
