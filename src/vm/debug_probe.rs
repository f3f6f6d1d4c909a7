//! The probe of what this host's KVM honours of KVM_SET_GUEST_DEBUG: four
//! tiny VMs, each run to its first exit with one kind of guest debugging
//! (a single step, an execution breakpoint in DR0, a write watchpoint in
//! DR1, `int3` intercepted), a few milliseconds in all. What the findings
//! mean for a debugger is [`super::guest_debug::Strategy`].

use std::sync::Arc;

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug,
    kvm_guest_debug_arch,
};
use kvm_ioctls::{Kvm, VcpuExit};

use super::guest_debug::{DR7_EXACT, DebugCaps};
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
    let spec = MachineSpec {
        image: Arc::from(code),
        memory_size: 2 << 20,
        args: Vec::new(),
        layout: Default::default(),
        restore: None,
        vcpus: 1,
    };
    let mut machine = Machine::new(kvm, &spec)?;
    let debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | control,
        arch: kvm_guest_debug_arch { debugreg },
        ..Default::default()
    };
    let fd = machine.boot_vcpu_mut().fd_mut();
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
