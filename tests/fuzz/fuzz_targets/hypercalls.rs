//! cargo-fuzz target for the hypercall handlers: the fuzzer picks the guest's
//! memory contents, its page tables (identity bound and remaps), its CPU mode
//! and DS base, a mapped port and `show_ports`, and a sequence of port
//! accesses (port, direction, size, count, value).
//!
//! Run: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz hypercalls
#![no_main]

use libfuzzer_sys::fuzz_target;
use matrix_tui::console::ConsoleOut;
use matrix_tui::hypercall::{self, GuestView, HypercallState, PortMap, Translate, VcpuIdentity, VmIo};
use matrix_tui::stats::VmCounters;
use matrix_tui::vm::{CpuMode, PortAccess, memory};
use vm_memory::{Bytes, GuestAddress};

const MEMORY: u64 = 2 << 20;

struct Tables {
    mapped_below: u64,
    remap: Option<(u64, u64)>,
    ds_base: u64,
}

impl Translate for Tables {
    fn translate(&self, gva: u64) -> Option<u64> {
        if let Some((from, to)) = self.remap {
            if gva & !0xfff == from & !0xfff {
                return Some(to.wrapping_add(gva & 0xfff));
            }
        }
        (gva < self.mapped_below).then_some(gva)
    }

    fn data_segment_base(&self) -> u64 {
        self.ds_base
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let memory = memory::allocate(MEMORY).unwrap();
    // The first 24 bytes shape the page tables; the next 8 place a chunk of
    // guest memory; the rest is both that chunk and the accesses.
    let tables = Tables {
        mapped_below: u64_at(data, 0),
        remap: (data[8] & 1 == 1).then(|| (u64_at(data, 8), u64_at(data, 16))),
        ds_base: (u64_at(data, 16) & 0xffff) << 4,
    };
    let mode = CpuMode::ALL[usize::from(data[17] % 4)];
    let mut ports = PortMap::default();
    ports.show_unknown = data[18] & 1 == 1;
    let calls: Vec<&str> = matrix_tui::hypercall::ports::mappable_calls().collect();
    ports.map(u16::from_le_bytes([data[19], data[20]]), calls[usize::from(data[21]) % calls.len()]).unwrap();
    let at = u64_at(data, 24) % (MEMORY - 4096);
    let rest = &data[32..];
    memory.write_slice(&rest[..rest.len().min(4096)], GuestAddress(at)).unwrap();
    let mut counters = VmCounters::default();
    let mut state = HypercallState::default();
    let mut console = ConsoleOut::default();
    let mut gva_result = None;
    // Some of the VMs it stands for have several vCPUs: their lines are kept apart.
    let vcpu = VcpuIdentity { index: u32::from(data[22] % 4), count: 4 };
    console.split_by_vcpu(usize::from(data[23] % 2) * 4);
    for access in rest.chunks_exact(12) {
        let port = u16::from_le_bytes([access[0], access[1]]);
        let size = access[2] % 9;
        let count = u32::from(access[3] % 4).max(1);
        let value = u32::from_le_bytes([access[4], access[5], access[6], access[7]]);
        let access_shape = PortAccess { size, count };
        console.set_speaker(vcpu.index as usize);
        let mut io = VmIo {
            counters: &mut counters,
            state: &mut state,
            console: &mut console,
            mode,
            ports: &ports,
            vcpu,
            gva_result: &mut gva_result,
        };
        if access[8] & 1 == 0 {
            io.counters.exits.io_out += 1;
            let view = GuestView { memory: &memory, memory_size: MEMORY, translator: &tables };
            hypercall::handle_out(&view, &mut io, port, access_shape, value);
        } else {
            io.counters.exits.io_in += 1;
            let mut data = vec![0u8; usize::from(size) * count as usize];
            hypercall::handle_in(&memory, &mut io, port, access_shape, &mut data);
        }
    }
});
