//! Several vCPUs: who this one is, interrupts to a sibling, and handing a
//! sibling the rest of the slice.
//!
//! Every vCPU of a VM starts at the entry point with a stack of its own
//! (16 KiB below the previous one's) and runs `main`; [`vcpu_id`] tells
//! them apart. A vCPU that waits for a sibling sleeps in `hlt`
//! ([`wait_for_ipi`]) and is not run until the sibling's [`ipi`] wakes it.
//!
//! ```ignore
//! smp::init();                      // on every vCPU: the IPI's gate, this vCPU's IDT
//! if smp::vcpu_id() == 0 { smp::ipi(1, smp::IPI_VECTOR); } else { smp::wait_for_ipi(); }
//! ```

use core::arch::naked_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Port of HC_vcpuId: `in eax, dx`; this vCPU's index (0 is the first).
pub const PORT_VCPU_ID: u16 = 0xF2;
/// Port of HC_vcpuCount: `in eax, dx`; the VM's vCPUs.
pub const PORT_VCPU_COUNT: u16 = 0xF3;
/// Port of HC_ipi: `out dx, eax`, the target vCPU in bits 0-15 and the vector in bits 16-23.
pub const PORT_IPI: u16 = 0xF4;
/// Port of HC_yieldTo: `out dx, eax`, the vCPU to give the rest of the slice to.
pub const PORT_YIELD_TO: u16 = 0xF5;
/// The vector [`init`] gives the SDK's IPI entry (it counts and returns).
pub const IPI_VECTOR: u8 = 0x40;

static IPIS: AtomicU64 = AtomicU64::new(0);

/// HC_vcpuId: this vCPU's index.
#[inline(always)]
pub fn vcpu_id() -> u32 {
    crate::io::inl(PORT_VCPU_ID)
}

/// HC_vcpuCount: how many vCPUs the VM has.
#[inline(always)]
pub fn vcpu_count() -> u32 {
    crate::io::inl(PORT_VCPU_COUNT)
}

/// HC_ipi: raises `vector` (32 to 255) on vCPU `vcpu` of this VM, waking it
/// if it sleeps in `hlt`. A vector raised again before it went in is folded
/// into it. A vCPU that does not exist or has halted, or a vector below 32,
/// raises nothing: the console says why and the VM's fault count goes up.
#[inline(always)]
pub fn ipi(vcpu: u32, vector: u8) {
    crate::io::outl(PORT_IPI, (vcpu & 0xffff) | u32::from(vector) << 16);
}

/// HC_yieldTo: gives the rest of this vCPU's slice to vCPU `vcpu` of this
/// VM if it can run (directed yield); else this vCPU runs on.
#[inline(always)]
pub fn yield_to(vcpu: u32) {
    crate::io::outl(PORT_YIELD_TO, vcpu);
}

/// Sets up interrupts on this vCPU (the timer's gate, as
/// [`crate::interrupts::init`]) and points [`IPI_VECTOR`] at an entry that
/// counts it ([`ipis`]). Call it on every vCPU before a sibling may send it an IPI.
pub fn init() {
    crate::interrupts::init();
    crate::interrupts::set_entry(IPI_VECTOR, ipi_stub);
}

/// IPIs taken on [`IPI_VECTOR`] by all of this VM's vCPUs so far.
pub fn ipis() -> u64 {
    IPIS.load(Ordering::Relaxed)
}

/// Waits in `hlt` with interrupts on until an interrupt comes (a sibling's
/// IPI or this vCPU's timer tick): `sti; hlt` cannot lose one in between.
pub fn wait_for_ipi() {
    crate::interrupts::wait_for_tick();
}

/// The IPI's entry: counts it (`lock inc` changes only the flags, which
/// `iretq` restores) and returns.
#[unsafe(naked)]
extern "C" fn ipi_stub() {
    naked_asm!("lock inc qword ptr [rip + {count}]", "iretq", count = sym IPIS)
}
