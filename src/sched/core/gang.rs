//! `--policy gang` on the cores: a VM of several vCPUs runs in its windows
//! (see [`crate::sched::gang`]), all its vCPUs at once, one on its home
//! core and one on each of the next cores, and not at all in between.
//!
//! At a window's start the home core lends the VM out: its state goes
//! behind a lock in a [`GangRun`], each vCPU to the lane that runs it, and
//! every other lane's core is called (a message and a kick, which ends the
//! slice it runs). Each lane runs its vCPU with [`run_vcpu`] through the
//! lock, which KVM_RUN never holds: a vCPU's exits are handled on the core
//! that runs it, one at a time. At the window's end every lane stops on its
//! own timer, and the home core takes the VM back whole.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::run_loop::keep_exit_of;
use super::*;
use crate::sched::gang::{GangPlan, WindowAt, lane_cores};
use crate::sched::vm_runtime::{Gate, run_vcpu};

/// What every core shares about gang windows.
pub(crate) struct GangBoard {
    /// The windows, replanned as weights and states change.
    plan: Mutex<GangPlan>,
    /// Each VM's vCPUs, by id.
    vcpus: Vec<usize>,
    /// Each core is stepping a VM (for `s` or gdb), which a lane's call
    /// would cut short: a window that needs it is skipped.
    stepping: Vec<AtomicBool>,
}

impl GangBoard {
    pub(super) fn new(vcpus: Vec<usize>, cores: usize) -> Self {
        let stepping = (0..cores).map(|_| AtomicBool::new(false)).collect();
        Self { plan: Mutex::new(GangPlan::default()), vcpus, stepping }
    }

    /// Core `core` steps a VM (`true`) or has stopped (`false`).
    pub(super) fn set_stepping(&self, core: usize, stepping: bool) {
        if let Some(flag) = self.stepping.get(core) {
            flag.store(stepping, Ordering::SeqCst);
        }
    }

    fn stepping(&self, core: usize) -> bool {
        self.stepping.get(core).is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    /// Plans the windows for `weights` (0: cannot run) on `cores` cores.
    pub(super) fn replan(&self, weights: &[f64], cores: usize, quantum_ns: u64) {
        let vcpus: Vec<usize> = (0..weights.len()).map(|vm| self.vcpus.get(vm).copied().unwrap_or(1)).collect();
        *lock(&self.plan) = GangPlan::new(weights, &vcpus, cores, quantum_ns);
    }

    /// A VM with more vCPUs than the run has cores: `gang` cannot run it.
    pub(crate) fn too_wide(&self, cores: usize) -> Option<(VmId, usize)> {
        self.vcpus.iter().copied().enumerate().find(|&(_, vcpus)| vcpus > cores)
    }

    fn at(&self, vm: VmId, epoch_ns: u64, now_ns: u64) -> Option<WindowAt> {
        lock(&self.plan).at(vm, epoch_ns, now_ns)
    }
}

/// A call to run a lane of a gang window.
pub(super) struct LaneCall {
    run: Arc<GangRun>,
    lane: usize,
}

/// A gang VM lent out for one window.
pub(super) struct GangRun {
    vm: VmId,
    end_ns: u64,
    /// The VM, its vCPUs apart; `None` once its home took it back.
    slot: Mutex<Option<Slot>>,
    /// Each vCPU, held by its lane while it runs.
    vcpus: Vec<Mutex<Option<Vcpu>>>,
    /// Each lane's core, to kick when its vCPU has an interrupt waiting.
    kicks: Vec<Arc<KickTarget>>,
    /// Lanes wait here while their vCPU sleeps.
    wake: Condvar,
    waiting: AtomicUsize,
    /// The window is over (its end, or the VM halted or crashed).
    closed: AtomicBool,
    /// How the VM ended in the window, for its home to set.
    ended: Mutex<Option<VmState>>,
    /// What the lanes charged together.
    charged_ns: AtomicU64,
}

/// The lock on a lent VM, as the gate its vCPUs' exits go through.
struct LentVm<'a>(&'a Mutex<Option<Slot>>);

impl Gate for LentVm<'_> {
    fn with<T>(&mut self, f: impl FnOnce(&mut VmRuntime) -> T) -> T {
        f(&mut lock(self.0).as_mut().expect("a lane runs only while its window's VM is lent").runtime)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A lane that panicked took its core down with it; the state is whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    /// The gang VM of this core whose window is open now, with its end;
    /// else when the next window of one starts.
    pub(super) fn gang_window(&self) -> (Option<(VmId, u64)>, Option<u64>) {
        // Other policies pay nothing here, not even a clock read.
        if self.planner.policy() != Policy::Gang {
            return (None, None);
        }
        let now_ns = monotonic_ns();
        let mut next = None;
        for (vm, slot) in self.slots.each().enumerate() {
            let Some(slot) = slot else { continue };
            // Nothing that ties it to this thread may be under way.
            if !slot.in_gang(self.planner.policy()) || slot.state != VmState::Running || self.tied(vm) {
                continue;
            }
            match self.gang.at(vm, self.epoch_ns, now_ns) {
                // A window skipped (a lane's core was stepping) is over at its end.
                Some(WindowAt::Inside { end_ns }) if self.gang_skipped == Some((vm, end_ns)) => {
                    next = Some(next.map_or(end_ns, |n: u64| n.min(end_ns)));
                }
                Some(WindowAt::Inside { end_ns }) => return (Some((vm, end_ns)), None),
                Some(WindowAt::Before { start_ns }) => next = Some(next.map_or(start_ns, |n: u64| n.min(start_ns))),
                None => {}
            }
        }
        (None, next)
    }

    /// Runs gang VM `vm`'s window until `end_ns`: lends it to its lanes,
    /// runs the first here, and takes it back when all have stopped.
    pub(super) fn run_gang_window(&mut self, vm: VmId, end_ns: u64, deadlines: &mut Deadlines) {
        let started_ns = monotonic_ns();
        let lanes = lane_cores(self.index, self.slots[vm].runtime.vcpus.len(), self.cores);
        // All of its vCPUs or none: not while a lane's core steps a VM.
        if lanes.iter().any(|&core| core != self.index && self.gang.stepping(core)) {
            self.gang_skipped = Some((vm, end_ns));
            return;
        }
        let mut slot = self.slots.take(vm).expect("a gang window of this core's VM");
        let vcpus = std::mem::take(&mut slot.runtime.machine.vcpus);
        let run = Arc::new(GangRun {
            vm,
            end_ns,
            slot: Mutex::new(Some(slot)),
            vcpus: vcpus.into_iter().map(|vcpu| Mutex::new(Some(vcpu))).collect(),
            kicks: lanes.iter().map(|&core| Arc::clone(&self.peers[core].kick)).collect(),
            wake: Condvar::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            ended: Mutex::new(None),
            charged_ns: AtomicU64::new(0),
        });
        for (lane, &core) in lanes.iter().enumerate().skip(1) {
            let call = LaneCall { run: Arc::clone(&run), lane };
            let peer = &self.peers[core];
            let _ = peer.lanes.send(call);
            // Wakes an idle core too; a running one's slice ends at the kick.
            let _ = peer.commands.send(Message::Internal(Internal::GangCall));
            peer.kick.request();
        }
        let record = self.run_lane(&run, 0, started_ns, deadlines);
        // The lanes still running stop now (at the window's end they have).
        run.closed.store(true, Ordering::SeqCst);
        run.kicks.iter().skip(1).for_each(|kick| kick.signal());
        run.wake.notify_all();
        let vcpus: Vec<Vcpu> =
            run.vcpus.iter().map(|vcpu| lock(vcpu).take().expect("each vCPU comes back from its lane")).collect();
        let mut slot = lock(&run.slot).take().expect("the lent VM comes back");
        slot.runtime.machine.vcpus = vcpus;
        let charged = run.charged_ns.load(Ordering::SeqCst);
        slot.charged_ns += charged;
        slot.runtime.end_slice(charged);
        slot.last_slice_ns = monotonic_ns();
        self.slots.put(vm, slot);
        // The window spans every lane's slice: it ends when the last stopped.
        if let Some(mut record) = record {
            record.end_ns = monotonic_ns().saturating_sub(self.epoch_ns);
            self.keep_slice(record);
        }
        if let Some(state) = lock(&run.ended).take() {
            if matches!(state, VmState::Halted { .. }) {
                let reply = self.stop_reply(vm, DebugStop::Halted);
                self.answer_debugger(vm, reply);
            }
            self.set_state(vm, state);
        }
    }

    /// A lane of another core's gang window, called here.
    pub(super) fn serve_lane(&mut self, call: &LaneCall, deadlines: &mut Deadlines) {
        if let Some(record) = self.run_lane(&call.run, call.lane, monotonic_ns(), deadlines) {
            self.keep_slice(record);
        }
    }

    /// Runs vCPU `lane` of `run`'s VM on this core from `wall_start` until
    /// the window ends or closes, and returns its slice (none if it came
    /// too late). Commands that come meanwhile wait for its end.
    fn run_lane(
        &mut self,
        run: &GangRun,
        lane: usize,
        wall_start: u64,
        deadlines: &mut Deadlines,
    ) -> Option<SliceRecord> {
        let vm = run.vm;
        let mut held = lock(&run.vcpus[lane]);
        let vcpu = held.as_mut().filter(|_| monotonic_ns() < run.end_ns && !run.closed.load(Ordering::SeqCst))?;
        self.kick.note_cpu();
        let kick_ns = deadlines.start_slice(wall_start, run.end_ns, None);
        self.kick.set_deadline(kick_ns);
        let spins_before = self.lane_lock_record(run, lane);
        let (mut in_guest, mut exits, mut injected, mut deferred) = (0, 0, 0, false);
        let mut gate = LentVm(&run.slot);
        loop {
            deferred |= self.kick.take_request();
            let now_ns = monotonic_ns();
            if now_ns >= run.end_ns || run.closed.load(Ordering::SeqCst) {
                break;
            }
            {
                // Checked and waited for under one hold of the lock, so a
                // sibling's IPI cannot come between and go unseen.
                let mut guard = lock(&run.slot);
                let slot = guard.as_mut().expect("lent until every lane stops");
                if let Some(wait_ns) = lane_waits(slot, lane, now_ns, run.end_ns) {
                    run.waiting.fetch_add(1, Ordering::SeqCst);
                    let _ = run.wake.wait_timeout(guard, Duration::from_nanos(wait_ns));
                    run.waiting.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
            }
            let (step, span, record) = run_vcpu(&mut gate, lane, vcpu, &self.kick, self.epoch_ns, true, run.end_ns);
            in_guest += span.charged_until(run.end_ns);
            let mut guard = lock(&run.slot);
            let slot = guard.as_mut().expect("lent until every lane stops");
            for mut record in slot.runtime.injection.take().into_iter().chain(record) {
                record.vm = vm;
                if record.kind == crate::record::ExitKind::Interrupt {
                    injected += 1;
                } else {
                    exits += 1;
                }
                keep_exit_of(slot, record, self.live_records, &mut self.trace);
            }
            // A sibling with an interrupt waiting takes it at its next entry.
            for (sibling, kick) in run.kicks.iter().enumerate() {
                if sibling != lane && slot.runtime.vcpus[sibling].pending.any() {
                    kick.signal();
                }
            }
            let t_ns = span.exited_ns.saturating_sub(self.epoch_ns);
            let ended = match step {
                Step::Halted { registers } => Some(VmState::Halted { registers, t_ns }),
                Step::Crashed { reason, registers, .. } => Some(VmState::Crashed { reason, registers }),
                _ => None,
            };
            drop(guard);
            if run.waiting.load(Ordering::SeqCst) > 0 {
                run.wake.notify_all();
            }
            if let Some(state) = ended {
                *lock(&run.ended) = Some(state);
                run.closed.store(true, Ordering::SeqCst);
                run.kicks.iter().for_each(|kick| kick.signal());
                run.wake.notify_all();
                break;
            }
        }
        self.kick.set_deadline(u64::MAX);
        if deferred {
            // What came meanwhile is looked at now.
            self.kick.request();
        }
        let wall_end = monotonic_ns();
        let spin_pct = spins_before.and_then(|before| {
            let after = self.lane_lock_record(run, lane)?;
            after.spin_pct_since(&before).map(|pct| pct.round() as u8)
        });
        if wall_end >= run.end_ns {
            self.lane_quantum_ended(run, lane, wall_end);
        }
        run.charged_ns.fetch_add(in_guest, Ordering::SeqCst);
        self.kvm_run_ns += in_guest;
        Some(SliceRecord {
            vm,
            vcpu: lane as u16,
            start_ns: wall_start.saturating_sub(self.epoch_ns),
            end_ns: wall_end.saturating_sub(self.epoch_ns),
            charged_ns: in_guest,
            end: if run.closed.load(Ordering::SeqCst) && wall_end < run.end_ns {
                SliceEnd::Halt
            } else {
                SliceEnd::Deadline
            },
            exits,
            injected,
            core: self.index as u16,
            spin_pct,
        })
    }

    /// Lane `lane`'s vCPU's own lock counts, if its guest shares them.
    fn lane_lock_record(&self, run: &GangRun, lane: usize) -> Option<crate::stats::LockCounts> {
        let guard = lock(&run.slot);
        let record = guard.as_ref()?.runtime.lock_records()?.get(lane).copied()?;
        Some(crate::stats::LockCounts {
            sections: record.sections,
            spins: record.spins,
            work: record.work,
            ..Default::default()
        })
    }

    /// The window ended on lane `lane`'s vCPU: a trace record if its lock
    /// record says it held the lock or waited for it.
    fn lane_quantum_ended(&mut self, run: &GangRun, lane: usize, now_ns: u64) {
        let state = match lock(&run.slot).as_mut() {
            Some(slot) => slot.runtime.quantum_ended_on(lane),
            None => return,
        };
        self.trace_lock_preempted(run.vm, lane, state, now_ns);
    }
}

/// How long lane `lane` of `slot`'s VM waits before it looks again (its
/// vCPU sleeps or has halted; at most until `end_ns`), or None when its
/// vCPU can run now.
fn lane_waits(slot: &mut Slot, lane: usize, now_ns: u64, end_ns: u64) -> Option<u64> {
    let vcpu = &mut slot.runtime.vcpus[lane];
    vcpu.wake_if_due(now_ns);
    if vcpu.runnable() {
        return None;
    }
    let until = match vcpu.state {
        crate::sched::vcpu_runtime::VcpuState::Sleeping { until_ns: Some(until_ns) } => until_ns,
        _ => end_ns,
    };
    Some(until.min(end_ns).saturating_sub(now_ns).max(1))
}
