//! Saving and restoring a vCPU's whole architectural state through KVM's
//! ioctls, into and out of the snapshot format's record of it
//! ([`crate::snapshot::vcpu_record`]).
//!
//! The order of the ioctls follows the KVM API: KVM_GET_MP_STATE first (it
//! may complete pending APIC events and change the rest), KVM_SET_VCPU_EVENTS
//! last (it may queue an exception that the registers set before it must
//! already describe). A port-I/O exit in progress must be completed before
//! saving ([`super::Vcpu::complete_pending_exit`]).

pub use crate::snapshot::vcpu_record::{
    CpuidLeaf, DebugRegisters, DescriptorTable, ExtendedControl, GeneralRegisters, ModelSpecific, Segment,
    SpecialRegisters, VcpuState,
};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use zerocopy::{FromBytes, IntoBytes};

impl From<&kvm_cpuid_entry2> for CpuidLeaf {
    fn from(entry: &kvm_cpuid_entry2) -> Self {
        let kvm_cpuid_entry2 { function, index, flags, eax, ebx, ecx, edx, .. } = *entry;
        Self { function, index, flags, eax, ebx, ecx, edx }
    }
}

impl From<&CpuidLeaf> for kvm_cpuid_entry2 {
    fn from(leaf: &CpuidLeaf) -> Self {
        let CpuidLeaf { function, index, flags, eax, ebx, ecx, edx } = *leaf;
        Self { function, index, flags, eax, ebx, ecx, edx, ..Default::default() }
    }
}

/// What a restore could not give back as it was saved, for the VM's console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreNotes {
    /// MSRs KVM refused (skipped).
    pub refused_msrs: Vec<u32>,
    /// Leaves of the saved CPUID that this host's KVM does not offer as
    /// they were (the guest sees the saved ones).
    pub cpuid_differs: usize,
    /// The saved TSC frequency and this host's, where they differ and the
    /// host would not take the saved one.
    pub tsc_khz: Option<(u32, u32)>,
}

/// How many of `saved`'s leaves `here` has otherwise (or not at all); the
/// APIC id (leaf 1 EBX[31:24], leaves 0xB and 0x1F EDX) is each vCPU's own
/// and not counted.
pub fn cpuid_differences(saved: &[CpuidLeaf], here: &[CpuidLeaf]) -> usize {
    let comparable = |leaf: &CpuidLeaf| {
        let mut leaf = *leaf;
        match leaf.function {
            1 => leaf.ebx &= 0x00ff_ffff,
            0xb | 0x1f => leaf.edx = 0,
            _ => {}
        }
        leaf
    };
    saved
        .iter()
        .filter(|leaf| {
            let found = here.iter().find(|other| other.function == leaf.function && other.index == leaf.index);
            found.is_none_or(|other| comparable(other) != comparable(leaf))
        })
        .count()
}

/// A state KVM cannot take back.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A hex field is not hex, or not the size of its structure.
    #[error("the vCPU state's {field} is not {bytes} bytes of hex")]
    BadHex {
        /// Which field.
        field: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// More CPUID leaves than KVM takes.
    #[error("the vCPU state has {0} CPUID leaves; KVM takes at most {KVM_MAX_CPUID_ENTRIES}")]
    TooManyLeaves(usize),
    /// KVM refused a step.
    #[error("KVM refused {what}: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, source }
}

impl VcpuState {
    /// Saves `fd`'s state (its pending exit already completed); `msr_indices`
    /// are the MSRs to try (the host's list; those it refuses are left out).
    pub(super) fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?.mp_state;
        let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debug = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let msrs = save_msrs(fd, msr_indices)?;
        let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        let cpuid = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(kvm("KVM_GET_CPUID2"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let count = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
        Ok(Self {
            mp_state,
            regs: GeneralRegisters::from(&regs),
            sregs: SpecialRegisters::from(&sregs),
            xsave: to_hex(xsave.as_bytes()),
            xcrs: xcrs.xcrs[..count].iter().map(|x| ExtendedControl { xcr: x.xcr, value: x.value }).collect(),
            debug: DebugRegisters { db: debug.db, dr6: debug.dr6, dr7: debug.dr7, flags: debug.flags },
            msrs,
            events: to_hex(events.as_bytes()),
            cpuid: cpuid.as_slice().iter().map(CpuidLeaf::from).collect(),
            tsc_khz,
        })
    }

    /// Checks what only decoding can tell (the hex fields), before any VM is made.
    pub fn check(&self) -> Result<(), VcpuStateError> {
        if self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(VcpuStateError::TooManyLeaves(self.cpuid.len()));
        }
        self.xsave_area()?;
        self.pending_events()?;
        Ok(())
    }

    fn xsave_area(&self) -> Result<kvm_xsave, VcpuStateError> {
        let bytes = from_hex(&self.xsave);
        bytes
            .and_then(|bytes| kvm_xsave::read_from_bytes(&bytes).ok())
            .ok_or(VcpuStateError::BadHex { field: "xsave", bytes: std::mem::size_of::<kvm_xsave>() })
    }

    fn pending_events(&self) -> Result<kvm_vcpu_events, VcpuStateError> {
        let bytes = from_hex(&self.events);
        bytes
            .and_then(|bytes| kvm_vcpu_events::read_from_bytes(&bytes).ok())
            .ok_or(VcpuStateError::BadHex { field: "events", bytes: std::mem::size_of::<kvm_vcpu_events>() })
    }

    /// Loads this state into `fd`, a fresh vCPU of a VM whose memory already
    /// holds the snapshot's. Returns the MSRs KVM refused (skipped).
    /// `given` is the CPUID `fd` was made with.
    pub(super) fn restore(&self, fd: &VcpuFd, given: &[kvm_cpuid_entry2]) -> Result<RestoreNotes, VcpuStateError> {
        let xsave = self.xsave_area()?;
        let events = self.pending_events()?;
        let mut notes = RestoreNotes::default();
        // The CPU the guest saw first: XSAVE and the MSRs depend on it.
        if !self.cpuid.is_empty() {
            let here: Vec<CpuidLeaf> = given.iter().map(CpuidLeaf::from).collect();
            // The same CPUID again needs no KVM_SET_CPUID2: it took 0.15 ms
            // of a migration's final pause here, and saved on this host it
            // is the one a new vCPU gets.
            if self.cpuid != here {
                let entries: Vec<kvm_cpuid_entry2> = self.cpuid.iter().map(kvm_cpuid_entry2::from).collect();
                let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuStateError::TooManyLeaves(entries.len()))?;
                fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
            }
            notes.cpuid_differs = cpuid_differences(&self.cpuid, &here);
        }
        if let (Some(saved), Ok(here)) = (self.tsc_khz, fd.get_tsc_khz()) {
            if saved != here && fd.set_tsc_khz(saved).is_err() {
                notes.tsc_khz = Some((saved, here));
            }
        }
        fd.set_mp_state(kvm_mp_state { mp_state: self.mp_state }).map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs.into()).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs.into()).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a whole kvm_xsave (4 KiB), all KVM_SET_XSAVE reads
        // unless the VM was given dynamic XSAVE features (AMX) through
        // KVM_CAP_XSAVE2, which this hypervisor never asks for.
        unsafe { fd.set_xsave(&xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        let mut xcrs = kvm_xcrs::default();
        for (to, from) in xcrs.xcrs.iter_mut().zip(&self.xcrs) {
            (to.xcr, to.value) = (from.xcr, from.value);
        }
        xcrs.nr_xcrs = self.xcrs.len().min(xcrs.xcrs.len()) as u32;
        fd.set_xcrs(&xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        let debug = &self.debug;
        let debugregs =
            kvm_debugregs { db: debug.db, dr6: debug.dr6, dr7: debug.dr7, flags: debug.flags, ..Default::default() };
        fd.set_debug_regs(&debugregs).map_err(kvm("KVM_SET_DEBUGREGS"))?;
        notes.refused_msrs = restore_msrs(fd, &self.msrs)?;
        fd.set_vcpu_events(&events).map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(notes)
    }
}

/// MSRs per KVM_GET_MSRS / KVM_SET_MSRS: the kernel refuses `nmsrs >=
/// MAX_IO_MSRS` (256, arch/x86/kvm/x86.c, `-E2BIG`), so a batch of
/// kvm-bindings' KVM_MAX_MSR_ENTRIES (also 256) is one too many.
const MSR_BATCH: usize = KVM_MAX_MSR_ENTRIES - 1;

/// KVM_GET_MSRS reads entries in order and stops at the first it refuses:
/// read in batches, and step over each refused one.
fn save_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<ModelSpecific>, VcpuStateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut at = 0;
    while at < indices.len() {
        let batch = &indices[at..indices.len().min(at + MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> =
            batch.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = kvm_bindings::Msrs::from_entries(&entries).expect("at most KVM_MAX_MSR_ENTRIES");
        let read = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        saved.extend(msrs.as_slice()[..read].iter().map(|e| ModelSpecific { index: e.index, value: e.data }));
        // A batch that stopped short stopped at a refused MSR: step over it.
        at += read + usize::from(read < batch.len());
    }
    Ok(saved)
}

/// KVM_SET_MSRS stops at the first MSR it refuses (some exist only with an
/// in-kernel irqchip): write in batches and step over each refused one.
/// Returns the refused ones that held something other than 0.
fn restore_msrs(fd: &VcpuFd, saved: &[ModelSpecific]) -> Result<Vec<u32>, VcpuStateError> {
    let mut refused = Vec::new();
    let mut at = 0;
    while at < saved.len() {
        let batch = &saved[at..saved.len().min(at + MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> =
            batch.iter().map(|m| kvm_msr_entry { index: m.index, data: m.value, ..Default::default() }).collect();
        let msrs = kvm_bindings::Msrs::from_entries(&entries).expect("at most KVM_MAX_MSR_ENTRIES");
        let written = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        at += written;
        if written < batch.len() {
            // One still at its reset value (0) loses nothing by being skipped.
            if batch[written].value != 0 {
                refused.push(batch[written].index);
            }
            at += 1;
        }
    }
    Ok(refused)
}

/// The MSRs this host's KVM can save (KVM_GET_MSR_INDEX_LIST), asked once.
pub(super) fn msr_indices(kvm: &Kvm) -> &'static [u32] {
    static INDICES: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    INDICES.get_or_init(|| kvm.get_msr_index_list().map(|list| list.as_slice().to_vec()).unwrap_or_default())
}

/// Lower-case hex, two digits a byte. By hand, not `format!` a byte: a
/// migration's final pause encodes the 4 KiB XSAVE area, and a formatted
/// string per byte took 0.3 ms of it here.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).map(|value| value as u8);
    let pairs = text.as_bytes().chunks(2);
    pairs
        .map(|pair| match *pair {
            [high, low] => Some(digit(high)? << 4 | digit(low)?),
            _ => None,
        })
        .collect()
}

impl From<&kvm_regs> for GeneralRegisters {
    fn from(r: &kvm_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<GeneralRegisters> for kvm_regs {
    fn from(r: GeneralRegisters) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<&kvm_segment> for Segment {
    fn from(s: &kvm_segment) -> Self {
        Self {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            kind: s.type_,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
        }
    }
}

impl From<Segment> for kvm_segment {
    fn from(s: Segment) -> Self {
        Self {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.kind,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
            padding: 0,
        }
    }
}

impl From<&kvm_sregs> for SpecialRegisters {
    fn from(s: &kvm_sregs) -> Self {
        let table = |t: &kvm_dtable| DescriptorTable { base: t.base, limit: t.limit };
        Self {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: table(&s.gdt),
            idt: table(&s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<SpecialRegisters> for kvm_sregs {
    fn from(s: SpecialRegisters) -> Self {
        let table = |t: DescriptorTable| kvm_dtable { base: t.base, limit: t.limit, ..Default::default() };
        Self {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: table(s.gdt),
            idt: table(s.idt),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpuid_differences_leave_out_each_vcpus_apic_id() {
        let leaf = |function, index, ebx, edx| CpuidLeaf { function, index, ebx, edx, eax: 1, ..Default::default() };
        let here = [leaf(0, 0, 5, 0), leaf(1, 0, 0x0000_0800, 0), leaf(0xb, 0, 1, 0), leaf(7, 0, 0xff, 0)];
        // The same CPU on vCPU 3: only APIC ids differ.
        let saved = [leaf(0, 0, 5, 0), leaf(1, 0, 0x0300_0800, 0), leaf(0xb, 0, 1, 3), leaf(7, 0, 0xff, 0)];
        assert_eq!(cpuid_differences(&saved, &here), 0);
        // A feature this host lacks, and a leaf it has not at all.
        let saved = [leaf(7, 0, 0x1ff, 0), leaf(0x14, 0, 1, 0)];
        assert_eq!(cpuid_differences(&saved, &here), 2);
    }

    use super::*;

    #[test]
    fn registers_go_round_the_kvm_structures_unchanged() {
        let regs = kvm_regs { rax: 42, r15: 15, rip: 0x10000, rflags: 0x202, ..Default::default() };
        assert_eq!(kvm_regs::from(GeneralRegisters::from(&regs)), regs);
        let mut sregs = kvm_sregs { cr0: 0x8000_0011, efer: 0x500, ..Default::default() };
        sregs.cs = kvm_segment { selector: 8, limit: 0xffff_ffff, type_: 11, present: 1, l: 1, ..Default::default() };
        sregs.gdt.limit = 23;
        sregs.interrupt_bitmap[0] = 1 << 32;
        assert_eq!(kvm_sregs::from(SpecialRegisters::from(&sregs)), sregs);
    }

    #[test]
    fn hex_fields_are_checked_before_use() {
        assert_eq!(from_hex("00ff10"), Some(vec![0, 0xff, 0x10]));
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&every_byte[..3]), "000102");
        assert_eq!(from_hex(&to_hex(&every_byte)), Some(every_byte));
        assert_eq!(from_hex("+f"), None);
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
        let events = kvm_vcpu_events::default();
        let state = VcpuState {
            mp_state: 0,
            regs: GeneralRegisters::default(),
            sregs: SpecialRegisters::default(),
            xsave: to_hex(kvm_xsave::default().as_bytes()),
            xcrs: Vec::new(),
            debug: DebugRegisters::default(),
            msrs: Vec::new(),
            events: to_hex(events.as_bytes()),
            cpuid: Vec::new(),
            tsc_khz: None,
        };
        state.check().unwrap();
        let leaves = VcpuState { cpuid: vec![CpuidLeaf::default(); KVM_MAX_CPUID_ENTRIES + 1], ..state.clone() };
        assert!(leaves.check().unwrap_err().to_string().contains("CPUID leaves"));
        let short = VcpuState { xsave: "00".into(), ..state.clone() };
        assert!(short.check().unwrap_err().to_string().contains("xsave is not 4096 bytes"));
        let long = VcpuState { events: format!("{}00", state.events), ..state };
        assert!(long.check().unwrap_err().to_string().contains("events"));
    }
}
