//! What a VM's lock records say (see [`crate::hypercall::lock_records`]):
//! read from guest memory when a quantum ends and when the VM is sampled,
//! never with an exit.

use super::VmRuntime;
use crate::hypercall::lock_records::{self, LockRecord, LockState};
use crate::stats::LockCounts;

impl VmRuntime {
    /// Each vCPU's lock record, if the guest shares them (HC_lockWatch).
    pub fn lock_records(&self) -> Option<Vec<LockRecord>> {
        let table = self.hypercalls.lock_records?;
        let memory = &self.machine.memory;
        (0..self.vcpus.len()).map(|vcpu| lock_records::read(memory, table, vcpu)).collect()
    }

    /// The guest's own counts summed over its vCPUs (the hypervisor's
    /// preemption counts left at zero), if it shares its records.
    pub fn lock_sums(&self) -> Option<LockCounts> {
        let records = self.lock_records()?;
        let mut sums = LockCounts::default();
        for record in records {
            sums.sections = sums.sections.wrapping_add(record.sections);
            sums.spins = sums.spins.wrapping_add(record.spins);
            sums.work = sums.work.wrapping_add(record.work);
        }
        Some(sums)
    }

    /// A quantum ended on the vCPU that ran last: counts it as a holder's or
    /// a waiter's preemption if its record says so, and returns what it said.
    pub fn quantum_ended(&mut self) -> LockState {
        self.quantum_ended_on(self.current)
    }

    /// [`Self::quantum_ended`] for vCPU `vcpu` (under `gang` a window ends
    /// on every vCPU of the VM at once).
    pub fn quantum_ended_on(&mut self, vcpu: usize) -> LockState {
        let Some(table) = self.hypercalls.lock_records else { return LockState::Neither };
        let state = lock_records::read(&self.machine.memory, table, vcpu).map_or(LockState::Neither, |r| r.state);
        match state {
            LockState::Holds => self.counters.lock.holder_preempted += 1,
            LockState::Waits => self.counters.lock.waiter_preempted += 1,
            LockState::Neither => {}
        }
        state
    }
}
