//! The four CPU modes a VM can start in, as the course's hypervisors set them
//! up: real (16-bit, segment:offset), protected (32-bit, flat segments, no
//! paging), paged32 (protected with one page directory of 4 MiB pages) and
//! long (64-bit, today's guest ABI). Each mode says which of the hypervisor's
//! structures it needs, and builds its registers from the vCPU's reset state;
//! the register builders are pure, so all of it is tested without KVM.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{REAL_MODE_REACH, Structure, SystemArea};
use super::longmode;
use super::memory::GuestMemory;
use super::segments;

/// How a VM's vCPU starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    /// 16-bit real mode: CS:IP from the entry, DS = ES = SS = CS.
    Real,
    /// 32-bit protected mode: flat 4 GiB segments, no paging.
    Protected,
    /// 32-bit protected mode with paging: one page directory of 4 MiB pages.
    Paged32,
    /// 64-bit long mode: identity-mapped 2 MiB pages (the guest ABI's machine).
    #[default]
    Long,
}

/// RFLAGS at entry in every mode: only the always-one bit; interrupts off.
const RFLAGS: u64 = 0x2;
/// CR0 at reset (CD, NW, ET): what real mode keeps.
pub const REAL_CR0: u64 = 0x6000_0010;
/// CR0 of protected mode: PE | MP | ET | NE.
pub const PROTECTED_CR0: u64 = 0x33;
/// CR0 of paged32: PE | MP | ET | NE | WP | AM | PG (long mode's, without LME in EFER).
pub const PAGED32_CR0: u64 = 0x8005_0033;
/// CR4 of protected mode: OSFXSR | OSXMMEXCPT (SSE usable).
pub const PROTECTED_CR4: u64 = 0x600;
/// CR4 of paged32: PSE (4 MiB pages) | OSFXSR | OSXMMEXCPT.
pub const PAGED32_CR4: u64 = 0x610;
/// Bytes one paged32 page directory entry maps (PSE).
pub const PAGE_4M: u64 = 4 << 20;

const PDE_PRESENT: u32 = 1 << 0;
const PDE_WRITABLE: u32 = 1 << 1;
const PDE_LARGE: u32 = 1 << 7;

impl CpuMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [Self; 4] = [Self::Real, Self::Protected, Self::Paged32, Self::Long];

    /// Its name in scenarios and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Protected => "protected",
            Self::Paged32 => "paged32",
            Self::Long => "long",
        }
    }

    /// The mode called `text`, or what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|mode| mode.name() == text).ok_or_else(|| {
            format!("unknown CPU mode '{}': give real, protected, paged32 or long", crate::console::escape_input(text))
        })
    }

    /// The hypervisor's structures this mode needs in guest memory.
    pub fn structures(self) -> &'static [Structure] {
        use Structure::*;
        match self {
            Self::Real => &[Args, Mailbox],
            Self::Protected => &[Args, Mailbox, Gdt],
            Self::Paged32 => &[Args, Mailbox, PageDirectory, Gdt],
            Self::Long => &[Args, Mailbox, Pml4, Pdpt, PageDirectory, Gdt],
        }
    }

    /// The highest guest address (exclusive) this mode's code reaches without
    /// help: the first MiB in real mode, all of memory in the others.
    pub fn reach(self, memory_size: u64) -> u64 {
        match self {
            Self::Real => memory_size.min(REAL_MODE_REACH),
            _ => memory_size,
        }
    }

    /// Writes the page tables and GDT this mode needs at `area`.
    pub fn write_tables(
        self,
        memory: &GuestMemory,
        memory_size: u64,
        area: SystemArea,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        match self {
            Self::Real => Ok(()),
            Self::Protected => segments::write_gdt(memory, area.start(Structure::Gdt), false),
            Self::Paged32 => {
                write_page_directory_4m(memory, memory_size, area.start(Structure::PageDirectory))?;
                segments::write_gdt(memory, area.start(Structure::Gdt), false)
            }
            Self::Long => {
                longmode::write_page_tables(memory, memory_size, area)?;
                segments::write_gdt(memory, area.start(Structure::Gdt), true)
            }
        }
    }

    /// The special registers to start in this mode, on top of the vCPU's
    /// reset state; `entry` picks real mode's segments.
    pub fn special_registers(self, mut sregs: kvm_sregs, area: SystemArea, entry: u64) -> kvm_sregs {
        if self == Self::Real {
            let selector = real_mode_segment(entry);
            for segment in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss] {
                segment.selector = selector;
                segment.base = u64::from(selector) << 4;
            }
            sregs.cr0 = REAL_CR0;
            (sregs.cr3, sregs.cr4, sregs.efer) = (0, 0, 0);
            return sregs;
        }
        let long = self == Self::Long;
        sregs.cs = segments::code_segment(long);
        let data = segments::data_segment();
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt.base = area.start(Structure::Gdt);
        sregs.gdt.limit = (area.range(Structure::Gdt).end - sregs.gdt.base - 1) as u16;
        // No IDT: any exception escalates to a triple fault, which ends the VM.
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = match self {
            Self::Protected => (PROTECTED_CR0, 0, PROTECTED_CR4, 0),
            Self::Paged32 => (PAGED32_CR0, area.start(Structure::PageDirectory), PAGED32_CR4, 0),
            _ => (longmode::CR0, area.start(Structure::Pml4), longmode::CR4, longmode::EFER),
        };
        sregs
    }

    /// The general registers at entry: the instruction pointer at the entry
    /// (real mode: its offset in CS), the stack at the top of memory (real
    /// mode: SP 0, so the first push lands at the top of the 64 KiB segment),
    /// interrupts off.
    pub fn initial_registers(self, entry: u64, memory_size: u64) -> kvm_regs {
        match self {
            Self::Real => kvm_regs { rip: entry & 0xffff, rsp: 0, rflags: RFLAGS, ..Default::default() },
            _ => kvm_regs { rip: entry, rsp: memory_size, rflags: RFLAGS, ..Default::default() },
        }
    }

    /// The setup step that puts the vCPU in this mode, for the setup view.
    pub fn setup_step(self) -> &'static str {
        match self {
            Self::Real => "real mode: CS:IP from the entry, DS = ES = SS = CS",
            Self::Protected => "protected mode: CR0.PE, flat 32-bit segments",
            Self::Paged32 => "paged32: CR0.PE+PG, CR4.PSE, CR3, flat segments",
            Self::Long => "long mode: CRs, EFER, segments",
        }
    }

    /// The memory writes this mode's setup makes, for the setup view.
    pub fn tables_step(self) -> &'static str {
        match self {
            Self::Real => "load image, args",
            Self::Protected => "load image, GDT, args",
            Self::Paged32 => "load image, page directory, GDT, args",
            Self::Long => "load image, page tables, GDT, args",
        }
    }
}

/// Real mode's segment for a linear entry: CS = (entry >> 4) & 0xF000, so
/// IP = entry & 0xFFFF (entry 0x10000 gives 0x1000:0, entry 0 gives 0:0).
pub fn real_mode_segment(entry: u64) -> u16 {
    ((entry >> 4) & 0xf000) as u16
}

/// Writes one 32-bit page directory at `at` that identity-maps `memory_size`
/// bytes with 4 MiB pages (the last page may map past memory, as one 4 MiB
/// page over 2 MiB does; the hypervisor checks every pointer against memory).
fn write_page_directory_4m(memory: &GuestMemory, memory_size: u64, at: u64) -> Result<(), vm_memory::GuestMemoryError> {
    for page in 0..memory_size.div_ceil(PAGE_4M) {
        let entry = (page * PAGE_4M) as u32 | PDE_PRESENT | PDE_WRITABLE | PDE_LARGE;
        memory.write_obj(entry, GuestAddress(at + page * 4))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;

    #[test]
    fn names_parse_back_and_unknown_ones_say_what_to_give() {
        for mode in CpuMode::ALL {
            assert_eq!(CpuMode::parse(mode.name()), Ok(mode));
        }
        assert_eq!(
            CpuMode::parse("vm86").unwrap_err(),
            "unknown CPU mode 'vm86': give real, protected, paged32 or long"
        );
    }

    #[test]
    fn real_mode_starts_at_the_starters_segments() {
        assert_eq!(real_mode_segment(0x10000), 0x1000);
        assert_eq!(real_mode_segment(0), 0);
        assert_eq!(real_mode_segment(0x12345), 0x1000);
        let sregs = CpuMode::Real.special_registers(kvm_sregs::default(), SystemArea::default(), 0x10000);
        assert_eq!(
            (sregs.cs.selector, sregs.cs.base, sregs.ds.base, sregs.ss.selector),
            (0x1000, 0x10000, 0x10000, 0x1000)
        );
        assert_eq!((sregs.cr0, sregs.cr4, sregs.efer), (REAL_CR0, 0, 0));
        let regs = CpuMode::Real.initial_registers(0x12345, 2 << 20);
        assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x2345, 0, 2));
    }

    #[test]
    fn the_32_bit_modes_use_flat_32_bit_segments() {
        for mode in [CpuMode::Protected, CpuMode::Paged32] {
            let sregs = mode.special_registers(kvm_sregs::default(), SystemArea::default(), 0);
            assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.selector, sregs.ds.selector), (0, 1, 0x8, 0x10));
            assert_eq!((sregs.gdt.base, sregs.gdt.limit, sregs.efer), (0x5000, 23, 0));
        }
        let protected = CpuMode::Protected.special_registers(kvm_sregs::default(), SystemArea::default(), 0);
        assert_eq!((protected.cr0, protected.cr3, protected.cr4), (0x33, 0, 0x600));
        let paged = CpuMode::Paged32.special_registers(kvm_sregs::default(), SystemArea { shift: 0x1000 }, 0);
        assert_eq!((paged.cr0, paged.cr3, paged.cr4, paged.gdt.base), (0x8005_0033, 0x5000, 0x610, 0x6000));
        let regs = CpuMode::Protected.initial_registers(0, 2 << 20);
        assert_eq!((regs.rip, regs.rsp), (0, 0x20_0000));
    }

    #[test]
    fn paged32_maps_memory_with_4_mib_pages() {
        let size = 10 << 20;
        let mem = memory::allocate(size).unwrap();
        CpuMode::Paged32.write_tables(&mem, size, SystemArea::default()).unwrap();
        let entries: Vec<u32> = (0..4).map(|i| mem.read_obj(GuestAddress(0x4000 + i * 4)).unwrap()).collect();
        assert_eq!(entries, [0x83, 0x40_0083, 0x80_0083, 0]);
    }

    #[test]
    fn long_mode_is_the_abis_machine() {
        let sregs = CpuMode::Long.special_registers(kvm_sregs::default(), SystemArea::default(), 0x10000);
        assert_eq!((sregs.cr0, sregs.cr4, sregs.efer, sregs.cr3), (0x8005_0033, 0x620, 0x500, 0x2000));
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.ss.selector), (0x8, 1, 0x10));
        let regs = CpuMode::Long.initial_registers(0x10000, 2 << 20);
        assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x10000, 0x20_0000, 2));
    }
}
