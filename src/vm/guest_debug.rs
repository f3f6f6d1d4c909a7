//! What this host's KVM honours of KVM_SET_GUEST_DEBUG, found by running
//! probe VMs, and how a debugger should be served with it.
//!
//! On hardware-virtualized KVM everything works as documented. On hosts that
//! emulate guest code (kvm_pvm) some of it does not: `int3` is not
//! intercepted with KVM_GUESTDBG_USE_SW_BP (it ends the VM with an emulation
//! failure) and data watchpoints in the debug registers never fire, while
//! single-stepping and execution breakpoints do. So the probe tries each on
//! a tiny guest of its own (never the module's name), and [`Strategy`] says
//! what to use: software breakpoints by `int3` where intercepted, else by the
//! debug registers (four at a time), else by stepping; watchpoints by the
//! debug registers where they fire, else none (gdb then falls back to its own
//! software watchpoints).

use std::sync::Arc;

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug,
    kvm_guest_debug_arch,
};
use kvm_ioctls::{Kvm, VcpuExit};

use super::machine::{Machine, MachineSpec, SetupError};

/// Where the probe guest's code starts (the ABI's load address).
const ENTRY: u64 = 0x10000;
/// The probe guest: `nop; nop; mov rbx, 0x8000; mov [rbx], rax; hlt`.
const PROBE_CODE: &[u8] = &[0x90, 0x90, 0x48, 0xC7, 0xC3, 0x00, 0x80, 0x00, 0x00, 0x48, 0x89, 0x03, 0xF4];
/// The second `nop`: where the execution breakpoint goes.
const BREAK_AT: u64 = ENTRY + 1;
/// What the guest writes to: where the watchpoint goes.
const WATCHED: u64 = 0x8000;
/// The probe guest for software breakpoints: `int3; hlt`.
const INT3_CODE: &[u8] = &[0xCC, 0xF4];
/// DR7's local-exact and global-exact bits (set as debuggers do).
const DR7_EXACT: u64 = 0x300;

/// What the host's KVM honours, as probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DebugCaps {
    /// KVM_GUESTDBG_SINGLESTEP reports a debug exit after an instruction.
    pub single_step: bool,
    /// An execution breakpoint in DR0 (KVM_GUESTDBG_USE_HW_BP) fires.
    pub hw_breakpoints: bool,
    /// A data write watchpoint in DR1 fires.
    pub hw_watchpoints: bool,
    /// `int3` is intercepted with KVM_GUESTDBG_USE_SW_BP.
    pub sw_breakpoints: bool,
}

/// How breakpoints are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BreakpointMethod {
    /// `int3` written into guest memory, intercepted by KVM.
    Int3,
    /// The debug registers: at most four breakpoints (and watchpoints) at once.
    DebugRegisters,
    /// Single-stepping and comparing rip: any number, slowly.
    Stepping,
    /// None can be had.
    Unsupported,
}

/// How watchpoints are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WatchpointMethod {
    /// The debug registers (sharing their four slots with breakpoints).
    DebugRegisters,
    /// Reported as unsupported: gdb uses its own software watchpoints.
    Unsupported,
}

/// What a debugger is served with on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Strategy {
    /// Software breakpoints (gdb's `break`).
    pub breakpoints: BreakpointMethod,
    /// Hardware breakpoints (gdb's `hbreak`): the debug registers where they fire.
    pub hw_breakpoints: bool,
    /// Watchpoints (gdb's `watch`).
    pub watchpoints: WatchpointMethod,
    /// Single step (gdb's `stepi`).
    pub single_step: bool,
}

impl DebugCaps {
    /// The strategy for a host that honours these.
    pub fn strategy(self) -> Strategy {
        let breakpoints = if self.sw_breakpoints {
            BreakpointMethod::Int3
        } else if self.hw_breakpoints {
            BreakpointMethod::DebugRegisters
        } else if self.single_step {
            BreakpointMethod::Stepping
        } else {
            BreakpointMethod::Unsupported
        };
        let watchpoints =
            if self.hw_watchpoints { WatchpointMethod::DebugRegisters } else { WatchpointMethod::Unsupported };
        Strategy { breakpoints, hw_breakpoints: self.hw_breakpoints, watchpoints, single_step: self.single_step }
    }
}

/// A probe's outcome: the exception KVM reported with a debug exit and where,
/// or that the guest ran on to its `hlt`, or failed otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeExit {
    Debug { exception: u32, pc: u64 },
    Hlt,
    Other,
}

/// Runs the probe guests (four tiny VMs, a few milliseconds in all).
pub fn probe(kvm: &Kvm) -> Result<DebugCaps, SetupError> {
    let step = run_probe(kvm, PROBE_CODE, KVM_GUESTDBG_SINGLESTEP, [0; 8])?;
    let mut breakpoint = [0; 8];
    breakpoint[0] = BREAK_AT;
    breakpoint[7] = DR7_EXACT | 0b1; // L0, execute, 1 byte
    let hw_break = run_probe(kvm, PROBE_CODE, KVM_GUESTDBG_USE_HW_BP, breakpoint)?;
    let mut watchpoint = [0; 8];
    watchpoint[1] = WATCHED;
    watchpoint[7] = DR7_EXACT | 0b100 | (0b01 << 20) | (0b11 << 22); // L1, write, 8 bytes
    let hw_watch = run_probe(kvm, PROBE_CODE, KVM_GUESTDBG_USE_HW_BP, watchpoint)?;
    let int3 = run_probe(kvm, INT3_CODE, KVM_GUESTDBG_USE_SW_BP, [0; 8])?;
    Ok(DebugCaps {
        single_step: matches!(step, ProbeExit::Debug { exception: 1, .. }),
        hw_breakpoints: matches!(hw_break, ProbeExit::Debug { exception: 1, pc: BREAK_AT }),
        // A data watchpoint traps after the write: the pc is past it.
        hw_watchpoints: matches!(hw_watch, ProbeExit::Debug { exception: 1, pc } if pc > BREAK_AT),
        sw_breakpoints: matches!(int3, ProbeExit::Debug { exception: 3, .. }),
    })
}

/// Runs `code` once with guest debugging `control` and `debugreg`, until its
/// first exit.
fn run_probe(kvm: &Kvm, code: &[u8], control: u32, debugreg: [u64; 8]) -> Result<ProbeExit, SetupError> {
    let spec = MachineSpec { image: Arc::from(code), memory_size: 2 << 20, args: Vec::new() };
    let mut machine = Machine::new(kvm, &spec)?;
    let debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | control,
        arch: kvm_guest_debug_arch { debugreg },
        ..Default::default()
    };
    let fd = machine.vcpu.fd_mut();
    if fd.set_guest_debug(&debug).is_err() {
        return Ok(ProbeExit::Other);
    }
    // The probe guests end in a few instructions (a debug exit, hlt, or a
    // failure), so no timer is needed.
    Ok(loop {
        break match fd.run() {
            Ok(VcpuExit::Debug(arch)) => ProbeExit::Debug { exception: arch.exception, pc: arch.pc },
            Ok(VcpuExit::Hlt) => ProbeExit::Hlt,
            Err(error) if error.errno() == libc::EINTR => continue,
            _ => ProbeExit::Other,
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(single_step: bool, hw_breakpoints: bool, hw_watchpoints: bool, sw_breakpoints: bool) -> DebugCaps {
        DebugCaps { single_step, hw_breakpoints, hw_watchpoints, sw_breakpoints }
    }

    #[test]
    fn the_strategy_uses_the_best_of_what_the_host_honours() {
        use BreakpointMethod::*;
        // (step, hw bp, hw watch, int3) -> breakpoints, watchpoints
        let cases = [
            (caps(true, true, true, true), Int3, WatchpointMethod::DebugRegisters),
            (caps(true, true, false, false), DebugRegisters, WatchpointMethod::Unsupported),
            (caps(true, false, false, false), Stepping, WatchpointMethod::Unsupported),
            (caps(false, false, false, false), Unsupported, WatchpointMethod::Unsupported),
            (caps(false, true, true, false), DebugRegisters, WatchpointMethod::DebugRegisters),
            (caps(true, false, false, true), Int3, WatchpointMethod::Unsupported),
        ];
        for (caps, breakpoints, watchpoints) in cases {
            let strategy = caps.strategy();
            assert_eq!((strategy.breakpoints, strategy.watchpoints), (breakpoints, watchpoints), "{caps:?}");
            assert_eq!((strategy.single_step, strategy.hw_breakpoints), (caps.single_step, caps.hw_breakpoints));
        }
    }
}
