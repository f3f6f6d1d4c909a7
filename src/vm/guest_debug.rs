//! What this host's KVM honours of KVM_SET_GUEST_DEBUG, found by running
//! probe VMs, and how a debugger should be served with it.
//!
//! On hardware-virtualized KVM everything works as documented. On hosts that
//! emulate guest code (kvm_pvm) some of it does not: `int3` is not
//! intercepted with KVM_GUESTDBG_USE_SW_BP (it ends the VM with an emulation
//! failure) and data watchpoints in the debug registers never fire, while
//! single-stepping and execution breakpoints do. So the probe (`debug_probe.rs`) tries each on
//! a tiny guest of its own, and [`Strategy`] says
//! what to use: software breakpoints by `int3` where intercepted, else by the
//! debug registers (four at a time), else by stepping; watchpoints by the
//! debug registers where they fire, else by stepping and comparing.
//!
//! [`GuestDebug`] is what KVM_SET_GUEST_DEBUG is given, built from the
//! breakpoints and watchpoints a debugger asked for; [`DebugExit`] is what a
//! KVM_EXIT_DEBUG reported.

use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP};

/// DR7's local-exact and global-exact bits (set as debuggers do).
pub(super) const DR7_EXACT: u64 = 0x300;

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
    /// Single-stepping and comparing the watched bytes after each
    /// instruction: writes only, any number, slowly. (gdb does not fall back
    /// to software watchpoints by itself when a remote stub refuses `Z2`: it
    /// fails the `continue`. So the stub watches by stepping where the debug
    /// registers do not fire.)
    Stepping,
    /// None can be had.
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

impl Strategy {
    /// In a few words: "breakpoints by the debug registers, watchpoints by stepping".
    pub fn describe(&self) -> String {
        let breakpoints = match self.breakpoints {
            BreakpointMethod::Int3 => "int3",
            BreakpointMethod::DebugRegisters => "the debug registers",
            BreakpointMethod::Stepping => "stepping",
            BreakpointMethod::Unsupported => "nothing (none can be had here)",
        };
        let watchpoints = match self.watchpoints {
            WatchpointMethod::DebugRegisters => "the debug registers",
            WatchpointMethod::Stepping => "stepping",
            WatchpointMethod::Unsupported => "nothing (none can be had here)",
        };
        format!("breakpoints by {breakpoints}, watchpoints by {watchpoints}")
    }
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
        let watchpoints = if self.hw_watchpoints {
            WatchpointMethod::DebugRegisters
        } else if self.single_step {
            WatchpointMethod::Stepping
        } else {
            WatchpointMethod::Unsupported
        };
        Strategy { breakpoints, hw_breakpoints: self.hw_breakpoints, watchpoints, single_step: self.single_step }
    }
}

/// What one debug register (DR0-DR3) watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugSlot {
    /// Execution of the instruction at this address.
    Execute(u64),
    /// A write to `length` bytes (1, 2, 4 or 8, aligned) at `address`.
    Write {
        /// Where.
        address: u64,
        /// How many bytes.
        length: u64,
    },
    /// A read or write of `length` bytes at `address`.
    Access {
        /// Where.
        address: u64,
        /// How many bytes.
        length: u64,
    },
}

impl DebugSlot {
    /// Whether the debug registers can watch `length` bytes at `address`:
    /// 1, 2, 4 or 8 bytes, aligned to their size.
    pub fn fits(address: u64, length: u64) -> bool {
        matches!(length, 1 | 2 | 4 | 8) && address % length == 0
    }

    fn address(self) -> u64 {
        match self {
            Self::Execute(address) | Self::Write { address, .. } | Self::Access { address, .. } => address,
        }
    }

    /// This slot's bits in DR7 when it is slot `index`: enable, kind, length.
    fn dr7_bits(self, index: usize) -> u64 {
        let (kind, length) = match self {
            Self::Execute(_) => (0b00, 1),
            Self::Write { length, .. } => (0b01, length),
            Self::Access { length, .. } => (0b11, length),
        };
        let length_code = match length {
            2 => 0b01,
            8 => 0b10,
            4 => 0b11,
            _ => 0b00,
        };
        (1 << (2 * index)) | (kind << (16 + 4 * index)) | (length_code << (18 + 4 * index))
    }
}

/// What KVM_SET_GUEST_DEBUG is given for a VM under a debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestDebug {
    /// Report a debug exit after every instruction.
    pub single_step: bool,
    /// Intercept `int3` (KVM_GUESTDBG_USE_SW_BP).
    pub intercept_int3: bool,
    /// DR0-DR3.
    pub slots: [Option<DebugSlot>; 4],
}

impl GuestDebug {
    /// Whether any of it is on (else guest debugging is switched off).
    pub fn is_enabled(&self) -> bool {
        self.single_step || self.intercept_int3 || self.slots.iter().any(Option::is_some)
    }

    /// The `control` flags of `kvm_guest_debug`.
    pub fn control(&self) -> u32 {
        if !self.is_enabled() {
            return 0;
        }
        let mut control = KVM_GUESTDBG_ENABLE;
        if self.single_step {
            control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if self.intercept_int3 {
            control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if self.slots.iter().any(Option::is_some) {
            control |= KVM_GUESTDBG_USE_HW_BP;
        }
        control
    }

    /// DR0-DR3 and DR7 as `kvm_guest_debug_arch` takes them.
    pub fn debugreg(&self) -> [u64; 8] {
        let mut registers = [0; 8];
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = slot {
                registers[index] = slot.address();
                registers[7] |= slot.dr7_bits(index);
            }
        }
        if registers[7] != 0 {
            registers[7] |= DR7_EXACT;
        }
        registers
    }
}

/// What a KVM_EXIT_DEBUG reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception: 1 (#DB: a step or a debug register) or 3 (#BP: int3).
    pub exception: u32,
    /// The guest's rip.
    pub pc: u64,
    /// DR6: which debug register fired (bits 0-3), single step (bit 14).
    pub dr6: u64,
}

/// What a debug exit means, given the settings it happened under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugEvent {
    /// An intercepted `int3` at `pc`.
    Int3,
    /// Debug register `n` fired.
    Slot(usize),
    /// One instruction was stepped.
    Step,
}

impl DebugExit {
    /// Decodes the exit. DR6 says which register fired; where a host leaves
    /// DR6 clear, an execution slot at the pc is taken to be the one.
    pub fn event(&self, debug: &GuestDebug) -> DebugEvent {
        if self.exception == 3 {
            return DebugEvent::Int3;
        }
        let fired = (0..4).find(|&index| self.dr6 & (1 << index) != 0 && debug.slots[index].is_some());
        let at_pc = || debug.slots.iter().position(|slot| *slot == Some(DebugSlot::Execute(self.pc)));
        match fired.or_else(at_pc) {
            Some(index) => DebugEvent::Slot(index),
            None => DebugEvent::Step,
        }
    }
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
            (caps(true, true, false, false), DebugRegisters, WatchpointMethod::Stepping),
            (caps(true, false, false, false), Stepping, WatchpointMethod::Stepping),
            (caps(false, false, false, false), Unsupported, WatchpointMethod::Unsupported),
            (caps(false, true, true, false), DebugRegisters, WatchpointMethod::DebugRegisters),
            (caps(false, true, false, false), DebugRegisters, WatchpointMethod::Unsupported),
            (caps(true, false, false, true), Int3, WatchpointMethod::Stepping),
        ];
        for (caps, breakpoints, watchpoints) in cases {
            let strategy = caps.strategy();
            assert_eq!((strategy.breakpoints, strategy.watchpoints), (breakpoints, watchpoints), "{caps:?}");
            assert_eq!((strategy.single_step, strategy.hw_breakpoints), (caps.single_step, caps.hw_breakpoints));
        }
    }

    #[test]
    fn debug_registers_are_encoded_as_the_sdm_says() {
        let mut debug = GuestDebug::default();
        assert_eq!((debug.control(), debug.debugreg()), (0, [0; 8]));
        debug.slots[0] = Some(DebugSlot::Execute(0x10010));
        debug.slots[2] = Some(DebugSlot::Write { address: 0x400, length: 4 });
        debug.slots[3] = Some(DebugSlot::Access { address: 0x408, length: 8 });
        let registers = debug.debugreg();
        assert_eq!(&registers[..4], &[0x10010, 0, 0x400, 0x408]);
        // L0; L2 with R/W2 = 01 (write), LEN2 = 11 (4 bytes); L3 with 11 (access), 10 (8 bytes); LE, GE.
        assert_eq!(registers[7], 0b1 | 0b1_0000 | (0b1101 << 24) | 0b100_0000 | (0b1011 << 28) | 0x300);
        assert_eq!(debug.control(), KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        debug.single_step = true;
        assert_ne!(debug.control() & KVM_GUESTDBG_SINGLESTEP, 0);
        assert!(DebugSlot::fits(0x400, 4) && !DebugSlot::fits(0x401, 4) && !DebugSlot::fits(0x400, 3));
    }

    #[test]
    fn debug_exits_are_told_apart() {
        let mut debug = GuestDebug { single_step: true, ..Default::default() };
        debug.slots[1] = Some(DebugSlot::Execute(0x10020));
        debug.slots[2] = Some(DebugSlot::Write { address: 0x400, length: 4 });
        let exit = |exception, pc, dr6| DebugExit { exception, pc, dr6 };
        assert_eq!(exit(3, 0x10005, 0).event(&debug), DebugEvent::Int3);
        assert_eq!(exit(1, 0x10030, 1 << 2).event(&debug), DebugEvent::Slot(2));
        assert_eq!(exit(1, 0x10020, 1 << 1).event(&debug), DebugEvent::Slot(1));
        // A host that leaves DR6 clear: the execution slot at the pc.
        assert_eq!(exit(1, 0x10020, 0).event(&debug), DebugEvent::Slot(1));
        assert_eq!(exit(1, 0x10021, 1 << 14).event(&debug), DebugEvent::Step);
        // A DR6 bit for a slot not in use is not believed.
        assert_eq!(exit(1, 0x10021, 1).event(&debug), DebugEvent::Step);
    }
}
