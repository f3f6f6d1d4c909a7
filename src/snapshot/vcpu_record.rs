//! A vCPU's whole architectural state as snapshot files and migrations
//! carry it: what KVM's save ioctls return, in plain types a student can
//! read (registers by name) and the opaque parts (XSAVE area, pending
//! events) as hex. These types belong to the file format: a field renamed or
//! retyped here changes every file (the golden files' tests say so);
//! `crate::vm::vcpu_state` fills them from KVM and gives them back.

use serde::{Deserialize, Serialize};

/// Everything KVM needs to bring a vCPU back exactly where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// KVM_GET_MP_STATE (0: runnable, 3: halted).
    pub mp_state: u32,
    /// General registers (KVM_GET_REGS).
    pub regs: GeneralRegisters,
    /// Segments, descriptor tables, control registers (KVM_GET_SREGS).
    pub sregs: SpecialRegisters,
    /// x87, SSE and AVX state: KVM_GET_XSAVE's 4 KiB area in hex (MXCSR is
    /// only here: KVM_GET_FPU leaves it out on some hosts).
    pub xsave: String,
    /// Extended control registers (XCR0: which XSAVE features are on).
    pub xcrs: Vec<ExtendedControl>,
    /// Debug registers (KVM_GET_DEBUGREGS).
    pub debug: DebugRegisters,
    /// Model-specific registers that the host let us read (KVM_GET_MSRS).
    pub msrs: Vec<ModelSpecific>,
    /// Pending exceptions, interrupts and NMIs (KVM_GET_VCPU_EVENTS), in hex.
    pub events: String,
    /// The CPUID the guest saw (KVM_GET_CPUID2), set again on restore so
    /// that it sees the same CPU; empty in files saved before it was kept
    /// (those get this host's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid: Vec<CpuidLeaf>,
    /// Its TSC's frequency in kHz (KVM_GET_TSC_KHZ), where the host says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsc_khz: Option<u32>,
}

/// One CPUID leaf as KVM holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// rax..r15, rip, rflags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct GeneralRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// One segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    #[serde(rename = "type")]
    pub kind: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// What KVM_GET_SREGS returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// Interrupts queued for injection (one bit per vector).
    pub interrupt_bitmap: [u64; 4],
}

/// One XCR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ExtendedControl {
    pub xcr: u32,
    pub value: u64,
}

/// DR0-DR3, DR6, DR7.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DebugRegisters {
    pub db: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
    pub flags: u64,
}

/// One MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ModelSpecific {
    pub index: u32,
    pub value: u64,
}
