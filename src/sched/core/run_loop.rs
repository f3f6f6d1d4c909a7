//! The run loop: planning slices, running a VM through one (its exits, its
//! deadline, stolen time), stepping, and idling when nothing can run.

use super::*;
use crate::hypercall::lock_records::LockState;

impl Core {
    pub(super) fn run(mut self, ready: Sender<Result<(), SpawnError>>) {
        let _attached = self.kick.attach();
        let create = || quantum_timer::create(self.timer_kind, &self.kick);
        let mut deadlines = match create().map(Deadlines::new) {
            Ok(deadlines) => deadlines,
            Err(source) => {
                let other = match self.timer_kind {
                    TimerKind::Posix => TimerKind::Timerfd,
                    TimerKind::Timerfd => TimerKind::Posix,
                };
                let _ = ready.send(Err(SpawnError::Timer { kind: self.timer_kind, other, source }));
                return;
            }
        };
        // Its waits for a sleeper's wake-up end on time, not up to the 50 µs
        // of slack Linux gives a thread's timers by default.
        // SAFETY: PR_SET_TIMERSLACK takes a number and changes only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        if let Some(cpu) = self.host_cpu {
            // A core that cannot stay on its CPU still runs: the host moves it.
            if let Err(error) = crate::os::affinity::bind_current_thread(cpu) {
                self.outbox.push_back(Event::Notice {
                    t_ns: 0,
                    text: format!("a core could not be bound to CPU {cpu}: {error}"),
                });
            }
        }
        // Everything the thread opens it has opened: from here on it runs guests.
        if self.seccomp {
            if let Err(error) = seccomp::confine_current_thread() {
                let _ = ready.send(Err(error.into()));
                return;
            }
        }
        let _ = ready.send(Ok(()));
        let panic_at = injected_panic_at();
        self.stolen.start(ThreadClocks::now());
        self.outbox.push_back(Event::Settings(self.settings()));
        for vm in 0..self.slots.len() {
            if !self.slots.owns(vm) {
                continue;
            }
            self.announce_setup(vm);
            if let Some(debug) = &self.slots[vm].debug {
                let status = DebuggerStatus::Listening { address: debug.address.clone(), serving: debug.serving() };
                self.debugger_status(vm, status);
            }
            if self.slots[vm].state != VmState::Running {
                self.outbox.push_back(Event::State { vm, state: self.slots[vm].state.clone() });
            }
        }
        // Steps asked for before a quit are answered before the run ends.
        while !self.quit || !self.step_requests.is_empty() {
            if panic_at.is_some_and(|at| std::time::Instant::now() >= at) {
                panic!("a panic injected into the core thread (MATRIX_TUI_TEST_CORE_PANIC_MS)");
            }
            // First, so that a command (a receiver's Ack) is acted on at once.
            if self.migrating > 0 {
                let settings = self.migration;
                self.drive_migrations(&settings);
            }
            // Another core's gang window first: its VM's vCPUs run together.
            if let Ok(call) = self.lane_calls.try_recv() {
                self.serve_lane(&call, &mut deadlines);
                continue;
            }
            if self.kick.take_request() {
                self.apply_commands();
                continue;
            }
            if let Some(vm) = self.gdb_steps.pop_front() {
                // No lane of a gang window cuts a step short (see gang.rs).
                self.gang.set_stepping(self.index, true);
                self.gdb_step(vm, &mut deadlines);
                self.gang.set_stepping(self.index, false);
                self.apply_commands();
                self.deliver_outbox();
                continue;
            }
            if let Some((vm, vcpu)) = self.step_requests.pop_front() {
                self.gang.set_stepping(self.index, true);
                self.step(vm, vcpu, &mut deadlines);
                self.gang.set_stepping(self.index, false);
                self.apply_commands();
                self.deliver_outbox();
                continue;
            }
            if self.saving > 0 {
                self.drive_saves();
            }
            if self.sleeping > 0 {
                self.wake_sleepers(monotonic_ns());
            }
            let (window, next_window) = self.gang_window();
            if let Some((vm, end_ns)) = window {
                self.run_gang_window(vm, end_ns, &mut deadlines);
                let now_ns = monotonic_ns();
                self.deliver_outbox();
                self.flush_consoles_if_due(now_ns);
                self.sample_if_due(now_ns);
                continue;
            }
            let now_ns = match self.planner.next_slice() {
                Some(mut slice) => {
                    // A sleeper wakes on time even while another VM runs,
                    // and a gang window starts on time.
                    for due in [self.earliest_wake_ns(), next_window].into_iter().flatten() {
                        if let Some(length) = slice.length_ns {
                            let left = due.saturating_sub(monotonic_ns()).max(MIN_QUANTUM.as_nanos() as u64);
                            slice.length_ns = Some(length.min(left));
                        }
                    }
                    let record = self.run_slice(slice, &mut deadlines, false);
                    if self.slots[slice.vm].runtime.console.pending_len() >= CONSOLE_FLUSH_BYTES {
                        let batch = self.take_one_console(slice.vm);
                        self.send_console(batch);
                    }
                    self.epoch_ns + record.end_ns
                }
                None if self.stay_open
                    || next_window.is_some()
                    // With several cores, another core's VM may come here.
                    || (self.cores > 1 && self.move_gate.any_unfinished())
                    || self.migrating > 0
                    || self.saving > 0
                    || !self.step_requests.is_empty()
                    || self.slots.iter().any(|slot| {
                        matches!(
                            slot.state,
                            VmState::Paused
                                | VmState::Gdb { .. }
                                | VmState::Sleeping { .. }
                                | VmState::Throttled { .. }
                        )
                    }) =>
                {
                    deadlines.disarm();
                    self.idle(next_window);
                    monotonic_ns()
                }
                None => break,
            };
            self.deliver_outbox();
            self.flush_consoles_if_due(now_ns);
            self.sample_if_due(now_ns);
        }
        deadlines.disarm();
        let armed_ahead_pct = deadlines.armed_ahead_pct();
        drop(deadlines);
        self.finish(armed_ahead_pct);
    }

    /// Runs one slice of `slice.vm`: until its next I/O exit under `io` (or
    /// when `stepping`), else until its deadline, a yield, its end, or a
    /// command; records it and returns the record.
    ///
    /// The slice is charged its time in KVM_RUN up to the deadline, less
    /// what the VM is still owed of the time the host took the CPU away from
    /// this thread in its slices (see [`stolen`](super::stolen)). A stepped
    /// slice is charged to the VM but not to the policy: the VM is paused.
    pub(super) fn run_slice(&mut self, slice: Slice, deadlines: &mut Deadlines, stepping: bool) -> SliceRecord {
        let vm = slice.vm;
        let wall_start = monotonic_ns();
        let cpu_before = self.slots[vm].runtime.cpu_ns;
        if self.slots[vm].incoming.is_some() {
            self.first_slice_here(vm, wall_start);
        }
        self.kick.note_cpu();
        if let Some(previous) = self.preempted_at.take() {
            deadlines.observe_gap(previous, wall_start);
        }
        // The timer is armed for `kick`, early by the latency measured, so
        // that the guest is out of KVM_RUN at `deadline`.
        let (kick, deadline) = match slice.length_ns {
            Some(length) => {
                let lead = length - self.compensation.run_before_kick(length);
                let following = self.planner.following_length_ns().filter(|_| !stepping);
                let following = following.map(|length| self.compensation.run_before_kick(length));
                let kick = deadlines.start_slice(wall_start, wall_start + length - lead, following);
                self.kick.set_deadline(kick);
                (kick, kick + lead)
            }
            None => {
                // No expiry may cut a slice that runs until I/O.
                deadlines.disarm();
                (u64::MAX, u64::MAX)
            }
        };
        let mut in_guest = 0;
        let mut exits = 0;
        let mut injected = 0;
        let mut falls_asleep = None;
        self.slots[vm].runtime.begin_slice(wall_start);
        let locks_before = self.slots[vm].runtime.lock_sums();
        let first_vcpu = self.slots[vm].runtime.current_vcpu() as u16;
        let end = loop {
            let deliver = !stepping && self.slots[vm].state == VmState::Running;
            let (step, span, record) = self.slots[vm].runtime.step(&self.kick, self.epoch_ns, deliver, deadline);
            if let Some(mut injection) = self.slots[vm].runtime.injection.take() {
                injection.vm = vm;
                injected += 1;
                self.keep_exit(injection);
            }
            in_guest += span.charged_until(deadline);
            let rip = record.map_or(0, |record| record.rip);
            if let Some(mut record) = record {
                record.vm = vm;
                exits += 1;
                self.keep_exit(record);
            }
            if let (Step::Io, Some(timings)) = (&step, &mut self.slots[vm].timings) {
                timings.io_exit_ns.push(span.exited_ns);
            }
            if step == Step::Io {
                if let Some(stop) = self.debugger_after_io(vm, rip) {
                    self.stop_for_debugger(vm, stop);
                    break SliceEnd::Debugger;
                }
            }
            match step {
                Step::Io if stepping => break SliceEnd::Step,
                Step::Io if slice.length_ns.is_none() => break SliceEnd::IoSwitch,
                Step::Io if span.exited_ns >= deadline => break SliceEnd::ExitAfterDeadline,
                Step::Io => continue,
                Step::Switched if stepping => break SliceEnd::Step,
                Step::Switched if span.exited_ns >= deadline => break SliceEnd::ExitAfterDeadline,
                Step::Switched => continue,
                Step::Yielded => break SliceEnd::Yield,
                Step::Halted { registers } => {
                    let t_ns = span.exited_ns.saturating_sub(self.epoch_ns);
                    self.set_state(vm, VmState::Halted { registers, t_ns });
                    let reply = self.stop_reply(vm, DebugStop::Halted);
                    self.answer_debugger(vm, reply);
                    break SliceEnd::Halt;
                }
                Step::Sleeping { until_ns } => {
                    // It falls asleep once the slice is charged to it: the
                    // time it ran is its own, and it takes that into its sleep.
                    falls_asleep = Some(until_ns.saturating_sub(self.epoch_ns));
                    break SliceEnd::Sleep;
                }
                Step::Crashed { reason, registers, .. } => {
                    self.set_state(vm, VmState::Crashed { reason, registers });
                    let reply = self.stop_reply(vm, DebugStop::Crashed);
                    self.answer_debugger(vm, reply);
                    break SliceEnd::Crash;
                }
                Step::Debug(exit) => match self.debugger_exit(vm, exit) {
                    Some(stop) => {
                        self.stop_for_debugger(vm, stop);
                        break SliceEnd::Debugger;
                    }
                    // Stepped to serve a breakpoint or watchpoint that did not
                    // hit; a host may not report a stepped hlt, so it is seen here.
                    None if self.halts_next(vm, exit.pc) => {
                        self.halt_for_debugger(vm);
                        break SliceEnd::Halt;
                    }
                    None if span.exited_ns >= deadline => break SliceEnd::ExitAfterDeadline,
                    None => continue,
                },
                Step::Interrupted if self.kick.is_requested() => break SliceEnd::Command,
                Step::Interrupted if span.exited_ns >= kick => {
                    self.slots[vm].runtime.counters.preemptions += 1;
                    // Ended before its deadline (the lead was more than this
                    // kick's latency): no overrun, and the early end is repaid.
                    self.overruns.record(span.exited_ns.saturating_sub(deadline));
                    if span.exited_ns < deadline {
                        self.early_ends.record(deadline - span.exited_ns);
                    }
                    if !stepping {
                        self.compensation.observe(kick, span.exited_ns);
                    }
                    self.preempted_at = Some(kick);
                    break SliceEnd::Deadline;
                }
                // A signal for an earlier slice (or not for us): carry on.
                Step::Interrupted => continue,
            }
        };
        self.kick.set_deadline(u64::MAX);
        let wall_end = monotonic_ns();
        if matches!(end, SliceEnd::Deadline | SliceEnd::ExitAfterDeadline) {
            self.lock_after_quantum(vm, wall_end);
        }
        let spin_pct = locks_before.and_then(|before| {
            let after = self.slots[vm].runtime.lock_sums()?;
            after.spin_pct_since(&before).map(|pct| pct.round() as u8)
        });
        let seen =
            WindowSlice { vm, start_ns: wall_start, end_ns: wall_end, deadline_ns: deadline, charged_ns: in_guest };
        for share in self.stolen.end_slice(seen, ThreadClocks::now) {
            // A VM that moved to another core since its slice keeps what it was charged.
            let Some(slot) = self.slots.get_mut(share.vm) else { continue };
            slot.stolen_ns += share.stolen_ns;
            slot.stolen_unpaid_ns += share.stolen_ns;
        }
        if !stepping && self.slots[vm].state == VmState::Running && falls_asleep.is_none() {
            self.throttle_after_slice(vm, wall_end - wall_start, wall_end);
        }
        let slot = &mut self.slots[vm];
        slot.last_slice_ns = wall_end;
        let repaid = slot.stolen_unpaid_ns.min(in_guest);
        slot.stolen_unpaid_ns -= repaid;
        let charged = in_guest - repaid;
        slot.charged_ns += charged;
        slot.runtime.end_slice(charged);
        if let Some(timings) = &mut slot.timings {
            timings.slices.push(TimedSlice { start_ns: wall_start, end_ns: wall_end, charged_ns: charged });
        }
        if !stepping {
            let gave_up = matches!(end, SliceEnd::Yield | SliceEnd::Halt | SliceEnd::Sleep | SliceEnd::Crash);
            self.planner.charge(vm, charged, gave_up);
        }
        if let Some(until_ns) = falls_asleep {
            self.set_state(vm, VmState::Sleeping { until_ns });
        }
        let record = SliceRecord {
            vm,
            vcpu: first_vcpu,
            start_ns: wall_start.saturating_sub(self.epoch_ns),
            end_ns: wall_end.saturating_sub(self.epoch_ns),
            charged_ns: charged,
            end,
            exits,
            injected,
            core: self.index as u16,
            spin_pct,
        };
        self.keep_slice(record);
        self.kvm_run_ns += self.slots[vm].runtime.cpu_ns.saturating_sub(cpu_before);
        record
    }

    /// The quantum of `vm`'s running vCPU ended at `now_ns`: a trace record
    /// if the guest's lock record says that vCPU held a lock or waited.
    fn lock_after_quantum(&mut self, vm: VmId, now_ns: u64) {
        let runtime = &mut self.slots[vm].runtime;
        let vcpu = runtime.current_vcpu();
        let state = runtime.quantum_ended();
        self.trace_lock_preempted(vm, vcpu, state, now_ns);
    }

    /// A trace record of `vm`'s vCPU `vcpu` descheduled at `now_ns` while
    /// its lock record said `state` (none if it neither held nor waited).
    pub(super) fn trace_lock_preempted(&mut self, vm: VmId, vcpu: usize, state: LockState, now_ns: u64) {
        let holder = match state {
            LockState::Holds => true,
            LockState::Waits => false,
            LockState::Neither => return,
        };
        if let Some((trace, _)) = &mut self.trace {
            let t_ns = now_ns.saturating_sub(self.epoch_ns);
            trace.push(TraceRecord::LockPreempted { vm, vcpu: vcpu as u16, t_ns, holder });
        }
    }

    /// Keeps an exit for the front end and the trace.
    pub(super) fn keep_exit(&mut self, record: ExitRecord) {
        keep_exit_of(&mut self.slots[record.vm], record, self.live_records, &mut self.trace);
    }

    /// Keeps a slice for the front end and the trace.
    pub(super) fn keep_slice(&mut self, record: SliceRecord) {
        if self.live_records {
            if self.live_slices.len() == LIVE_SLICES {
                // Dropped in halves so that the copy is paid once per half.
                self.live_slices.drain(..LIVE_SLICES / 2);
                self.live_slices_dropped += (LIVE_SLICES / 2) as u64;
            }
            self.live_slices.push(record);
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.push(TraceRecord::Slice(record));
        }
    }

    /// Steps `vm` once: runs it (its vCPU `chosen`, or the one whose turn it
    /// is) to its next exit (or for at most [`STEP_LIMIT`] or a quantum),
    /// pauses it there, and tells the front end what happened.
    pub(super) fn step(&mut self, vm: VmId, chosen: Option<u16>, deadlines: &mut Deadlines) {
        if !self.slots.owns(vm) {
            let _ = self.pass_on(vm, Message::Command(Command::Step { vm, vcpu: chosen }));
            return;
        }
        // Asked for before its move paused it: it may not run now.
        if !crate::migration::ownership::may_run(self.holding(vm)) {
            self.note(vm, format_args!("step refused: it is held for its move"));
            return;
        }
        let slot = &mut self.slots[vm];
        if slot.state.is_finished() {
            let registers = slot.runtime.machine.boot_vcpu().registers();
            let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
            let result = StepResult::Finished;
            self.outbox.push_back(Event::Stepped { vm, t_ns, result, registers, vcpu: None });
            return;
        }
        if let Some(vcpu) = chosen {
            let runtime = &mut self.slots[vm].runtime;
            let count = runtime.vcpus.len();
            match runtime.vcpus.get(usize::from(vcpu)) {
                None => {
                    let plural = if count == 1 { "" } else { "s" };
                    self.note(
                        vm,
                        format_args!("step refused: no vCPU {vcpu} (it has {count} vCPU{plural}, 0 to {})", count - 1),
                    );
                    return;
                }
                Some(runtime) if runtime.state == crate::sched::vcpu_runtime::VcpuState::Halted => {
                    self.note(vm, format_args!("step refused: vCPU {vcpu} has halted for good"));
                    return;
                }
                Some(_) if count > 1 => runtime.pin_vcpu(usize::from(vcpu)),
                Some(_) => {}
            }
        }
        let length = self.planner.quantum_ns().max(STEP_LIMIT.as_nanos() as u64);
        let slice = Slice { vm, length_ns: Some(length) };
        let exits_before = self.slots[vm].runtime.counters.exits.total();
        let record = self.run_slice(slice, deadlines, true);
        let exited = self.slots[vm].runtime.counters.exits.total() > exits_before;
        if record.end == SliceEnd::Command && !exited {
            // A command came first: apply it, then step afresh (a quit, too,
            // waits for the steps asked for before it).
            self.kick.take_request();
            self.apply_commands();
            self.step_requests.push_front((vm, chosen));
            return;
        }
        let slot = &mut self.slots[vm];
        // The vCPU that made the exit (its sibling may have the VM's turn now).
        let stepped = slot.last_exit.filter(|_| exited).map_or(slot.runtime.current_vcpu(), |exit| exit.vcpu.into());
        let slot_vcpus = slot.runtime.vcpus.len();
        let vcpu = &mut slot.runtime.machine.vcpus[stepped];
        if !slot.state.is_finished() {
            vcpu.complete_pending_exit();
        }
        let registers = vcpu.registers();
        let result = match slot.last_exit.filter(|_| exited) {
            Some(exit) => StepResult::Exit(exit),
            None => StepResult::Preempted { ran_ns: record.end_ns - record.start_ns, rip: registers.rip },
        };
        if slot.state == VmState::Running {
            self.set_state(vm, VmState::Paused);
        }
        let t_ns = match result {
            StepResult::Exit(exit) => exit.t_ns,
            _ => record.end_ns,
        };
        // What the step printed goes out with it, not at the next round of flushes.
        self.queue_console(vm);
        let vcpu = (slot_vcpus > 1).then_some(stepped as u16);
        self.outbox.push_back(Event::Stepped { vm, t_ns, result, registers, vcpu });
    }

    /// Sleeping VMs whose tick has come due run again.
    fn wake_sleepers(&mut self, now_ns: u64) {
        let since_epoch = now_ns.saturating_sub(self.epoch_ns);
        while let Some(&std::cmp::Reverse((until_ns, vm))) = self.wakes.peek() {
            if until_ns > since_epoch {
                break;
            }
            self.wakes.pop();
            if self.waits_until(vm, until_ns) {
                let slept = matches!(self.slots[vm].state, VmState::Sleeping { .. });
                self.set_state(vm, VmState::Running);
                if slept && self.wake_preempt {
                    self.planner.woke(vm);
                }
            }
        }
    }

    /// Whether `vm` sleeps (or is throttled) until `until_ns` still: an entry
    /// of the wake heap whose VM was woken, paused or put to sleep again since
    /// is stale.
    fn waits_until(&self, vm: VmId, until_ns: u64) -> bool {
        matches!(self.slots.get(vm).map(|slot| &slot.state),
            Some(VmState::Sleeping { until_ns: until } | VmState::Throttled { until_ns: until }) if *until == until_ns)
    }

    /// When the first sleeping VM wakes (monotonic ns), if any sleeps.
    fn earliest_wake_ns(&mut self) -> Option<u64> {
        if self.sleeping == 0 {
            self.wakes.clear();
            return None;
        }
        while let Some(&std::cmp::Reverse((until_ns, vm))) = self.wakes.peek() {
            if self.waits_until(vm, until_ns) {
                return Some(self.epoch_ns + until_ns);
            }
            self.wakes.pop();
        }
        None
    }

    /// Nothing can run: wait for a command (a resume, a restart or a quit),
    /// or until the first sleeper wakes or `next_window` (a gang window of
    /// this core's) opens: the thread sleeps too, it does not spin.
    pub(super) fn idle(&mut self, next_window: Option<u64>) {
        let wake = match (self.earliest_wake_ns(), next_window) {
            (Some(wake), Some(window)) => Some(wake.min(window)),
            (wake, window) => wake.or(window),
        };
        let wait = match wake {
            // A save under way goes on as soon as its next step is due.
            _ if self.saving > 0 => Duration::from_nanos(self.next_save_step_ns.saturating_sub(monotonic_ns())),
            Some(wake) => Duration::from_nanos(wake.saturating_sub(monotonic_ns())).min(IDLE_WAIT),
            None => IDLE_WAIT,
        };
        match self.commands.recv_timeout(wait) {
            Ok(command) => {
                self.kick.take_request();
                self.apply(command);
                self.apply_commands();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.quit = true,
        }
    }
}

/// When the core thread is to panic, for the tests of what a panic on the
/// seccomp'd thread does to the terminal: `MATRIX_TUI_TEST_CORE_PANIC_MS`
/// after the start, in debug builds (the ones `cargo test` runs) only.
fn injected_panic_at() -> Option<std::time::Instant> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let ms: u64 = std::env::var("MATRIX_TUI_TEST_CORE_PANIC_MS").ok()?.parse().ok()?;
    Some(std::time::Instant::now() + std::time::Duration::from_millis(ms))
}

/// Keeps `record`, an exit of `slot`'s VM, as its latest, for the front end
/// (with `live_records`) and for the trace: on the core that owns the VM,
/// or on a gang lane's core while the VM is lent to it.
pub(super) fn keep_exit_of(
    slot: &mut Slot,
    record: ExitRecord,
    live_records: bool,
    trace: &mut Option<(TraceBuffer, String)>,
) {
    slot.last_exit = Some(record);
    if live_records {
        if slot.live_exits.len() == LIVE_EXITS {
            slot.live_exits.pop_front();
        }
        slot.live_exits.push_back(record);
    }
    if let Some((trace, _)) = trace {
        trace.push(TraceRecord::Exit(record));
    }
}
