//! A vCPU's whole register file as a debugger sees it: what KVM_GET_REGS,
//! KVM_GET_SREGS and KVM_GET_FPU return, in plain types (no KVM type leaves
//! `vm`), and written back the same way.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// The registers gdb reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuState {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8-r15: gdb's order.
    pub gprs: [u64; 16],
    /// The instruction pointer.
    pub rip: u64,
    /// The flags.
    pub rflags: u64,
    /// Selectors of cs, ss, ds, es, fs, gs: gdb's order. (gdb's x86-64
    /// description has no place for the control registers.)
    pub selectors: [u16; 6],
    /// x87 registers st0-st7, 80 bits each.
    pub st: [[u8; 10]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// x87 tag word (abridged, as FXSAVE keeps it).
    pub ftw: u8,
    /// Last x87 opcode.
    pub fop: u16,
    /// Last x87 instruction pointer.
    pub fip: u64,
    /// Last x87 data pointer.
    pub fdp: u64,
    /// xmm0-xmm15.
    pub xmm: [u128; 16],
    /// SSE control and status.
    pub mxcsr: u32,
}

impl CpuState {
    /// Gathers the state from what KVM returned.
    pub(super) fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs, fpu: &kvm_fpu) -> Self {
        let r = regs;
        let segments = [&sregs.cs, &sregs.ss, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs];
        let mut st = [[0; 10]; 8];
        for (to, from) in st.iter_mut().zip(&fpu.fpr) {
            to.copy_from_slice(&from[..10]);
        }
        Self {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
                r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            selectors: segments.map(|segment| segment.selector),
            st,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftw: fpu.ftwx,
            fop: fpu.last_opcode,
            fip: fpu.last_ip,
            fdp: fpu.last_dp,
            xmm: fpu.xmm.map(u128::from_le_bytes),
            mxcsr: fpu.mxcsr,
        }
    }

    /// Writes this state over what KVM returned: the general registers, rip,
    /// rflags, the x87 and SSE state, and segment selectors where they
    /// changed (a selector alone; the descriptor cache stays as it is).
    pub(super) fn apply(&self, regs: &mut kvm_regs, sregs: &mut kvm_sregs, fpu: &mut kvm_fpu) {
        let g = self.gprs;
        (regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp) =
            (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
        (regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15) =
            (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
        regs.rip = self.rip;
        // Bit 1 of rflags is always set.
        regs.rflags = self.rflags | 0b10;
        let segments = [&mut sregs.cs, &mut sregs.ss, &mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs];
        for (segment, selector) in segments.into_iter().zip(self.selectors) {
            segment.selector = selector;
        }
        for (to, from) in fpu.fpr.iter_mut().zip(&self.st) {
            to[..10].copy_from_slice(from);
        }
        (fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode, fpu.last_ip, fpu.last_dp) =
            (self.fcw, self.fsw, self.ftw, self.fop, self.fip, self.fdp);
        fpu.xmm = self.xmm.map(u128::to_le_bytes);
        fpu.mxcsr = self.mxcsr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_goes_round_the_kvm_structures_unchanged() {
        let regs = kvm_regs { rax: 1, rbx: 2, rsp: 0x1000, r15: 15, rip: 0x10000, rflags: 0x202, ..Default::default() };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x8;
        sregs.ss.selector = 0x10;
        let mut fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        fpu.xmm[3][0] = 7;
        let state = CpuState::from_kvm(&regs, &sregs, &fpu);
        assert_eq!((state.gprs[0], state.gprs[1], state.gprs[7], state.gprs[15]), (1, 2, 0x1000, 15));
        assert_eq!((state.selectors[0], state.selectors[1], state.xmm[3]), (0x8, 0x10, 7));
        let (mut regs2, mut sregs2, mut fpu2) = (kvm_regs::default(), kvm_sregs::default(), kvm_fpu::default());
        state.apply(&mut regs2, &mut sregs2, &mut fpu2);
        assert_eq!(CpuState::from_kvm(&regs2, &sregs2, &fpu2), state);
    }
}
