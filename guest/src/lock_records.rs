//! Lock records: a table in the guest's memory where each vCPU says whether
//! it holds a lock or waits for one, and counts its critical sections and
//! the loop iterations it spins and works. [`watch`] names the table to the
//! hypervisor once (HC_lockWatch); from then on the hypervisor reads it
//! without an exit: when a vCPU's quantum ends on a lock's holder or waiter
//! (it counts and traces that), and when it shows the VM's spin fraction.
//!
//! ```ignore
//! static TABLE: LockTable = LockTable::new();
//! if smp::vcpu_id() == 0 { lock_records::watch(&TABLE); }
//! let mine = TABLE.record(smp::vcpu_id());
//! mine.set_state(WAITS); /* spin */ mine.set_state(HOLDS); /* work */ mine.set_state(NEITHER);
//! ```

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Port of HC_lockWatch: `out dx, eax`, the table's address (0: stop).
pub const PORT_LOCK_WATCH: u16 = 0xF6;

/// The vCPU neither holds a lock nor waits for one.
pub const NEITHER: u32 = 0;
/// The vCPU holds a lock.
pub const HOLDS: u32 = 1;
/// The vCPU waits for a lock.
pub const WAITS: u32 = 2;

/// One vCPU's record: 32 bytes, as the hypervisor reads them. Each vCPU
/// writes only its own, so plain (not `lock`-prefixed) stores do.
#[repr(C, align(32))]
pub struct LockRecord {
    state: AtomicU32,
    reserved: AtomicU32,
    sections: AtomicU64,
    spins: AtomicU64,
    work: AtomicU64,
}

impl LockRecord {
    const fn new() -> Self {
        Self {
            state: AtomicU32::new(NEITHER),
            reserved: AtomicU32::new(0),
            sections: AtomicU64::new(0),
            spins: AtomicU64::new(0),
            work: AtomicU64::new(0),
        }
    }

    /// Says whether this vCPU holds a lock, waits for one, or neither.
    #[inline(always)]
    pub fn set_state(&self, state: u32) {
        self.state.store(state, Ordering::Relaxed);
    }

    /// Counts a critical section, and the loop iterations spent spinning
    /// and working since the last call.
    #[inline(always)]
    pub fn count(&self, sections: u64, spins: u64, work: u64) {
        // One writer: load and store, no locked instruction.
        self.sections.store(self.sections.load(Ordering::Relaxed) + sections, Ordering::Relaxed);
        self.spins.store(self.spins.load(Ordering::Relaxed) + spins, Ordering::Relaxed);
        self.work.store(self.work.load(Ordering::Relaxed) + work, Ordering::Relaxed);
    }

    /// Critical sections, spun and worked iterations so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.sections.load(Ordering::Relaxed), self.spins.load(Ordering::Relaxed), self.work.load(Ordering::Relaxed))
    }
}

/// A record per vCPU (64 at most), in one page as HC_lockWatch asks.
#[repr(C, align(4096))]
pub struct LockTable([LockRecord; 64]);

impl LockTable {
    /// A table of empty records.
    pub const fn new() -> Self {
        Self([const { LockRecord::new() }; 64])
    }

    /// vCPU `vcpu`'s record.
    pub fn record(&self, vcpu: u32) -> &LockRecord {
        &self.0[vcpu as usize % 64]
    }

    /// The counts of all records summed: critical sections, spun and worked iterations.
    pub fn sums(&self) -> (u64, u64, u64) {
        self.0.iter().map(LockRecord::counts).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }
}

impl Default for LockTable {
    fn default() -> Self {
        Self::new()
    }
}

/// HC_lockWatch: names `table` to the hypervisor (once, from any vCPU).
pub fn watch(table: &'static LockTable) {
    crate::io::outl(PORT_LOCK_WATCH, table as *const LockTable as u64 as u32);
}
