//! Debugging one guest with gdb while the others run.
//!
//! A VM started with `--gdb NAME=ADDR` waits at its entry point for gdb. The
//! remote protocol is served by [`server`] on a thread of its own (gdbstub
//! does the protocol); it asks the core for what gdb wants with
//! [`DebugRequest`]s, sent as commands like any front end's, and the core
//! answers on the VM's own reply channel with [`DebugReply`]s. The core stays
//! the only thread that touches KVM. [`session`] is the core's side: the
//! breakpoints and watchpoints of a VM and how they map onto what this host's
//! KVM honours.

pub mod address;
pub mod layout;
pub mod read_cap;
pub mod server;
pub mod session;

pub use address::ListenAddress;

use serde::Serialize;

use crate::vm::CpuState;

/// What a breakpoint is, as gdb asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// `break`: served as the host allows (int3, debug registers, stepping).
    Software,
    /// `hbreak`: a debug register.
    Hardware,
}

/// What a watchpoint watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// Writes (`watch`).
    Write,
    /// Reads (`rwatch`).
    Read,
    /// Reads and writes (`awatch`).
    Access,
}

/// What the gdb server asks of the core for one VM.
#[derive(Debug, Clone, PartialEq)]
pub enum DebugRequest {
    /// A debugger connected from `peer`; answered with `Done`.
    Attach {
        /// Who.
        peer: String,
    },
    /// The debugger left: `reason` is None for gdb's `detach` (the VM goes
    /// on), else why the connection ended (the VM stays stopped for the next
    /// debugger). Not answered.
    Detach {
        /// Why the connection ended, if it was not a detach.
        reason: Option<String>,
    },
    /// A second debugger was turned away. Not answered.
    Refused {
        /// Who.
        peer: String,
    },
    /// vCPU `vcpu`'s registers (gdb's thread `vcpu + 1`); answered with `Registers`.
    ReadRegisters {
        /// Which vCPU.
        vcpu: usize,
    },
    /// Answered with `Done`.
    WriteRegisters {
        /// Which vCPU.
        vcpu: usize,
        /// The registers gdb wrote.
        state: Box<CpuState>,
    },
    /// Answered with `Memory`: the bytes up to the first unmapped address
    /// (through vCPU `vcpu`'s page tables).
    ReadMemory {
        /// Whose page tables translate it.
        vcpu: usize,
        /// Guest virtual address.
        address: u64,
        /// How many bytes.
        length: usize,
    },
    /// Answered with `Done`.
    WriteMemory {
        /// Whose page tables translate it.
        vcpu: usize,
        /// Guest virtual address.
        address: u64,
        /// What to write.
        bytes: Vec<u8>,
    },
    /// Insert or remove a breakpoint; answered with `Done(Ok(false))` when
    /// it cannot be had (no debug register left, say).
    Breakpoint {
        /// Which kind.
        kind: BreakKind,
        /// Guest virtual address.
        address: u64,
        /// Insert (else remove).
        insert: bool,
    },
    /// Insert or remove a watchpoint; answered like `Breakpoint`.
    Watchpoint {
        /// Which kind.
        kind: WatchKind,
        /// Guest virtual address.
        address: u64,
        /// Bytes watched.
        length: u64,
        /// Insert (else remove).
        insert: bool,
    },
    /// Run until a breakpoint, a watchpoint, an interrupt or the end;
    /// answered with `Stopped` or `Ended` when that happens.
    Continue,
    /// Run one instruction of vCPU `vcpu` (its siblings stay stopped);
    /// answered with `Stopped` or `Ended`.
    Step {
        /// Which vCPU.
        vcpu: usize,
    },
    /// Stop a VM that was continued; answered with `Stopped` (unless it
    /// stopped or ended on its own first, whose answer is then the one).
    Interrupt,
    /// End the VM. Not answered.
    Kill,
}

/// The core's answers, on the VM's reply channel.
#[derive(Debug, Clone, PartialEq)]
pub enum DebugReply {
    /// The registers.
    Registers(Result<Box<CpuState>, String>),
    /// Memory read: the bytes up to the first unmapped address.
    Memory(Vec<u8>),
    /// Done; `Ok(false)` means it could not be had.
    Done(Result<bool, String>),
    /// The VM stopped for the debugger (all its vCPUs: all-stop), for this
    /// reason on vCPU `vcpu`.
    Stopped {
        /// Why.
        stop: DebugStop,
        /// The vCPU that stopped it (gdb's thread `vcpu + 1`).
        vcpu: usize,
    },
    /// The VM ended.
    Ended(DebugEnd),
}

/// Why a VM under gdb is stopped: what the TUI shows as its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "reason")]
pub enum DebugStop {
    /// At its entry point, waiting for gdb (or for the next gdb after one left).
    Waiting,
    /// At a breakpoint.
    Breakpoint {
        /// Its address.
        address: u64,
    },
    /// One instruction was stepped.
    Step,
    /// A watchpoint's bytes were accessed.
    Watchpoint {
        /// The watched address.
        address: u64,
        /// What for.
        kind: WatchKind,
    },
    /// gdb interrupted it (Ctrl-C).
    Interrupt,
    /// It crashed: gdb can look at the registers and memory of the wreck.
    Crashed,
    /// It halted: gdb can look at it, detach, or continue to hear it exited.
    Halted,
}

impl DebugStop {
    /// In a few words, as the TUI and `[matrix]` lines say it.
    pub fn describe(&self) -> String {
        match self {
            Self::Waiting => "waiting for gdb".into(),
            Self::Breakpoint { address } => format!("breakpoint at 0x{address:x}"),
            Self::Step => "step".into(),
            Self::Watchpoint { address, kind } => {
                let kind = match kind {
                    WatchKind::Write => "write",
                    WatchKind::Read => "read",
                    WatchKind::Access => "access",
                };
                format!("watchpoint ({kind}) at 0x{address:x}")
            }
            Self::Interrupt => "interrupt".into(),
            Self::Crashed => "crashed".into(),
            Self::Halted => "halted".into(),
        }
    }
}

/// How a VM under gdb ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugEnd {
    /// With HLT, and gdb continued it after the halt (gdb: exited normally).
    Halted,
    /// A crash, and gdb continued it after the crash (gdb: terminated by SIGSEGV).
    Crashed,
    /// By gdb's `kill`.
    Killed,
}

/// Where a VM's debugger stands, for the front ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebuggerStatus {
    /// Waiting for gdb on this address.
    Listening {
        /// HOST:PORT or a socket path.
        address: String,
        /// How breakpoints and watchpoints are served on this host.
        serving: String,
    },
    /// gdb is connected.
    Connected {
        /// From where.
        peer: String,
    },
    /// gdb left.
    Disconnected {
        /// How (detach, or the connection's end).
        reason: String,
    },
    /// A second debugger was refused.
    Refused {
        /// Who.
        peer: String,
    },
    /// gdb let the VM run (`continue`).
    Continued,
    /// The VM stopped for gdb.
    Stopped(DebugStop),
}

impl DebuggerStatus {
    /// In one line, as `[matrix]` lines say it.
    pub fn describe(&self) -> String {
        match self {
            Self::Listening { address, serving } => {
                format!("gdb: waiting at the entry point for gdb's `target remote {address}` ({serving})")
            }
            Self::Connected { peer } => format!("gdb: debugger connected from {peer}"),
            Self::Disconnected { reason } => format!("gdb: debugger {reason}"),
            Self::Refused { peer } => format!("gdb: refused a second debugger from {peer} (one is connected)"),
            Self::Continued => "gdb: continued".into(),
            Self::Stopped(stop) => format!("gdb: stopped: {}", stop.describe()),
        }
    }
}
