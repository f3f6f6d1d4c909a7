//! The hypercalls of the guest ABI, as plain functions over guest memory, the
//! VM's counters and its console. The core calls [`handle_out`] / [`handle_in`]
//! for each port exit after counting it; nothing here needs a real VM.

pub mod decode;
pub mod guest;
pub mod lock_records;
pub mod ports;

use vm_memory::{Bytes, GuestAddress};

pub use decode::{Direction, Hypercall, Misuse, decode};
pub use guest::{GuestView, PointerError, Translate, linear_pointer};
pub use ports::{PortMap, decode_mapped};

use crate::console::ConsoleOut;
use crate::record::{CallRecord, Snippet};
use crate::stats::VmCounters;
use crate::vm::layout::{MAILBOX, MAILBOX_SLOT_SIZE, MAILBOX_SLOTS};
use crate::vm::{CpuMode, GuestMemory, PortAccess};

/// Longest string HC_printStr reads, NUL included.
pub const PRINT_STR_LIMIT: usize = 4096;

/// What the scheduler should do after a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Go on running the VM.
    Continue,
    /// The guest gave up the rest of its slice (HC_yield).
    Yield,
    /// Start the VM's virtual timer with this period in µs (HC_timerStart).
    TimerStart(u32),
    /// Stop it (HC_timerStop).
    TimerStop,
    /// Raise `vector` on vCPU `vcpu` of the VM (HC_ipi; checked by the caller,
    /// which knows the vCPUs).
    Ipi {
        /// The target vCPU's index.
        vcpu: u32,
        /// The interrupt vector.
        vector: u8,
    },
    /// Give the rest of the slice to vCPU `vcpu` of the VM (HC_yieldTo).
    YieldTo(u32),
}

/// Which vCPU made the exit, and how many the VM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuIdentity {
    /// Its index (0 is the bootstrap vCPU).
    pub index: u32,
    /// The VM's vCPUs.
    pub count: u32,
}

impl Default for VcpuIdentity {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// Hypercall state that lives between exits.
#[derive(Debug, Clone)]
pub struct HypercallState {
    /// Where the mailbox lies in this VM (0x1000 unless the image covers it).
    mailbox: u64,
    /// Calls of HC_numExitsByType so far: picks the next mailbox slot (one
    /// count for all of a VM's vCPUs, so that two never share a slot).
    mailbox_calls: u64,
    /// Where the guest's lock records lie (guest physical), once it named
    /// them with HC_lockWatch.
    pub lock_records: Option<u64>,
}

impl Default for HypercallState {
    fn default() -> Self {
        Self::with_mailbox(MAILBOX)
    }
}

impl HypercallState {
    /// The state of a VM whose mailbox lies at `mailbox`.
    pub fn with_mailbox(mailbox: u64) -> Self {
        Self { mailbox, mailbox_calls: 0, lock_records: None }
    }

    /// What a snapshot keeps (the mailbox's place follows from the machine),
    /// with the saved vCPU's HC_gvaToHva result.
    pub fn progress(&self, gva_result: Option<u32>) -> HypercallProgress {
        HypercallProgress { mailbox_calls: self.mailbox_calls, gva_result, lock_records: self.lock_records }
    }

    /// A restored VM's state: its mailbox at `mailbox`, its calls as saved
    /// (the gvaToHva result goes back to its vCPU).
    pub fn resumed(mailbox: u64, progress: HypercallProgress) -> Self {
        Self { mailbox, mailbox_calls: progress.mailbox_calls, lock_records: progress.lock_records }
    }
}

/// How far a VM's hypercalls have got: the part of their state that a
/// snapshot carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HypercallProgress {
    /// Calls of HC_numExitsByType so far (they pick the mailbox slot).
    pub mailbox_calls: u64,
    /// An HC_gvaToHva result waiting for its `in`.
    pub gva_result: Option<u32>,
    /// Where the guest's lock records lie (HC_lockWatch), if it named them.
    pub lock_records: Option<u64>,
}

/// The per-VM things a hypercall may change, and the VM settings it follows.
pub struct VmIo<'a> {
    /// Exit, fault and preemption counters (this exit already counted).
    pub counters: &'a mut VmCounters,
    /// State kept between hypercalls.
    pub state: &'a mut HypercallState,
    /// Where console output goes.
    pub console: &'a mut ConsoleOut,
    /// The VM's CPU mode: how its pointers are read.
    pub mode: CpuMode,
    /// Its mapped ports.
    pub ports: &'a PortMap,
    /// The vCPU that made the exit.
    pub vcpu: VcpuIdentity,
    /// That vCPU's HC_gvaToHva result waiting for its `in` (each vCPU has its own).
    pub gva_result: &'a mut Option<u32>,
}

/// Handles an `out` of `value` to `port`; says what to do next and what
/// the hypercall did (for the exit's record).
pub fn handle_out<T: Translate + ?Sized>(
    guest: &GuestView<'_, T>,
    io: &mut VmIo<'_>,
    port: u16,
    access: PortAccess,
    value: u32,
) -> (Outcome, CallRecord) {
    let call = match decode_mapped(port, Direction::Out, access, io.ports) {
        Ok(call) => call,
        Err(misuse) if misuse.expected.is_none() && io.ports.show_unknown => {
            return (Outcome::Continue, show_port(io, format_args!("out 0x{port:x} \u{2190} {value}")));
        }
        Err(misuse) => return (Outcome::Continue, refuse(io, &misuse, &format!("value 0x{value:x} ignored"))),
    };
    let mut record = CallRecord { hypercall: Some(call), ..Default::default() };
    match call {
        Hypercall::Print8 => {
            io.console.write(&[value as u8]);
            record.text = Snippet::new(&[value as u8]);
        }
        Hypercall::Print32 => {
            let mut line = [0u8; 11];
            io.console.write(decimal_line(value, &mut line));
        }
        Hypercall::PrintStr => match read_string(guest, io.mode, value) {
            Ok(text) => {
                io.console.write(&text);
                record.text = Snippet::new(&text);
            }
            Err(error) => {
                io.counters.faults += 1;
                io.console.note(format_args!("HC_printStr(0x{value:x}) refused: {error}; nothing printed"));
                record.refused = true;
            }
        },
        Hypercall::GvaToHvaRequest => {
            let host = linear_pointer(io.mode, value, guest.translator).and_then(|p| guest.host_address(p.linear));
            let result = match host {
                Ok(host) => host as u32,
                Err(_) => {
                    io.console.write(b"Invalid GVA\n");
                    0
                }
            };
            *io.gva_result = Some(result);
            record.result = Some(result);
        }
        Hypercall::Yield => return (Outcome::Yield, record),
        Hypercall::TimerStart => return (Outcome::TimerStart(value), record),
        Hypercall::TimerStop => return (Outcome::TimerStop, record),
        Hypercall::Ipi => {
            let (vcpu, vector) = (value & 0xffff, (value >> 16) as u8);
            return (Outcome::Ipi { vcpu, vector }, record);
        }
        Hypercall::YieldTo => return (Outcome::YieldTo(value), record),
        Hypercall::LockWatch => match lock_records::place(guest, io.mode, value, io.vcpu.count) {
            Ok(table) => io.state.lock_records = table,
            Err(error) => {
                io.counters.faults += 1;
                io.console
                    .note(format_args!("HC_lockWatch(0x{value:x}) refused: {error}; its lock records are not read"));
                record.refused = true;
            }
        },
        Hypercall::NumExits
        | Hypercall::NumExitsByType
        | Hypercall::GvaToHvaResult
        | Hypercall::VcpuId
        | Hypercall::VcpuCount => {
            unreachable!("decode returns only `out` hypercalls for an out")
        }
    }
    (Outcome::Continue, record)
}

/// The NUL-terminated string at pointer `value`, as code in `mode` sees it:
/// in real mode it must end within DS's 64 KiB segment.
fn read_string<T: Translate + ?Sized>(
    guest: &GuestView<'_, T>,
    mode: CpuMode,
    value: u32,
) -> Result<Vec<u8>, PointerError> {
    let pointer = linear_pointer(mode, value, guest.translator)?;
    let limit = pointer.segment_left.map_or(PRINT_STR_LIMIT, |left| (left as usize).min(PRINT_STR_LIMIT));
    match guest.c_string(pointer.linear, limit) {
        Err(PointerError::NoNulWithin(_)) if limit < PRINT_STR_LIMIT => Err(PointerError::NoNulInSegment(value)),
        result => result,
    }
}

/// `value` in decimal and a newline, written at the end of `line`. By hand,
/// not with `fmt`: this is the exit a ticker makes, and fmt's machinery,
/// cold after each KVM_RUN, cost 0.15 µs an exit with 256 tickers here.
fn decimal_line(mut value: u32, line: &mut [u8; 11]) -> &[u8] {
    let mut start = line.len() - 1;
    line[start] = b'\n';
    loop {
        start -= 1;
        line[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &line[start..];
        }
    }
}

/// Handles an `in` from `port`, filling `data` with the value the guest
/// reads; says what the hypercall did (for the exit's record).
pub fn handle_in(
    memory: &GuestMemory,
    io: &mut VmIo<'_>,
    port: u16,
    access: PortAccess,
    data: &mut [u8],
) -> CallRecord {
    let call = match decode_mapped(port, Direction::In, access, io.ports) {
        Ok(call) => call,
        Err(misuse) => {
            data.fill(0xff);
            if misuse.expected.is_none() && io.ports.show_unknown {
                let all_ones = u32::MAX >> (32 - 8 * data.len().clamp(1, 4));
                return show_port(io, format_args!("in 0x{port:x} \u{2192} 0x{all_ones:x}"));
            }
            return refuse(io, &misuse, "it reads all ones");
        }
    };
    let mut record = CallRecord { hypercall: Some(call), ..Default::default() };
    let value: u32 = match call {
        Hypercall::NumExits => io.counters.exits.total() as u32,
        Hypercall::NumExitsByType => {
            let (address, text) = write_exit_counts(memory, io);
            record.text = Snippet::new(text.trim_end_matches('\0').as_bytes());
            address
        }
        Hypercall::GvaToHvaResult => io.gva_result.take().unwrap_or(0),
        Hypercall::VcpuId => io.vcpu.index,
        Hypercall::VcpuCount => io.vcpu.count,
        Hypercall::Print8
        | Hypercall::Print32
        | Hypercall::PrintStr
        | Hypercall::GvaToHvaRequest
        | Hypercall::Yield
        | Hypercall::TimerStart
        | Hypercall::TimerStop
        | Hypercall::Ipi
        | Hypercall::YieldTo
        | Hypercall::LockWatch => unreachable!("decode returns only `in` hypercalls for an in"),
    };
    data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    record.result = Some(value);
    record
}

/// Writes `IO in: X\nIO out: Y\n` into the next mailbox slot; returns its
/// address and the text written.
fn write_exit_counts(memory: &GuestMemory, io: &mut VmIo<'_>) -> (u32, String) {
    let slot = io.state.mailbox_calls % MAILBOX_SLOTS;
    io.state.mailbox_calls += 1;
    let exits = io.counters.exits;
    let text = format!("IO in: {}\nIO out: {}\n\0", exits.io_in, exits.io_out);
    debug_assert!(text.len() as u64 <= MAILBOX_SLOT_SIZE, "two u64 counts fit a slot");
    let address = io.state.mailbox + slot * MAILBOX_SLOT_SIZE;
    memory
        .write_slice(text.as_bytes(), GuestAddress(address))
        .expect("the mailbox lies inside the smallest guest memory");
    (address as u32, text)
}

/// An access to a port that makes no hypercall, shown as a plain console
/// line (the VM asked for `show_ports`); still counted as an unknown port.
fn show_port(io: &mut VmIo<'_>, line: std::fmt::Arguments<'_>) -> CallRecord {
    io.counters.exits.unknown_port += 1;
    io.console.write(format!("{line}\n").as_bytes());
    CallRecord::default()
}

/// Unknown-port accesses after which a VM is told what may be wrong, once.
pub const UNKNOWN_PORT_HINT_AFTER: u64 = 10;

fn refuse(io: &mut VmIo<'_>, misuse: &Misuse, consequence: &str) -> CallRecord {
    io.counters.exits.unknown_port += 1;
    io.console.note(format_args!("{misuse}; {consequence}"));
    if io.counters.exits.unknown_port == UNKNOWN_PORT_HINT_AFTER {
        // The usual causes: code for another mode (16-bit code run as
        // 64-bit reads its own instructions wrong) or a course's own ports.
        let mode = match io.mode {
            CpuMode::Long => {
                "this VM runs in long mode: a guest built for real or protected mode needs --mode NAME=real \
                              (or protected; mode = \"real\" in a scenario)"
            }
            _ => "check that the VM's --mode is the one its guest was built for",
        };
        io.console.note(format_args!(
            "{UNKNOWN_PORT_HINT_AFTER} port accesses made no hypercall: {mode}; a guest that prints through ports of \
             its own needs them mapped (--ports NAME=0x10:print32bit) or shown (--show-ports NAME)"
        ));
    }
    CallRecord { refused: true, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::guest::tests::FakeTables;
    use super::*;
    use crate::vm::memory;
    use vm_memory::GuestMemoryBackend as _;

    const SIZE: u64 = 2 << 20;

    struct Rig {
        memory: GuestMemory,
        tables: FakeTables,
        counters: VmCounters,
        state: HypercallState,
        console: ConsoleOut,
        mode: CpuMode,
        ports: PortMap,
        vcpu: VcpuIdentity,
        gva_result: Option<u32>,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                memory: memory::allocate(SIZE).unwrap(),
                tables: FakeTables { mapped: SIZE, remap: vec![] },
                counters: VmCounters::default(),
                state: HypercallState::default(),
                console: ConsoleOut::default(),
                mode: CpuMode::Long,
                ports: PortMap::default(),
                vcpu: VcpuIdentity::default(),
                gva_result: None,
            }
        }

        fn io(&mut self) -> VmIo<'_> {
            VmIo {
                counters: &mut self.counters,
                state: &mut self.state,
                console: &mut self.console,
                mode: self.mode,
                ports: &self.ports,
                vcpu: self.vcpu,
                gva_result: &mut self.gva_result,
            }
        }

        fn out(&mut self, port: u16, size: u8, value: u32) -> (Outcome, CallRecord) {
            self.counters.exits.io_out += 1;
            let (memory, tables) = (self.memory.clone(), self.tables.clone());
            let view = GuestView { memory: &memory, memory_size: SIZE, translator: &tables };
            handle_out(&view, &mut self.io(), port, PortAccess { size, count: 1 }, value)
        }

        fn inp(&mut self, port: u16, size: u8) -> u64 {
            self.inp_record(port, size).0
        }

        fn inp_record(&mut self, port: u16, size: u8) -> (u64, CallRecord) {
            self.counters.exits.io_in += 1;
            let mut data = vec![0u8; usize::from(size)];
            let memory = self.memory.clone();
            let record = handle_in(&memory, &mut self.io(), port, PortAccess { size, count: 1 }, &mut data);
            (data.iter().rev().fold(0, |acc, &b| acc << 8 | u64::from(b)), record)
        }

        fn console(&mut self) -> String {
            let mut batch = crate::console::ConsoleBatch::default();
            self.console.take_into(0, 0, &mut batch);
            String::from_utf8(batch.pieces().flat_map(|piece| piece.bytes.iter().copied()).collect()).unwrap()
        }
    }

    #[test]
    fn prints_bytes_numbers_and_strings() {
        let mut rig = Rig::new();
        rig.out(0xE9, 1, u32::from(b'H'));
        rig.out(0xEA, 4, 4_294_967_295);
        rig.out(0xEA, 4, 0);
        rig.out(0xEA, 4, 1_000_000);
        rig.memory.write_slice(b"str\n\0", GuestAddress(0x9000)).unwrap();
        rig.out(0xEC, 4, 0x9000);
        assert_eq!(rig.console(), "H4294967295\n0\n1000000\nstr\n");
        assert_eq!(rig.counters.faults, 0);
    }

    #[test]
    fn lock_watch_keeps_a_table_in_one_page_and_refuses_any_other_with_a_fault_and_a_note() {
        let mut rig = Rig::new();
        rig.vcpu = VcpuIdentity { index: 0, count: 4 };
        let (outcome, record) = rig.out(0xF6, 4, 0x9000);
        assert_eq!((outcome, record.refused), (Outcome::Continue, false));
        assert_eq!(rig.state.lock_records, Some(0x9000));
        let (_, record) = rig.out(0xF6, 4, 0x9fc0);
        assert!(record.refused);
        assert_eq!(rig.state.lock_records, Some(0x9000), "a refused table leaves the last one");
        assert_eq!(rig.counters.faults, 1);
        assert!(rig.console().contains("HC_lockWatch(0x9fc0) refused: 4 records of 32 bytes"), "a note says why");
        rig.out(0xF6, 4, 0);
        assert_eq!(rig.state.lock_records, None, "0 stops it");
    }

    #[test]
    fn exit_counts_include_the_current_exit() {
        let mut rig = Rig::new();
        rig.out(0xE9, 1, 0);
        assert_eq!(rig.inp(0xEB, 4), 2);
        let address = rig.inp(0xED, 4);
        assert_eq!(address, MAILBOX);
        let view = GuestView { memory: &rig.memory, memory_size: SIZE, translator: &rig.tables };
        assert_eq!(view.c_string(address, 128).unwrap(), b"IO in: 2\nIO out: 1\n");
    }

    #[test]
    fn the_mailbox_is_used_round_robin() {
        let mut rig = Rig::new();
        let addresses: Vec<u64> = (0..33).map(|_| rig.inp(0xED, 4)).collect();
        assert_eq!(addresses[1], MAILBOX + 128);
        assert_eq!(addresses[31], MAILBOX + 31 * 128);
        assert_eq!(addresses[32], MAILBOX);
    }

    #[test]
    fn gva_to_hva_returns_the_low_host_bits_or_zero() {
        let mut rig = Rig::new();
        rig.out(0xEE, 4, 0x400);
        let expected = rig.memory.get_host_address(GuestAddress(0x400)).unwrap() as u64 & 0xffff_ffff;
        assert_eq!(rig.inp(0xEE, 4), expected);
        rig.out(0xEE, 4, 0xffff_ffff);
        assert_eq!(rig.inp(0xEE, 4), 0);
        assert_eq!(rig.console(), "Invalid GVA\n");
        // An `in` with no `out` before it reads 0.
        assert_eq!(rig.inp(0xEE, 4), 0);
    }

    #[test]
    fn gva_to_hva_refuses_addresses_mapped_past_memory() {
        let mut rig = Rig::new();
        rig.tables.remap.push((0x20_0000, 1 << 30));
        rig.out(0xEE, 4, 0x20_0000);
        assert_eq!(rig.inp(0xEE, 4), 0);
        assert_eq!(rig.console(), "Invalid GVA\n");
    }

    #[test]
    fn bad_print_str_pointers_fault_and_say_so() {
        let mut rig = Rig::new();
        rig.out(0xEC, 4, 0x8000_0000);
        assert_eq!(rig.counters.faults, 1);
        assert_eq!(
            rig.console(),
            "[matrix] HC_printStr(0x80000000) refused: 0x80000000 is not mapped by the guest's page tables; nothing printed\n"
        );
        rig.memory.write_slice(&[b'x'; 5000], GuestAddress(0x9000)).unwrap();
        rig.out(0xEC, 4, 0x9000);
        assert_eq!(rig.counters.faults, 2);
        assert!(rig.console().contains("no NUL within 4096 bytes"));
    }

    #[test]
    fn misused_ports_count_as_unknown_and_read_all_ones() {
        let mut rig = Rig::new();
        rig.out(0x80, 1, 0x42);
        assert_eq!(rig.inp(0x1234, 4), 0xffff_ffff);
        rig.out(0xE9, 2, 0x4141);
        assert_eq!(rig.inp(0xEB, 1), 0xff);
        rig.out(0xEB, 4, 7);
        assert_eq!(rig.inp(0xEA, 4), 0xffff_ffff);
        assert_eq!(rig.counters.exits.unknown_port, 6);
        let console = rig.console();
        assert_eq!(console.lines().count(), 6, "{console}");
        assert!(console.lines().all(|line| line.starts_with("[matrix] ")), "{console}");
        assert!(console.contains("unknown port 0x80: a 1-byte out; value 0x42 ignored"));
        assert!(!console.contains("made no hypercall"), "no hint after {} accesses", rig.counters.exits.unknown_port);
        // Ten say what may be wrong, once.
        for _ in 0..20 {
            rig.out(0x10, 2, 0);
        }
        let hinted = rig.console();
        assert_eq!(
            hinted.matches("10 port accesses made no hypercall: this VM runs in long mode").count(),
            1,
            "{hinted}"
        );
        assert!(hinted.contains("--mode NAME=real") && hinted.contains("--ports NAME=0x10:print32bit"));
        assert!(console.contains("HC_numExits (port 0xeb) takes a 4-byte in, got a 1-byte in; it reads all ones"));
    }

    #[test]
    fn real_mode_strings_are_ds_offsets_that_end_in_their_segment() {
        let mut rig = Rig::new();
        rig.mode = CpuMode::Real;
        // FakeTables puts DS at 0x10000.
        rig.memory.write_slice(b"from 16 bits\n\0", GuestAddress(0x10100)).unwrap();
        rig.out(0xEC, 4, 0x100);
        assert_eq!(rig.console(), "from 16 bits\n");
        rig.memory.write_slice(&[b'a'; 16], GuestAddress(0x1fff0)).unwrap();
        rig.out(0xEC, 4, 0xfff0);
        rig.out(0xEC, 4, 0x1_0000);
        assert_eq!(
            rig.console(),
            "[matrix] HC_printStr(0xfff0) refused: DS:0xfff0 runs to the end of its 64 KiB segment before a NUL; \
             nothing printed\n[matrix] HC_printStr(0x10000) refused: 0x10000 is not a 16-bit offset (a real-mode \
             pointer is DS:offset); nothing printed\n"
        );
        assert_eq!(rig.counters.faults, 2);
    }

    #[test]
    fn mapped_ports_print_16_bit_values_and_shown_ports_are_plain_lines() {
        let mut rig = Rig::new();
        rig.ports.map(0x10, "print32bit").unwrap();
        rig.out(0x10, 2, 7);
        assert_eq!(rig.console(), "7\n");
        rig.ports.show_unknown = true;
        rig.out(0x11, 2, 7);
        assert_eq!(rig.inp(0x12, 4), 0xffff_ffff);
        assert_eq!(rig.inp(0x12, 2), 0xffff);
        assert_eq!(rig.console(), "out 0x11 \u{2190} 7\nin 0x12 \u{2192} 0xffffffff\nin 0x12 \u{2192} 0xffff\n");
        assert_eq!(rig.counters.exits.unknown_port, 3);
        // A hypercall port used wrongly is still an error line.
        rig.out(0xE9, 2, 0x4141);
        assert!(rig.console().starts_with("[matrix] HC_print8bit (port 0xe9) takes a 1-byte out"));
    }

    #[test]
    fn the_mailbox_follows_the_vm_when_it_moved() {
        let mut rig = Rig::new();
        rig.state = HypercallState::with_mailbox(0x1e_b000);
        assert_eq!(rig.inp(0xED, 4), 0x1e_b000);
    }

    #[test]
    fn yield_ends_the_slice() {
        let mut rig = Rig::new();
        assert_eq!(rig.out(0xEF, 1, 0).0, Outcome::Yield);
        assert_eq!(rig.out(0xE9, 1, 0).0, Outcome::Continue);
    }

    #[test]
    fn a_vcpu_learns_who_it_is_and_names_its_siblings() {
        let mut rig = Rig::new();
        rig.vcpu = VcpuIdentity { index: 2, count: 4 };
        assert_eq!(rig.inp(0xF2, 4), 2);
        assert_eq!(rig.inp(0xF3, 4), 4);
        assert_eq!(rig.out(0xF4, 4, 0x0041_0003).0, Outcome::Ipi { vcpu: 3, vector: 0x41 });
        assert_eq!(rig.out(0xF5, 4, 1).0, Outcome::YieldTo(1));
        // Each vCPU's gvaToHva result is its own: the rig's stands for this vCPU's.
        rig.out(0xEE, 4, 0x400);
        assert!(rig.gva_result.is_some());
        assert_eq!(rig.counters.exits.unknown_port, 0);
    }

    #[test]
    fn handlers_say_what_each_hypercall_did() {
        let mut rig = Rig::new();
        let (_, print) = rig.out(0xE9, 1, u32::from(b'H'));
        assert_eq!(
            (print.hypercall, print.text.as_bytes(), print.refused),
            (Some(Hypercall::Print8), &b"H"[..], false)
        );
        rig.memory.write_slice(b"CS695 Assignment 2\n\0", GuestAddress(0x9000)).unwrap();
        let (_, string) = rig.out(0xEC, 4, 0x9000);
        assert_eq!(string.text.as_bytes(), b"CS695 Assignment 2\n");
        let (_, bad) = rig.out(0xEC, 4, 0x8000_0000);
        assert!(bad.refused && bad.text.is_empty());
        let (count, exits) = rig.inp_record(0xEB, 4);
        assert_eq!((exits.hypercall, exits.result), (Some(Hypercall::NumExits), Some(count as u32)));
        let (address, by_type) = rig.inp_record(0xED, 4);
        assert_eq!(by_type.result, Some(address as u32));
        assert_eq!(by_type.text.as_bytes(), b"IO in: 2\nIO out: 3\n");
        let (_, invalid) = rig.out(0xEE, 4, 0xffff_ffff);
        assert_eq!((invalid.hypercall, invalid.result), (Some(Hypercall::GvaToHvaRequest), Some(0)));
        let (_, misuse) = rig.out(0x80, 1, 0);
        assert_eq!((misuse.hypercall, misuse.refused), (None, true));
    }
}
