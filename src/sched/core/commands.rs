//! Applying the front ends' commands between slices: weights, pause and
//! resume, restart, step, policy and quantum, quit; and the settings and
//! states they change.

use super::*;
use crate::migration::ownership::{self, Request};

impl Core {
    /// Applies the commands waiting, in order, up to and including the
    /// first step: what came after a step waits until it is done (a `quit`
    /// after three `step`s quits after the third).
    pub(super) fn apply_commands(&mut self) {
        while self.step_requests.is_empty() {
            let Ok(command) = self.commands.try_recv() else { return };
            self.apply(command);
        }
    }

    /// Carries out what reached the core: a front end's command or a helper
    /// thread's message.
    pub(super) fn apply(&mut self, message: Message) {
        match message {
            Message::Command(command) => self.apply_command(command),
            Message::Internal(internal) => self.apply_internal(internal),
        }
    }

    fn apply_command(&mut self, command: Command) {
        // A VM that moved to another core: its commands follow it.
        if let Some(vm) = command.vm().filter(|&vm| !self.slots.owns(vm)) {
            let Err(Message::Command(command)) = self.pass_on(vm, Message::Command(command)) else { return };
            return self.apply_known(command);
        }
        self.apply_known(command);
    }

    fn apply_known(&mut self, command: Command) {
        match command {
            Command::Quit => {
                self.quit = true;
                // No VM moves from here on: every core reports the VMs it has.
                self.move_gate.close();
            }
            Command::SetWeight { vm, weight } => {
                if let Some(slot) = self.slots.get_mut(vm).filter(|_| check_weight(weight).is_ok()) {
                    slot.config.weight = weight;
                    self.planner.set_candidate(vm, slot.candidate(self.planner.policy()));
                    self.outbox.push_back(Event::Settings(self.settings()));
                }
            }
            // Every path that could run, change or move a VM asks the
            // migration's ownership first (migration/ownership.rs).
            Command::Pause(vm) if self.slots.owns(vm) && self.refuses(vm, Request::Pause, "pause") => {}
            Command::Resume(vm) if self.slots.owns(vm) && self.refuses(vm, Request::Resume, "resume") => {}
            Command::Step { vm, .. } if self.slots.owns(vm) && self.refuses(vm, Request::Step, "step") => {}
            Command::Restart(vm) if self.slots.owns(vm) && self.refuses(vm, Request::Restart, "restart") => {}
            Command::Pause(vm) => {
                // A sleeping VM can be held too: its ticks wait, coalesced, until it resumes.
                if self.slots.get(vm).is_some_and(|slot| {
                    matches!(slot.state, VmState::Running | VmState::Sleeping { .. } | VmState::Throttled { .. })
                }) {
                    self.set_state(vm, VmState::Paused);
                }
            }
            Command::Restart(vm) if self.slots.get(vm).is_some_and(|slot| slot.outgoing.is_some()) => {
                self.abandon(vm, "the VM was restarted");
                self.restart(vm);
            }
            Command::Resume(vm) => {
                let Some(slot) = self.slots.get(vm) else { return };
                // A VM stopped for gdb with no gdb connected can be let go.
                let idle_debugger = slot.debug.as_ref().is_some_and(|debug| debug.peer.is_none());
                if slot.state == VmState::Paused || (matches!(slot.state, VmState::Gdb { .. }) && idle_debugger) {
                    self.arm_debugger(vm, None);
                    self.set_state(vm, VmState::Running);
                }
            }
            Command::Restart(vm) if self.slots.owns(vm) => self.restart(vm),
            Command::Restart(_) => {}
            Command::Step { vm, .. }
                if matches!(self.slots.get(vm).map(|slot| &slot.state), Some(VmState::Gdb { .. })) =>
            {
                self.slots[vm]
                    .runtime
                    .console
                    .note(format_args!("this VM is stopped for gdb: step it from gdb (stepi)"));
            }
            Command::Step { vm, vcpu } if self.slots.owns(vm) => self.step_requests.push_back((vm, vcpu)),
            Command::Step { .. } => {}
            Command::CancelMigration(vm) if self.slots.owns(vm) => {
                if !self.refuses(vm, Request::CancelMigration, "migrate cancel") {
                    self.sender_event(vm, crate::migration::handover::SenderEvent::Cancelled, "cancelled here");
                }
            }
            Command::CancelMigration(_) => {}
            Command::Pin { vm, cores } if self.slots.owns(vm) => self.pin(vm, cores),
            Command::Pin { .. } => {}
            Command::Adopt(vm) if self.slots.owns(vm) => {
                if !self.refuses(vm, Request::Adopt, "adopt") {
                    self.adopt(vm);
                }
            }
            Command::Adopt(_) => {}
            Command::SetAutoConverge(on) => {
                self.migration.auto_converge = on;
                let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
                let text = format!("auto-converge {} for migrations", if on { "on" } else { "off" });
                self.outbox.push_back(Event::Notice { t_ns, text });
            }
            Command::Snapshot { vm, path } if self.slots.owns(vm) => {
                if let Err(why) = ownership::decide(self.holding(vm), Request::Snapshot) {
                    let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
                    self.outbox.push_back(Event::Snapshot { vm, t_ns, path, result: Err(why.to_string()) });
                } else {
                    self.snapshot(vm, path);
                }
            }
            Command::Snapshot { .. } => {}
            Command::SetPolicy(Policy::Gang) if self.gang.too_wide(self.cores).is_some() => {
                let (vm, vcpus) = self.gang.too_wide(self.cores).expect("checked");
                // Every core refuses alike; the VM's own core says why.
                if self.slots.owns(vm) {
                    let cores = self.cores;
                    self.note(
                        vm,
                        format_args!(
                            "policy gang refused: this VM has {vcpus} vCPUs and the run {cores} core{}; gang runs \
                             all of a VM's vCPUs at once (start with --cpus {vcpus} or more)",
                            if cores == 1 { "" } else { "s" }
                        ),
                    );
                }
            }
            Command::SetPolicy(policy) => self.set_planner(policy, self.planner.quantum_ns()),
            Command::SetQuantum(quantum) => {
                let quantum = quantum.clamp(MIN_QUANTUM, MAX_QUANTUM).as_nanos() as u64;
                self.set_planner(self.planner.policy(), quantum);
            }
            // Turned into the internal `Migrate` by the handle before it gets here.
            Command::MigrateTo { .. } => {}
        }
    }

    fn apply_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Debug { vm, request } if self.slots.owns(vm) => self.debug_request(vm, request),
            Internal::Debug { .. } => {}
            Internal::Migrate { vm, attempt, to, link } if self.slots.owns(vm) => {
                if let Err(why) = ownership::decide(self.holding(vm), Request::Migrate) {
                    // Told to its own link only: the move under way is not touched.
                    self.note(vm, format_args!("migration to {to} not started: {why}"));
                    let _ = link.0.try_send(crate::migration::protocol::Frame::Abandon(why.to_string()));
                } else {
                    self.migrate(vm, attempt, to, link.0);
                }
            }
            Internal::Migrate { .. } => {}
            Internal::Migration { vm, attempt, frame } => self.migration_frame(vm, attempt, frame),
            Internal::MigrationGoSent { vm, attempt } => self.migration_go_sent(vm, attempt),
            Internal::MigrationFailed { vm, attempt, why, sending } => {
                self.migration_failed(vm, attempt, &why, sending)
            }
            Internal::PrepareArrival { name, memory_size, from, reply } => {
                reply.send(self.prepare_arrival(name, memory_size, from));
            }
            Internal::ArrivalState { vm, state, rounds, pages, reply } => {
                reply.send(self.arrival_state(vm, *state, rounds, pages));
            }
            Internal::StartIncoming { vm, last_slice_ns, paused, report } => {
                self.start_incoming(vm, last_slice_ns, paused, report)
            }
            Internal::IncomingOrphaned { vm, why, dropped } => self.incoming_ended(vm, &why, dropped),
            // The balancer saw it here a sample ago: if it has moved since, the ask follows it.
            Internal::MoveVm { vm, to } if !self.slots.owns(vm) => {
                let _ = self.pass_on(vm, Message::Internal(Internal::MoveVm { vm, to }));
            }
            Internal::MoveVm { vm, to } => self.move_vm(vm, to),
            Internal::VmArrived => self.take_arrivals(),
            // The run loop takes the call from the lane inbox next.
            Internal::GangCall => {}
            Internal::Notice(text) => {
                let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
                self.outbox.push_back(Event::Notice { t_ns, text });
            }
        }
    }

    pub(super) fn set_planner(&mut self, policy: Policy, quantum_ns: u64) {
        if policy == self.planner.policy() {
            self.planner.set_quantum(quantum_ns);
        } else {
            self.planner = Planner::new(policy, quantum_ns, &candidates(&self.slots, policy));
        }
        self.outbox.push_back(Event::Settings(self.settings()));
    }

    pub(super) fn restart(&mut self, vm: VmId) {
        if self.slots[vm].config.image.is_empty() && self.slots[vm].config.snapshot.is_none() {
            self.note(
                vm,
                format_args!(
                    "restart refused: it came by migration, so there is no image or snapshot here to start it \
                     from again; snapshot it and restore that file instead"
                ),
            );
            return;
        }
        // What the old VM printed still goes out, before its new life starts.
        self.queue_console(vm);
        let slot = &mut self.slots[vm];
        let spec = machine_spec(&slot.config);
        let made = match &slot.config.snapshot {
            // A restored VM starts its new life where the snapshot left it.
            Some(snapshot) => {
                VmRuntime::restored(&self.kvm, &spec, slot.config.ports.clone(), snapshot, monotonic_ns())
            }
            None => VmRuntime::new(&self.kvm, &spec, slot.config.ports.clone()),
        };
        match made {
            Ok(mut runtime) => {
                // The console (already flushed above) goes on, so that the
                // report's history holds every life with a note between them.
                runtime.console = std::mem::take(&mut slot.runtime.console);
                slot.runtime = runtime;
                slot.charged_ns = 0;
                slot.stolen_ns = 0;
                slot.stolen_unpaid_ns = 0;
                // The note is stamped now, not at the old life's last exit.
                slot.runtime.console.set_clock(monotonic_ns().saturating_sub(self.epoch_ns));
                match &slot.config.snapshot {
                    Some(snapshot) => slot.runtime.console.note(format_args!(
                        "VM restarted from the snapshot {}",
                        crate::console::escape_input(&snapshot.path)
                    )),
                    None => slot.runtime.console.note(format_args!("VM restarted")),
                }
                self.announce_setup(vm);
                let state = match &mut self.slots[vm].debug {
                    // A VM under gdb starts its new life waiting at the entry, as its first.
                    Some(debug) => {
                        debug.forget();
                        debug.applied = GuestDebug::default();
                        debug.answer_resume(DebugReply::Ended(DebugEnd::Killed));
                        VmState::Gdb { stop: DebugStop::Waiting }
                    }
                    None => VmState::Running,
                };
                self.set_state(vm, state);
            }
            Err(error) => {
                let registers = slot.runtime.machine.boot_vcpu().registers();
                slot.runtime.console.set_clock(monotonic_ns().saturating_sub(self.epoch_ns));
                slot.runtime.console.note(format_args!("restart failed: {error}"));
                self.set_state(vm, VmState::Crashed { reason: format!("restart failed: {error}"), registers });
            }
        }
    }

    /// Tells the front end how `vm` was set up, if it asked for records
    /// (only the UI's inspector shows it).
    pub(super) fn announce_setup(&mut self, vm: VmId) {
        if self.live_records {
            let machine = &self.slots[vm].runtime.machine;
            let (steps, summary) = (machine.setup.clone(), machine.summary());
            self.outbox.push_back(Event::Setup { vm, steps, summary });
        }
    }

    pub(super) fn settings(&self) -> Settings {
        Settings {
            policy: self.planner.policy(),
            quantum: Duration::from_nanos(self.planner.quantum_ns()),
            timer: self.timer_kind,
            // Another core's VMs as NaN: the merger fills in theirs.
            weights: self.slots.each().map(|slot| slot.map_or(f64::NAN, |slot| slot.config.weight)).collect(),
            cpus: self.cores,
        }
    }

    /// Records a state change. A VM that finishes has its last console bytes
    /// queued first, so that front ends see them before the new state.
    pub(super) fn set_state(&mut self, vm: VmId, state: VmState) {
        if state.is_finished() {
            self.queue_console(vm);
        }
        let _ = match (self.slots[vm].state.is_finished(), state.is_finished()) {
            (false, true) => self.move_gate.finished_one(),
            (true, false) => self.move_gate.unfinished.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            _ => 0,
        };
        // Sleeping and throttled VMs both wait for a time: the core wakes them.
        let sleeps = |state: &VmState| matches!(state, VmState::Sleeping { .. } | VmState::Throttled { .. });
        if sleeps(&self.slots[vm].state) != sleeps(&state) {
            if sleeps(&state) { self.sleeping += 1 } else { self.sleeping -= 1 }
        }
        if let VmState::Sleeping { until_ns } | VmState::Throttled { until_ns } = state {
            self.wakes.push(std::cmp::Reverse((until_ns, vm)));
        }
        // A sleep, and the wake from one, keep the VM's lag (see FairQueue).
        let keeps_lag = matches!((&self.slots[vm].state, &state), (VmState::Running, VmState::Sleeping { .. }))
            || matches!((&self.slots[vm].state, &state), (VmState::Sleeping { .. }, VmState::Running));
        self.slots[vm].state = state.clone();
        self.planner.set_candidate(vm, Candidate { keeps_lag, ..self.slots[vm].candidate(self.planner.policy()) });
        // A front end that does not read (a frozen display) must not make the
        // outbox grow with every sleep and wake: the newest of a VM's passing
        // states replaces one still queued. Ends, pauses and the like stay.
        let passing =
            |state: &VmState| matches!(state, VmState::Running | VmState::Sleeping { .. } | VmState::Throttled { .. });
        if passing(&state) {
            let queued = self.outbox.iter().rposition(|event| matches!(event, Event::State { vm: v, .. } if *v == vm));
            if let Some(at) =
                queued.filter(|&at| matches!(&self.outbox[at], Event::State { state, .. } if passing(state)))
            {
                self.outbox.remove(at);
            }
        }
        self.outbox.push_back(Event::State { vm, state });
    }
}
