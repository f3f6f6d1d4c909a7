//! Snapshots that do not stop the others: a VM's vCPU and its state are
//! read at once, then its memory is copied in steps of at most
//! [`SAVE_STEP_PAGES`] pages and [`SAVE_STEP_NS`] while it is held still,
//! and after each step the other VMs get as long as it took before the
//! next: a large VM's save takes at most half the core and never keeps its
//! neighbours off the CPU for more than a step (a 1 GiB copy in one go took
//! 0.7-1 s here). A VM small enough for one step is saved at once, without
//! being held.

use super::*;
use crate::snapshot::format::Pages;

/// Pages copied a step at most: 8 MiB.
pub(super) const SAVE_STEP_PAGES: usize = 2048;
/// The longest a step copies: 2 ms (checked every [`SAVE_STEP_CHECK`] pages).
pub(super) const SAVE_STEP_NS: u64 = 2_000_000;
/// A page copy that faults in the copy's own new memory costs 2-20 us on
/// a nested host: 32 of them keep a step within a fraction of a millisecond of its bound.
const SAVE_STEP_CHECK: usize = 32;

/// A save under way.
pub(super) struct Saving {
    path: std::path::PathBuf,
    state: SnapshotState,
    memory: Pages,
    /// The pages to copy (those the host ever backed), and how far it got.
    resident: Vec<u64>,
    next: usize,
    /// The VM's state before the save, to go back to.
    before: VmState,
    /// Its copy takes steps, so it is held still meanwhile; a VM of one
    /// step's pages is copied whole at once, whatever that takes.
    stepped: bool,
    started_ns: u64,
    steps: u32,
    longest_step_ns: u64,
}

impl Core {
    /// Saves `vm` (between its slices, so its vCPU is out of KVM_RUN): its
    /// vCPU and state now, its memory now or in steps while it is held; the
    /// front ends get the state and a copy of its memory and write the file
    /// (this thread may not open files). The VM goes on as it was.
    pub(super) fn snapshot(&mut self, vm: VmId, path: std::path::PathBuf) {
        let started_ns = monotonic_ns();
        let slot = &mut self.slots[vm];
        if slot.state.is_finished() {
            let why = format!("it has {}: restart it first", slot.state.name());
            return self.snapshot_done(vm, path, Err(why));
        }
        let sleeping = matches!(slot.state, VmState::Sleeping { .. });
        // gdb's int3s are the host's, not the guest's: saved without them
        // (put back when the copy is whole).
        if let Some(debug) = &slot.debug {
            debug.lift_breakpoints(true, &super::debugging::view(&slot.runtime));
        }
        let (machine, runtime) = match slot.runtime.save_state(&self.kvm, started_ns, sleeping) {
            Ok(saved) => saved,
            Err(error) => {
                self.put_breakpoints_back(vm);
                return self.snapshot_done(vm, path, Err(error.to_string()));
            }
        };
        let state = SnapshotState { vm: identity(&slot.config), machine, runtime };
        let resident = slot.runtime.machine.resident_pages();
        let memory = Pages::new(slot.runtime.machine.memory_size());
        let before = slot.state.clone();
        let stepped = resident.len() > SAVE_STEP_PAGES;
        let saving = Saving {
            path,
            state,
            memory,
            resident,
            next: 0,
            before,
            stepped,
            started_ns,
            steps: 0,
            longest_step_ns: 0,
        };
        slot.saving = Some(Box::new(saving));
        self.saving += 1;
        // Held still until its copy is whole: its memory must not change meanwhile.
        let runs = matches!(slot.state, VmState::Running | VmState::Sleeping { .. } | VmState::Throttled { .. });
        if stepped && runs {
            self.set_state(vm, VmState::Paused);
        }
        // Its first step now (all of a small VM), the next ones when due.
        self.next_save_step_ns = 0;
        self.drive_saves();
    }

    /// One step of every save under way, once the other VMs have had as
    /// long as the last step took.
    pub(super) fn drive_saves(&mut self) {
        let started_ns = monotonic_ns();
        if started_ns < self.next_save_step_ns {
            return;
        }
        for vm in 0..self.slots.len() {
            if self.slots.get(vm).is_some_and(|slot| slot.saving.is_some()) {
                self.save_step(vm);
            }
        }
        let now_ns = monotonic_ns();
        self.next_save_step_ns = now_ns + (now_ns - started_ns);
    }

    /// Every save under way, to its end (the run is ending).
    pub(super) fn finish_saves(&mut self) {
        while self.saving > 0 {
            self.next_save_step_ns = 0;
            self.drive_saves();
        }
    }

    /// Copies the next pages of `vm`'s save; the last step hands it out.
    fn save_step(&mut self, vm: VmId) {
        let slot = &mut self.slots[vm];
        let Some(saving) = slot.saving.as_mut() else { return };
        let step_started_ns = monotonic_ns();
        let last = (saving.next + SAVE_STEP_PAGES).min(saving.resident.len());
        while saving.next < last {
            let end = (saving.next + SAVE_STEP_CHECK).min(last);
            slot.runtime.machine.copy_pages_into(&saving.resident[saving.next..end], false, &mut saving.memory);
            saving.next = end;
            if saving.stepped && monotonic_ns() - step_started_ns >= SAVE_STEP_NS {
                break;
            }
        }
        let end = saving.next;
        saving.steps += 1;
        saving.longest_step_ns = saving.longest_step_ns.max(monotonic_ns() - step_started_ns);
        if end < saving.resident.len() {
            return;
        }
        let saving = slot.saving.take().expect("checked");
        self.saving -= 1;
        self.put_breakpoints_back(vm);
        // It goes on as it was: held, it is let go; asleep, it sleeps on.
        if self.slots[vm].state == VmState::Paused && saving.before != VmState::Paused {
            let again = match saving.before {
                VmState::Throttled { .. } => VmState::Running,
                before => before,
            };
            self.set_state(vm, again);
        }
        let took_ns = monotonic_ns() - saving.started_ns;
        let taken = TakenSnapshot {
            state: saving.state,
            memory: saving.memory,
            took_ns,
            steps: saving.steps,
            longest_step_ns: saving.longest_step_ns,
        };
        self.snapshot_done(vm, saving.path, Ok(Box::new(taken)));
    }

    fn put_breakpoints_back(&mut self, vm: VmId) {
        let slot = &self.slots[vm];
        if let Some(debug) = &slot.debug {
            debug.lift_breakpoints(false, &super::debugging::view(&slot.runtime));
        }
    }

    fn snapshot_done(&mut self, vm: VmId, path: std::path::PathBuf, result: Result<Box<TakenSnapshot>, String>) {
        let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
        // What it printed before the snapshot goes out before the note of it.
        self.queue_console(vm);
        self.outbox.push_back(Event::Snapshot { vm, t_ns, path, result });
    }
}
