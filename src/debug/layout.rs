//! The register layouts the gdb server speaks: x86-64 for a long-mode VM,
//! i386 for the others, so that gdb's `set architecture i8086` (16-bit
//! disassembly) fits the registers it is sent. A real-mode VM's program
//! counter is shown as the linear address CS base + IP, the address KVM
//! reports debug exits at and breakpoints match against, so that `break
//! *0x10000` stops the Matrix starter at 0x1000:0 and gdb reads its code there.

use gdbstub::arch::Arch;
use gdbstub_arch::x86::reg::id::X86CoreRegId;
use gdbstub_arch::x86::reg::{X86_64CoreRegs, X86CoreRegs, X86SegmentRegs, X87FpuInternalRegs};
use gdbstub_arch::x86::{X86_64_SSE, X86_SSE};

use crate::vm::{CpuMode, CpuState};

/// Which layout a VM in `mode` is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterLayout {
    /// x86-64 (long mode).
    X86_64,
    /// i386; `real` when the VM starts in real mode.
    I386 {
        /// The program counter is CS base + IP.
        real: bool,
    },
}

impl RegisterLayout {
    /// The layout for a VM that starts in `mode`.
    pub fn for_mode(mode: CpuMode) -> Self {
        match mode {
            CpuMode::Long => Self::X86_64,
            CpuMode::Real => Self::I386 { real: true },
            CpuMode::Protected | CpuMode::Paged32 => Self::I386 { real: false },
        }
    }
}

/// i386's registers, described to gdb as `i8086`: gdb then disassembles
/// 16-bit code, which `set architecture i8086` alone does not make it do
/// when the target describes itself as i386.
pub enum I8086 {}

impl Arch for I8086 {
    type Usize = u32;
    type Registers = X86CoreRegs;
    type RegId = X86CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(
            r#"<target version="1.0"><architecture>i8086</architecture><feature name="org.gnu.gdb.i386.sse"></feature></target>"#,
        )
    }
}

impl Layout for I8086 {
    fn to_gdb(state: &CpuState, real: bool) -> X86CoreRegs {
        X86_SSE::to_gdb(state, real)
    }

    fn from_gdb(regs: &X86CoreRegs, real: bool) -> CpuState {
        X86_SSE::from_gdb(regs, real)
    }

    fn widen(address: u32) -> u64 {
        u64::from(address)
    }

    fn narrow(address: u64) -> u32 {
        address as u32
    }
}

/// A gdb register layout: to and from our [`CpuState`], and its addresses.
pub trait Layout: Arch<BreakpointKind = usize> + 'static {
    /// gdb's registers from the vCPU's; `real`: pc is CS base + IP.
    fn to_gdb(state: &CpuState, real: bool) -> Self::Registers;
    /// The vCPU's registers from gdb's.
    fn from_gdb(regs: &Self::Registers, real: bool) -> CpuState;
    /// A gdb address as ours.
    fn widen(address: Self::Usize) -> u64;
    /// Our address as gdb's (addresses here fit: memory is below 1 GiB).
    fn narrow(address: u64) -> Self::Usize;
}

/// Real mode's code segment base, from its selector.
fn code_base(state: &CpuState, real: bool) -> u64 {
    if real { u64::from(state.selectors[0]) << 4 } else { 0 }
}

impl Layout for X86_64_SSE {
    fn to_gdb(state: &CpuState, _real: bool) -> X86_64CoreRegs {
        X86_64CoreRegs {
            regs: state.gprs,
            rip: state.rip,
            eflags: state.rflags as u32,
            segments: segments(state),
            st: state.st,
            fpu: fpu(state),
            xmm: state.xmm,
            mxcsr: state.mxcsr,
        }
    }

    fn from_gdb(regs: &X86_64CoreRegs, _real: bool) -> CpuState {
        from_parts(regs.regs, regs.rip, regs.eflags, &regs.segments, regs.st, &regs.fpu, regs.xmm, regs.mxcsr)
    }

    fn widen(address: u64) -> u64 {
        address
    }

    fn narrow(address: u64) -> u64 {
        address
    }
}

impl Layout for X86_SSE {
    fn to_gdb(state: &CpuState, real: bool) -> X86CoreRegs {
        let r = state.gprs.map(|value| value as u32);
        let mut xmm = [0; 8];
        xmm.copy_from_slice(&state.xmm[..8]);
        X86CoreRegs {
            // gdb's order is rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp (CpuState's).
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
            esi: r[4],
            edi: r[5],
            ebp: r[6],
            esp: r[7],
            eip: (state.rip + code_base(state, real)) as u32,
            eflags: state.rflags as u32,
            segments: segments(state),
            st: state.st,
            fpu: fpu(state),
            xmm,
            mxcsr: state.mxcsr,
        }
    }

    fn from_gdb(regs: &X86CoreRegs, real: bool) -> CpuState {
        let mut gprs = [0u64; 16];
        let order = [regs.eax, regs.ebx, regs.ecx, regs.edx, regs.esi, regs.edi, regs.ebp, regs.esp];
        for (to, from) in gprs.iter_mut().zip(order) {
            *to = u64::from(from);
        }
        let mut xmm = [0; 16];
        xmm[..8].copy_from_slice(&regs.xmm);
        let mut state =
            from_parts(gprs, u64::from(regs.eip), regs.eflags, &regs.segments, regs.st, &regs.fpu, xmm, regs.mxcsr);
        state.rip = state.rip.wrapping_sub(code_base(&state, real)) & 0xffff_ffff;
        state
    }

    fn widen(address: u32) -> u64 {
        u64::from(address)
    }

    fn narrow(address: u64) -> u32 {
        address as u32
    }
}

fn segments(state: &CpuState) -> X86SegmentRegs {
    let [cs, ss, ds, es, fs, gs] = state.selectors.map(u32::from);
    X86SegmentRegs { cs, ss, ds, es, fs, gs }
}

fn fpu(state: &CpuState) -> X87FpuInternalRegs {
    X87FpuInternalRegs {
        fctrl: state.fcw.into(),
        fstat: state.fsw.into(),
        ftag: full_tag_word(state.ftw),
        fiseg: (state.fip >> 32) as u32,
        fioff: state.fip as u32,
        foseg: (state.fdp >> 32) as u32,
        fooff: state.fdp as u32,
        fop: state.fop.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn from_parts(
    gprs: [u64; 16],
    rip: u64,
    eflags: u32,
    s: &X86SegmentRegs,
    st: [[u8; 10]; 8],
    fpu: &X87FpuInternalRegs,
    xmm: [u128; 16],
    mxcsr: u32,
) -> CpuState {
    CpuState {
        gprs,
        rip,
        rflags: eflags.into(),
        selectors: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|selector| selector as u16),
        st,
        fcw: fpu.fctrl as u16,
        fsw: fpu.fstat as u16,
        ftw: abridged_tag_word(fpu.ftag),
        fop: fpu.fop as u16,
        fip: u64::from(fpu.fiseg) << 32 | u64::from(fpu.fioff),
        fdp: u64::from(fpu.foseg) << 32 | u64::from(fpu.fooff),
        xmm,
        mxcsr,
    }
}

/// The x87 tag word gdb shows (two bits a register) from the abridged one
/// FXSAVE keeps (a bit a register: in use or not). In-use registers are shown
/// as valid.
fn full_tag_word(abridged: u8) -> u32 {
    (0..8).map(|i| if abridged & (1 << i) != 0 { 0 } else { 0b11 << (2 * i) }).sum()
}

fn abridged_tag_word(full: u32) -> u8 {
    (0..8).filter(|i| (full >> (2 * i)) & 0b11 != 0b11).map(|i| 1 << i).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CpuState {
        CpuState {
            gprs: std::array::from_fn(|i| i as u64 * 0x1111),
            rip: 0x10042,
            rflags: 0x246,
            selectors: [0x8, 0x10, 0x10, 0x10, 0x10, 0x10],
            fcw: 0x37f,
            ftw: 0b1000_0001,
            fip: 0x1234_5678_9abc,
            xmm: std::array::from_fn(|i| i as u128),
            mxcsr: 0x1f80,
            ..Default::default()
        }
    }

    #[test]
    fn x86_64_registers_go_to_gdb_and_back() {
        let state = state();
        let regs = X86_64_SSE::to_gdb(&state, false);
        assert_eq!((regs.rip, regs.regs[7], regs.segments.cs, regs.eflags), (0x10042, 7 * 0x1111, 0x8, 0x246));
        assert_eq!(regs.fpu.ftag, 0b0011_1111_1111_1100, "st0 and st7 valid, the rest empty");
        assert_eq!(X86_64_SSE::from_gdb(&regs, false), state);
    }

    #[test]
    fn i386_registers_go_to_gdb_and_back_with_a_real_mode_pc_made_linear() {
        let mut state = state();
        state.gprs[8..].fill(0);
        state.xmm[8..].fill(0);
        let regs = X86_SSE::to_gdb(&state, false);
        assert_eq!((regs.eip, regs.esp, regs.eax, regs.ebx), (0x10042, 7 * 0x1111, 0, 0x1111));
        assert_eq!(X86_SSE::from_gdb(&regs, false), state);
        state.selectors[0] = 0x1000;
        state.rip = 0x2;
        let real = X86_SSE::to_gdb(&state, true);
        assert_eq!(real.eip, 0x10002, "CS base + IP");
        assert_eq!(X86_SSE::from_gdb(&real, true).rip, 0x2);
        assert_eq!(RegisterLayout::for_mode(CpuMode::Real), RegisterLayout::I386 { real: true });
    }
}
