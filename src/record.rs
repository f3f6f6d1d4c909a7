//! Exit and slice records: what the core saw of every guest exit and every
//! slice, as small `Copy` values. The trace file, the exit inspector and the
//! schedule timeline are all made of these. Times are nanoseconds since the
//! run started, on the core thread's clock (the one clock of a run).

use std::fmt::Write as _;

use serde::Serialize;

use crate::hypercall::decode::Hypercall;

/// A VM's index in the run (the order of its scenario or command line).
pub type VmId = usize;

/// Bytes of guest text a record keeps (the start of an HC_printStr string,
/// the mailbox text of HC_numExitsByType, the byte of HC_print8bit).
pub const SNIPPET_BYTES: usize = 24;

/// The first few bytes of a guest string, kept by value.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Snippet {
    len: u8,
    bytes: [u8; SNIPPET_BYTES],
}

impl Snippet {
    /// The first [`SNIPPET_BYTES`] of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let len = bytes.len().min(SNIPPET_BYTES);
        let mut snippet = Self { len: len as u8, bytes: [0; SNIPPET_BYTES] };
        snippet.bytes[..len].copy_from_slice(&bytes[..len]);
        snippet
    }

    /// The bytes kept.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes as escaped text: printable ASCII as it is, the rest as
    /// `\n`, `\t` or `\xNN`, so that it fits on one line and cannot control
    /// a terminal.
    pub fn escaped(&self) -> String {
        let mut text = String::new();
        for &byte in self.as_bytes() {
            match byte {
                b'\n' => text.push_str("\\n"),
                b'\t' => text.push_str("\\t"),
                b'\\' => text.push_str("\\\\"),
                b'"' => text.push_str("\\\""),
                0x20..=0x7e => text.push(char::from(byte)),
                _ => {
                    let _ = write!(text, "\\x{byte:02x}");
                }
            }
        }
        text
    }
}

impl std::fmt::Debug for Snippet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.escaped())
    }
}

impl Serialize for Snippet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// What kind of exit a guest made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// An `in` instruction.
    IoIn,
    /// An `out` instruction.
    IoOut,
    /// HLT.
    Hlt,
    /// MMIO outside guest memory.
    Mmio,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR (an instruction the host cannot emulate, ...).
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry,
    /// Anything else KVM reported, or KVM_RUN failing.
    Other,
    /// Not an exit: the hypervisor injected a timer tick (vector in
    /// `value`) before this entry. Never counted among the exits.
    Interrupt,
}

impl ExitKind {
    /// Every kind, in the order counts are shown.
    pub const ALL: [Self; 9] = [
        Self::IoOut,
        Self::IoIn,
        Self::Hlt,
        Self::Mmio,
        Self::Shutdown,
        Self::InternalError,
        Self::FailEntry,
        Self::Other,
        Self::Interrupt,
    ];

    /// The name the trace uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoIn => "io_in",
            Self::IoOut => "io_out",
            Self::Hlt => "hlt",
            Self::Mmio => "mmio",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal_error",
            Self::FailEntry => "fail_entry",
            Self::Other => "other",
            Self::Interrupt => "interrupt",
        }
    }
}

/// What a hypercall did, as its handler reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallRecord {
    /// The hypercall, or None when the port access was not one (unknown
    /// port, wrong size or direction).
    pub hypercall: Option<Hypercall>,
    /// What it gave back: the value an `in` read, or the translation an
    /// HC_gvaToHva `out` made (0 for an invalid GVA).
    pub result: Option<u32>,
    /// Guest text it printed or returned (the first bytes).
    pub text: Snippet,
    /// The hypervisor refused it (a bad pointer, a misused port).
    pub refused: bool,
}

/// One guest exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord {
    /// When KVM_RUN returned with it.
    pub t_ns: u64,
    /// The VM.
    pub vm: VmId,
    /// Its vCPU that made the exit (or took the interrupt).
    pub vcpu: u16,
    /// This VM's exit count with this exit (what HC_numExits would say).
    pub number: u64,
    /// What kind of exit.
    pub kind: ExitKind,
    /// The port (port I/O).
    pub port: u16,
    /// Bytes per access (port I/O).
    pub size: u8,
    /// The value an `out` wrote (port I/O).
    pub value: u32,
    /// The guest physical address (MMIO).
    pub address: u64,
    /// The decoded hypercall (port I/O).
    pub call: CallRecord,
    /// The guest's rip as KVM reported it with the exit.
    pub rip: u64,
    /// Time the host spent handling it, from KVM_RUN's return.
    pub handling_ns: u32,
}

impl ExitRecord {
    /// Whether this exit was a port access that made a hypercall.
    pub fn is_hypercall(&self) -> bool {
        self.call.hypercall.is_some()
    }

    /// The exit in one line, decoded: `io_out 0xe9 HC_print8bit('H')`,
    /// `io_in 0xeb HC_numExits() = 14`, `hlt`.
    pub fn describe(&self) -> String {
        let kind = self.kind.name();
        let call = &self.call;
        let result = call.result.map(|value| format!(" = {value}")).unwrap_or_default();
        let text = if call.text.is_empty() { String::new() } else { format!(" \"{}\"", call.text.escaped()) };
        match self.kind {
            ExitKind::IoIn | ExitKind::IoOut => {
                let head = format!("{kind} 0x{:x}", self.port);
                let arg = match self.kind {
                    ExitKind::IoOut => format!("0x{:x}", self.value),
                    _ => String::new(),
                };
                match call.hypercall {
                    Some(Hypercall::Print8) => format!("{head} HC_print8bit('{}')", call.text.escaped()),
                    Some(Hypercall::Print32) => format!("{head} HC_print32bit({})", self.value),
                    Some(Hypercall::PrintStr) if call.refused => format!("{head} HC_printStr({arg}) refused"),
                    Some(Hypercall::PrintStr) => format!("{head} HC_printStr({arg}){text}"),
                    Some(Hypercall::GvaToHvaRequest) => format!("{head} HC_gvaToHva({arg}){result}"),
                    Some(Hypercall::GvaToHvaResult) => format!("{head} HC_gvaToHva() read{result}"),
                    Some(Hypercall::TimerStart) => format!("{head} HC_timerStart({} us)", self.value),
                    Some(Hypercall::Ipi) => {
                        let (vcpu, vector) = (self.value & 0xffff, (self.value >> 16) & 0xff);
                        let refused = if call.refused { " refused" } else { "" };
                        format!("{head} HC_ipi(vCPU {vcpu}, vector 0x{vector:x}){refused}")
                    }
                    Some(Hypercall::YieldTo) => format!("{head} HC_yieldTo(vCPU {})", self.value),
                    Some(Hypercall::LockWatch) if call.refused => format!("{head} HC_lockWatch({arg}) refused"),
                    Some(Hypercall::LockWatch) => format!("{head} HC_lockWatch({arg})"),
                    Some(Hypercall::NumExitsByType) => match call.result {
                        Some(address) => format!("{head} HC_numExitsByType() = 0x{address:x}{text}"),
                        None => format!("{head} HC_numExitsByType()"),
                    },
                    Some(call) => format!("{head} {}(){result}", call.name()),
                    None => {
                        let direction = if self.kind == ExitKind::IoIn { "in" } else { "out" };
                        format!("{head} not a hypercall ({}-byte {direction})", self.size)
                    }
                }
            }
            ExitKind::Mmio => format!("mmio 0x{:x}", self.address),
            ExitKind::Interrupt if call.hypercall == Some(Hypercall::Ipi) => {
                format!("interrupt 0x{:x} injected (IPI)", self.value)
            }
            ExitKind::Interrupt => format!("interrupt 0x{:x} injected (timer tick)", self.value),
            _ => kind.to_string(),
        }
    }
}

/// A time on the core's clock as seconds with six decimals, truncated (so
/// that a console line's `--timestamps` stamp is its exit's `t_ns` cut to
/// microseconds).
pub fn format_seconds(ns: u64) -> String {
    format!("{}.{:06}", ns / 1_000_000_000, ns % 1_000_000_000 / 1000)
}

/// Why a slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceEnd {
    /// The quantum timer's kick took the CPU back at the deadline.
    Deadline,
    /// The guest exited (I/O) after its deadline had passed, before the kick.
    ExitAfterDeadline,
    /// Under `io`: the guest's I/O exit moved the CPU to the next VM.
    IoSwitch,
    /// The guest gave up the rest of its slice (HC_yield).
    Yield,
    /// The guest halted.
    Halt,
    /// The guest waits in `hlt` with interrupts on, for its timer's tick.
    Sleep,
    /// The VM crashed.
    Crash,
    /// A front end's command needed the core (the slice's time is repaid).
    Command,
    /// One exit of a VM being stepped.
    Step,
    /// The VM stopped for its debugger (a breakpoint, a step, an interrupt).
    Debugger,
}

impl SliceEnd {
    /// The name the trace uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::ExitAfterDeadline => "exit_after_deadline",
            Self::IoSwitch => "io_switch",
            Self::Yield => "yield",
            Self::Halt => "halt",
            Self::Sleep => "sleep",
            Self::Crash => "crash",
            Self::Command => "command",
            Self::Step => "step",
            Self::Debugger => "debugger",
        }
    }
}

/// One slice: a VM holding the CPU from `start_ns` to `end_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRecord {
    /// The VM.
    pub vm: VmId,
    /// The vCPU it started with (a slice passes to a sibling when its vCPU
    /// sleeps, halts or yields to it; the exits say which ran).
    pub vcpu: u16,
    /// When the core started it.
    pub start_ns: u64,
    /// When it ended (back on the core, after the last exit's handling).
    pub end_ns: u64,
    /// What the scheduler charged the VM for it.
    pub charged_ns: u64,
    /// Why it ended.
    pub end: SliceEnd,
    /// Guest exits in it.
    pub exits: u32,
    /// Timer ticks injected into the VM in it (a sleeper's wake-up starts
    /// with one).
    pub injected: u32,
    /// The core that ran it (0 with `--cpus 1`).
    pub core: u16,
    /// The part of the guest's loop iterations in it spent spinning for a
    /// lock, in percent, as its lock records count them (None for a guest
    /// that shares none, or that counted nothing in it).
    pub spin_pct: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: ExitKind, port: u16, value: u32, call: CallRecord) -> ExitRecord {
        ExitRecord {
            t_ns: 0,
            vm: 0,
            vcpu: 0,
            number: 1,
            kind,
            port,
            size: 4,
            value,
            address: 0,
            call,
            rip: 0x10010,
            handling_ns: 0,
        }
    }

    fn call(hypercall: Hypercall, result: Option<u32>, text: &[u8]) -> CallRecord {
        CallRecord { hypercall: Some(hypercall), result, text: Snippet::new(text), refused: false }
    }

    #[test]
    fn exits_are_decoded_in_one_line() {
        let cases = [
            (io(ExitKind::IoOut, 0xe9, 0x48, call(Hypercall::Print8, None, b"H")), "io_out 0xe9 HC_print8bit('H')"),
            (io(ExitKind::IoOut, 0xe9, 10, call(Hypercall::Print8, None, b"\n")), "io_out 0xe9 HC_print8bit('\\n')"),
            (io(ExitKind::IoOut, 0xea, 2048, call(Hypercall::Print32, None, b"")), "io_out 0xea HC_print32bit(2048)"),
            (io(ExitKind::IoIn, 0xeb, 0, call(Hypercall::NumExits, Some(14), b"")), "io_in 0xeb HC_numExits() = 14"),
            (
                io(ExitKind::IoOut, 0xec, 0x11000, call(Hypercall::PrintStr, None, b"CS695\n")),
                "io_out 0xec HC_printStr(0x11000) \"CS695\\n\"",
            ),
            (
                io(ExitKind::IoIn, 0xed, 0, call(Hypercall::NumExitsByType, Some(0x1000), b"IO in: 3\n")),
                "io_in 0xed HC_numExitsByType() = 0x1000 \"IO in: 3\\n\"",
            ),
            (
                io(ExitKind::IoOut, 0xee, 0xffff_ffff, call(Hypercall::GvaToHvaRequest, Some(0), b"")),
                "io_out 0xee HC_gvaToHva(0xffffffff) = 0",
            ),
            (
                io(ExitKind::IoIn, 0xee, 0, call(Hypercall::GvaToHvaResult, Some(77), b"")),
                "io_in 0xee HC_gvaToHva() read = 77",
            ),
            (io(ExitKind::IoOut, 0xef, 0, call(Hypercall::Yield, None, b"")), "io_out 0xef HC_yield()"),
            (io(ExitKind::IoIn, 0xf2, 0, call(Hypercall::VcpuId, Some(3), b"")), "io_in 0xf2 HC_vcpuId() = 3"),
            (
                io(ExitKind::IoOut, 0xf4, 0x0040_0001, call(Hypercall::Ipi, None, b"")),
                "io_out 0xf4 HC_ipi(vCPU 1, vector 0x40)",
            ),
            (
                io(ExitKind::IoOut, 0xf4, 0x0010_0001, CallRecord { refused: true, ..call(Hypercall::Ipi, None, b"") }),
                "io_out 0xf4 HC_ipi(vCPU 1, vector 0x10) refused",
            ),
            (io(ExitKind::IoOut, 0xf5, 2, call(Hypercall::YieldTo, None, b"")), "io_out 0xf5 HC_yieldTo(vCPU 2)"),
            (
                io(ExitKind::IoOut, 0x80, 0x42, CallRecord { refused: true, ..Default::default() }),
                "io_out 0x80 not a hypercall (4-byte out)",
            ),
        ];
        for (record, text) in cases {
            assert_eq!(record.describe(), text);
        }
        let hlt = ExitRecord { kind: ExitKind::Hlt, ..cases_base() };
        assert_eq!(hlt.describe(), "hlt");
        let tick = ExitRecord { kind: ExitKind::Interrupt, value: 0x20, ..cases_base() };
        assert_eq!(tick.describe(), "interrupt 0x20 injected (timer tick)");
        let ipi = ExitRecord { call: call(Hypercall::Ipi, None, b""), value: 0x40, ..tick };
        assert_eq!(ipi.describe(), "interrupt 0x40 injected (IPI)");
        assert_eq!(
            ExitRecord { kind: ExitKind::Mmio, address: 0x4000_0000, ..cases_base() }.describe(),
            "mmio 0x40000000"
        );
    }

    fn cases_base() -> ExitRecord {
        io(ExitKind::IoOut, 0, 0, CallRecord::default())
    }

    #[test]
    fn seconds_are_truncated_to_microseconds() {
        assert_eq!(format_seconds(10_166_999), "0.010166");
        assert_eq!(format_seconds(2_000_000_001), "2.000000");
    }

    #[test]
    fn snippets_keep_the_first_bytes_escaped() {
        let snippet = Snippet::new(b"a string longer than twenty-four bytes");
        assert_eq!(snippet.as_bytes(), b"a string longer than twe");
        assert_eq!(Snippet::new(b"\x1b[2J\"\\").escaped(), "\\x1b[2J\\\"\\\\");
        assert!(Snippet::new(b"").is_empty());
    }
}
