//! Random port accesses against the hypercall handlers, without KVM: arbitrary
//! port, direction, size, count, value and guest memory contents, through the
//! same functions the core calls. The handlers must never panic, answer every
//! `in` with exactly the bytes asked for, and keep their counters consistent.
//! Every CPU mode's pointers, mapped ports and `show_ports` are drawn too.
//! Seeded; `MATRIX_FUZZ_CASES` sets how many (default 200,000).

mod common;

use matrix_tui::console::ConsoleOut;
use matrix_tui::hypercall::{self, GuestView, HypercallState, PortMap, Translate, VcpuIdentity, VmIo};
use matrix_tui::stats::VmCounters;
use matrix_tui::vm::{CpuMode, PortAccess, memory};
use vm_memory::{Bytes, GuestAddress};

const MEMORY: u64 = 2 << 20;

/// Page tables as random as the guest could make them: identity below a
/// bound, a few pages remapped anywhere (past memory, to u64::MAX...).
struct RandomTables {
    mapped_below: u64,
    remaps: Vec<(u64, u64)>,
    /// DS's base, for real-mode pointers (a real-mode guest may load any
    /// selector; only 20 bits and a bit make it past the segment arithmetic).
    ds_base: u64,
}

impl Translate for RandomTables {
    fn translate(&self, gva: u64) -> Option<u64> {
        let page = gva & !0xfff;
        if let Some(&(_, to)) = self.remaps.iter().find(|(from, _)| *from == page) {
            return Some(to.wrapping_add(gva & 0xfff));
        }
        (gva < self.mapped_below).then_some(gva)
    }

    fn data_segment_base(&self) -> u64 {
        self.ds_base
    }
}

/// The shared generator, with a taste for values at the edges.
trait EdgeValues {
    fn value(&mut self) -> u64;
}

impl EdgeValues for common::Rng {
    /// Mostly interesting values: limits, small numbers, the end of memory.
    fn value(&mut self) -> u64 {
        match self.next() % 6 {
            0 => u64::from(u32::MAX) - self.next() % 16,
            1 => u64::MAX - self.next() % 16,
            2 => self.next() % 0x20_0000,
            3 => MEMORY - self.next() % 8192,
            _ => self.next(),
        }
    }
}

#[test]
fn random_port_accesses_never_upset_the_handlers() {
    let cases: usize = std::env::var("MATRIX_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let mut rng = common::Rng(0x5eed_f00d);
    let memory = memory::allocate(MEMORY).unwrap();
    let mut counters = VmCounters::default();
    let mut state = HypercallState::default();
    let calls: Vec<&str> = matrix_tui::hypercall::ports::mappable_calls().collect();
    let mut gva_result = None;
    let mut console = ConsoleOut::default();
    let mut tables = RandomTables { mapped_below: MEMORY, remaps: Vec::new(), ds_base: 0 };
    let mut mode = CpuMode::Long;
    let mut ports = PortMap::default();
    for case in 0..cases {
        if case % 1000 == 0 {
            // New guest memory contents and page tables now and then.
            let at = rng.next() % (MEMORY - 4096);
            let bytes: Vec<u8> = (0..4096).map(|_| if rng.next() % 4 == 0 { 0 } else { rng.next() as u8 }).collect();
            memory.write_slice(&bytes, GuestAddress(at)).unwrap();
            tables = RandomTables {
                mapped_below: [MEMORY, u64::MAX, rng.value()][(rng.next() % 3) as usize],
                remaps: (0..rng.next() % 4).map(|_| (rng.value() & !0xfff, rng.value())).collect(),
                ds_base: (rng.next() & 0xffff) << 4,
            };
            mode = CpuMode::ALL[(rng.next() % 4) as usize];
            ports = PortMap::default();
            ports.show_unknown = rng.next() % 2 == 0;
            for _ in 0..rng.next() % 4 {
                let port = if rng.next() % 2 == 0 { 0xE8 + (rng.next() % 14) as u16 } else { rng.next() as u16 };
                ports.remap(port, calls[(rng.next() % calls.len() as u64) as usize]).unwrap();
            }
        }
        let port = if rng.next() % 2 == 0 { 0xE8 + (rng.next() % 14) as u16 } else { rng.next() as u16 };
        let size = [1u8, 2, 4, 0, 3, 8][(rng.next() % 6) as usize];
        let count = if rng.next() % 8 == 0 { (rng.next() % 64) as u32 } else { 1 };
        let access = PortAccess { size, count };
        let unknown_before = counters.exits.unknown_port;
        let vcpu = VcpuIdentity { index: (rng.next() % 4) as u32, count: 4 };
        let mut io = VmIo {
            counters: &mut counters,
            state: &mut state,
            console: &mut console,
            mode,
            ports: &ports,
            vcpu,
            gva_result: &mut gva_result,
        };
        if rng.next() % 2 == 0 {
            io.counters.exits.io_out += 1;
            let view = GuestView { memory: &memory, memory_size: MEMORY, translator: &tables };
            hypercall::handle_out(&view, &mut io, port, access, rng.value() as u32);
        } else {
            io.counters.exits.io_in += 1;
            let len = (usize::from(size) * count.max(1) as usize).min(4096);
            let mut data = vec![0x5a; len];
            hypercall::handle_in(&memory, &mut io, port, access, &mut data);
            assert!(data.iter().all(|&b| b != 0x5a) || data.len() <= 4, "case {case}: `in` data left unwritten");
        }
        assert!(counters.exits.unknown_port <= unknown_before + 1, "case {case}");
        assert!(counters.exits.unknown_port <= counters.exits.io_in + counters.exits.io_out);
        if console.pending_len() > 1 << 20 {
            console.discard_pending();
        }
    }
    assert!(counters.exits.unknown_port > 0 && counters.faults > 0, "the cases reached the refusals");
}
