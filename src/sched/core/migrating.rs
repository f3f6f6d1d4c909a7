//! Live migration, the core's side: a VM moving out (pre-copy rounds of
//! dirty pages while it runs, throttled if it dirties faster than the link
//! sends, then a pause for the rest and its state, and the switch of owner),
//! and VMs coming in (made blank at their Hello, given their state, run on
//! the sender's Go). The sockets are the link threads'
//! (`crate::migration::link`); this thread alone touches KVM. What each
//! event means for a move is the hand-over's table
//! (`crate::migration::handover`).

use super::*;
use crate::event::ArrivalMemory;
use crate::migration::MigrationSettings;
use crate::migration::handover::{self, SenderEvent, SenderOutcome};
use crate::migration::ownership::{self, Holding, Request};
use crate::migration::protocol::{Frame, MAX_PAGES_PER_FRAME, VERSION};
use crate::report::{MigrationReport, RoundReport, RoundsEnd};
use crate::snapshot::SnapshotState;
use crate::snapshot::format::PAGE_SIZE;

/// Where a VM moving out is: the hand-over's own phases.
use crate::migration::handover::Leaving as Phase;

/// A VM moving out.
pub(super) struct Outgoing {
    /// This attempt's number (its link's frames carry it).
    attempt: u64,
    to: String,
    link: Sender<Frame>,
    phase: Phase,
    round: u32,
    /// Pages still to send this round.
    pending: Vec<u64>,
    /// A frame the link had no room for yet.
    held: Option<(Frame, u64)>,
    round_pages: u64,
    total_pages: u64,
    sent_bytes: u64,
    acked_bytes: u64,
    started_ns: u64,
    round_started_ns: u64,
    /// Bytes a second the receiver acknowledged since the first page.
    bandwidth: f64,
    throttle_pct: u32,
    /// The VM's state before the pause, to go back to if the move fails.
    before_pause: Option<VmState>,
    /// When its last slice here ended (monotonic ns).
    last_slice_ns: u64,
    /// When the receiver took it over.
    moved_ns: u64,
    /// When the final pause began (monotonic ns).
    paused_ns: u64,
}

/// How long a run waits, after a VM moved out, to hear when it ran there.
const STARTED_WAIT_NS: u64 = 2_000_000_000;

/// The longest the sender's final pause may last before the Go: the last
/// pages, the state and the receiver's Ready. A receiver slower than that
/// (stalled, hostile) gets an Abandon, and the VM runs on here.
pub(super) const FINAL_PAUSE_LIMIT_NS: u64 = 10_000_000_000;

/// A duration in few characters: `850 us`, `2.61 ms`, `3.9 s`.
fn short_time(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{} us", ns / 1000),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}

/// QEMU's auto-converge steps: 20 % first, then 10 % more each round, at most 99 %.
fn next_throttle(pct: u32) -> u32 {
    if pct == 0 { 20 } else { (pct + 10).min(99) }
}

impl Core {
    /// `migrate NAME ADDR`: starts moving `vm` over `link`, as `attempt`.
    pub(super) fn migrate(&mut self, vm: VmId, attempt: u64, to: String, link: Sender<Frame>) {
        let slot = &mut self.slots[vm];
        let refusal = if slot.state.is_finished() {
            Some(format!("it has {}", slot.state.name()))
        } else if slot.outgoing.is_some() {
            Some("it is already moving".to_string())
        } else if slot.debug.as_ref().is_some_and(|debug| debug.peer.is_some()) {
            Some("gdb is attached to it".to_string())
        } else {
            None
        };
        let now_ns = monotonic_ns();
        slot.runtime.console.set_clock(now_ns.saturating_sub(self.epoch_ns));
        if let Some(why) = refusal {
            slot.runtime.console.note(format_args!("migration to {to} not started: {why}"));
            let _ = link.try_send(Frame::Abandon(why));
            return;
        }
        let hello = Frame::Hello {
            version: VERSION,
            name: slot.config.name.clone(),
            memory_size: slot.runtime.machine.memory_size(),
        };
        if link.try_send(hello).is_err() {
            slot.runtime.console.note(format_args!("migration to {to} not started: its link is gone"));
            return;
        }
        slot.runtime.console.note(format_args!("migrating to {to}"));
        slot.runtime.console.note(format_args!(
            "pause limit {}, round cap {}",
            short_time(self.migration.downtime_limit.as_nanos() as u64),
            self.migration.max_rounds
        ));
        slot.migration_report = Some(MigrationReport {
            direction: "out",
            peer: to.clone(),
            memory_pages: slot.runtime.machine.memory_size() / PAGE_SIZE as u64,
            ..Default::default()
        });
        slot.outgoing = Some(Box::new(Outgoing {
            attempt,
            to,
            link,
            phase: Phase::Hello,
            round: 0,
            pending: Vec::new(),
            held: None,
            round_pages: 0,
            total_pages: 0,
            sent_bytes: 0,
            acked_bytes: 0,
            started_ns: now_ns,
            round_started_ns: now_ns,
            bandwidth: 0.0,
            throttle_pct: 0,
            before_pause: None,
            last_slice_ns: slot.last_slice_ns,
            moved_ns: 0,
            paused_ns: 0,
        }));
        self.migrating += 1;
    }

    /// A frame from `vm`'s receiver, on the link of `attempt`: one of
    /// another attempt (a second `migrate` refused while this one goes on)
    /// is not this move's business.
    pub(super) fn migration_frame(&mut self, vm: VmId, attempt: u64, frame: Frame) {
        let Some(outgoing) = self.slots.get_mut(vm).and_then(|slot| slot.outgoing.as_mut()) else { return };
        if outgoing.attempt != attempt {
            return;
        }
        let (event, why) = match frame {
            Frame::Ack { bytes } => {
                outgoing.acked_bytes += bytes;
                let seconds = monotonic_ns().saturating_sub(outgoing.started_ns) as f64 / 1e9;
                if seconds > 0.0 {
                    outgoing.bandwidth = outgoing.acked_bytes as f64 / seconds;
                }
                return;
            }
            Frame::Accept => (SenderEvent::Accepted, String::new()),
            Frame::Ready => (SenderEvent::Ready, String::new()),
            Frame::Started { downtime_ns } => {
                if let Some(report) = &mut self.slots[vm].migration_report {
                    report.downtime_ms = Some(downtime_ns as f64 / 1e6);
                }
                (SenderEvent::Started, String::new())
            }
            Frame::Refuse(why) | Frame::Abandon(why) => (SenderEvent::ReceiverGaveUp, why),
            other => {
                let why = format!("the receiver sent {} during {:?}", other.name(), outgoing.phase);
                (SenderEvent::Unexpected, why)
            }
        };
        self.sender_event(vm, event, &why);
    }

    /// The link of `attempt` wrote the Go whole.
    pub(super) fn migration_go_sent(&mut self, vm: VmId, attempt: u64) {
        let Some(outgoing) = self.slots.get(vm).and_then(|slot| slot.outgoing.as_ref()) else { return };
        if outgoing.attempt == attempt {
            self.sender_event(vm, SenderEvent::GoWritten, "");
        }
    }

    /// The link of `attempt` failed: `sending` when its writer could not
    /// write (nothing from that frame on went out whole), else its reader
    /// lost the link (frames already written may have arrived, a Go among
    /// them).
    pub(super) fn migration_failed(&mut self, vm: VmId, attempt: u64, why: &str, sending: bool) {
        let Some(outgoing) = self.slots.get(vm).and_then(|slot| slot.outgoing.as_ref()) else { return };
        if outgoing.attempt == attempt {
            let event = if sending { SenderEvent::SendFailed } else { SenderEvent::ReceiveFailed };
            self.sender_event(vm, event, why);
        }
    }

    /// Carries out what the hand-over's table says of `event` for `vm`'s move.
    pub(super) fn sender_event(&mut self, vm: VmId, event: SenderEvent, why: &str) {
        let Some(outgoing) = self.slots[vm].outgoing.as_mut() else { return };
        let phase = outgoing.phase;
        match handover::sender_on(phase, event) {
            SenderOutcome::Stay => {
                if phase == Phase::Go && event == SenderEvent::ReceiveFailed {
                    let why = crate::console::escape_bounded(why, crate::console::REASON_LIMIT);
                    self.note(vm, format_args!("the link broke ({why}) with the Go on its way: its writer decides"));
                }
            }
            SenderOutcome::To(Phase::Rounds) => {
                let slot = &mut self.slots[vm];
                if let Err(error) = slot.runtime.machine.log_dirty_pages(true) {
                    return self.abandon(vm, &format!("KVM would not log dirty pages: {error}"));
                }
                let outgoing = slot.outgoing.as_mut().expect("checked");
                // Round 0 sends every page the guest has (the rest is zero on
                // both sides): the hypervisor's writes so far are in it.
                crate::vm::memory::take_host_writes(&slot.runtime.machine.memory);
                outgoing.pending = slot.runtime.machine.resident_pages();
                outgoing.pending.reverse();
                outgoing.phase = Phase::Rounds;
                let now_ns = monotonic_ns();
                (outgoing.started_ns, outgoing.round_started_ns) = (now_ns, now_ns);
            }
            SenderOutcome::To(Phase::Go) => {
                let paused = outgoing.before_pause == Some(VmState::Paused);
                let go = Frame::Go { last_slice_ns: outgoing.last_slice_ns, paused };
                // Nothing else is queued now (the receiver read the state):
                // a link with no room is a link gone, and the Go did not go.
                if outgoing.link.try_send(go).is_err() {
                    return self.abandon(vm, "the link closed before the Go");
                }
                outgoing.phase = Phase::Go;
            }
            SenderOutcome::To(next) => outgoing.phase = next,
            SenderOutcome::RunAtHome => {
                let why = if why.is_empty() { "called off".to_string() } else { why.to_string() };
                self.abandon(vm, &why);
            }
            SenderOutcome::HandedOver => {
                self.handed_over(vm);
                if event == SenderEvent::Started {
                    self.sender_event(vm, event, why);
                }
            }
            SenderOutcome::Finished => {
                if let Some(downtime_ms) = self.slots[vm].migration_report.as_ref().and_then(|r| r.downtime_ms) {
                    self.note(
                        vm,
                        format_args!(
                            "downtime {downtime_ms:.3} ms: its last slice here to its first there (one host's clock)"
                        ),
                    );
                }
                self.slots[vm].outgoing = None;
                self.migrating -= 1;
            }
        }
    }

    /// The Go went out (its writer said so, or the receiver's Started came
    /// first): the VM is the receiver's now.
    fn handed_over(&mut self, vm: VmId) {
        let Some(outgoing) = self.slots.get_mut(vm).and_then(|slot| slot.outgoing.as_mut()) else { return };
        outgoing.phase = Phase::Moved;
        outgoing.moved_ns = monotonic_ns();
        let (to, rounds, pages, started_ns) =
            (outgoing.to.clone(), outgoing.round + 1, outgoing.total_pages, outgoing.started_ns);
        let slot = &mut self.slots[vm];
        let _ = slot.runtime.machine.log_dirty_pages(false);
        let memory_pages = slot.runtime.machine.memory_size() / PAGE_SIZE as u64;
        let now_ns = monotonic_ns();
        if let Some(report) = &mut self.slots[vm].migration_report {
            (report.round_count, report.pages) = (rounds, pages);
            report.total_ms = Some(now_ns.saturating_sub(started_ns) as f64 / 1e6);
        }
        self.note(
            vm,
            format_args!(
                "migrated to {to}: {rounds} rounds, {pages} of {memory_pages} pages sent ({:.2}x), in {}",
                pages as f64 / memory_pages as f64,
                short_time(now_ns.saturating_sub(started_ns))
            ),
        );
        self.set_state(vm, VmState::Moved { to });
    }

    /// Gives the move up: the VM runs on here as it did.
    pub(super) fn abandon(&mut self, vm: VmId, why: &str) {
        let slot = &mut self.slots[vm];
        let Some(outgoing) = slot.outgoing.take() else { return };
        self.migrating -= 1;
        let _ = outgoing.link.try_send(Frame::Abandon(why.to_string()));
        let _ = slot.runtime.machine.log_dirty_pages(false);
        let why = crate::console::escape_bounded(why, crate::console::REASON_LIMIT);
        if let Some(report) = &mut self.slots[vm].migration_report {
            (report.round_count, report.pages) = (outgoing.round + 1, outgoing.total_pages);
            report.abandoned = Some(why.clone());
        }
        self.note(vm, format_args!("migration to {} abandoned: {why}; the VM runs on here", outgoing.to));
        if let Some(state) = outgoing.before_pause {
            self.set_state(vm, state);
        }
    }

    pub(super) fn note(&mut self, vm: VmId, text: std::fmt::Arguments<'_>) {
        let console = &mut self.slots[vm].runtime.console;
        console.set_clock(monotonic_ns().saturating_sub(self.epoch_ns));
        console.note(text);
    }

    /// Moves every migration on: sends what the links have room for, ends
    /// rounds whose pages have all been acknowledged, and starts the last
    /// one when the rest would fit the downtime limit.
    pub(super) fn drive_migrations(&mut self, settings: &MigrationSettings) {
        let now_ns = monotonic_ns();
        for vm in 0..self.slots.len() {
            let Some(slot) = self.slots.get(vm) else { continue };
            // A moved VM's receiver has a while to say when it ran it.
            if let Some(outgoing) = &slot.outgoing {
                if outgoing.phase == Phase::Moved && now_ns.saturating_sub(outgoing.moved_ns) > STARTED_WAIT_NS {
                    self.slots[vm].outgoing = None;
                    self.migrating -= 1;
                    continue;
                }
            }
            let overdue = self.slots[vm].outgoing.as_ref().is_some_and(|outgoing| {
                outgoing.paused_ns > 0 && now_ns.saturating_sub(outgoing.paused_ns) > FINAL_PAUSE_LIMIT_NS
            });
            if overdue {
                let limit = FINAL_PAUSE_LIMIT_NS / 1_000_000_000;
                let why = format!("the receiver did not take it within {limit} s of its final pause");
                // Past the Go the deadline no longer applies (the table says so).
                self.sender_event(vm, SenderEvent::Overdue, &why);
                if self.slots[vm].outgoing.is_none() {
                    continue;
                }
            }
            // A round that ends starts the next at once: no wait for the next slice.
            while let Some(outgoing) = &self.slots[vm].outgoing {
                if !matches!(outgoing.phase, Phase::Rounds | Phase::Last | Phase::Ready) {
                    break;
                }
                if !self.send_pages(vm) {
                    self.abandon(vm, "the link closed");
                    break;
                }
                let outgoing = self.slots[vm].outgoing.as_ref().expect("checked");
                let all_sent = outgoing.pending.is_empty() && outgoing.held.is_none();
                // A round ends when the receiver has every page (its time
                // measures the link); the last needs no wait: the state
                // follows its pages on the same ordered stream.
                match (outgoing.phase, all_sent, outgoing.acked_bytes >= outgoing.sent_bytes) {
                    (Phase::Rounds, true, true) => self.end_round(vm, settings),
                    (Phase::Last, true, _) => self.send_state(vm),
                    // Ready: the state waits in `held` until the link has room.
                    _ => break,
                }
            }
        }
    }

    /// Sends the held frame and the round's pages while the link has room;
    /// false if it closed.
    fn send_pages(&mut self, vm: VmId) -> bool {
        let slot = &mut self.slots[vm];
        let outgoing = slot.outgoing.as_mut().expect("migrating");
        loop {
            let (frame, count) = match outgoing.held.take() {
                Some(held) => held,
                None if outgoing.pending.is_empty() => return true,
                None => {
                    let take = outgoing.pending.len().min(MAX_PAGES_PER_FRAME);
                    let indices = outgoing.pending.split_off(outgoing.pending.len() - take);
                    // Round 0 leaves zero pages out (the receiver's are zero);
                    // later rounds send a dirtied page even if it became zero.
                    let mut pages = slot.runtime.machine.copy_pages(&indices, outgoing.round > 0);
                    if let Some(debug) = &slot.debug {
                        debug.hide_in_pages(&super::debugging::view(&slot.runtime), pages.iter_mut());
                    }
                    let count = pages.len() as u64;
                    let pages: Vec<(u64, Vec<u8>)> = pages.iter().map(|(index, page)| (index, page.to_vec())).collect();
                    (Frame::Pages { round: outgoing.round, pages }, count)
                }
            };
            match outgoing.link.try_send(frame) {
                Ok(()) => {
                    outgoing.sent_bytes += count * PAGE_SIZE as u64;
                    outgoing.round_pages += count;
                    outgoing.total_pages += count;
                }
                Err(crossbeam_channel::TrySendError::Full(frame)) => {
                    outgoing.held = Some((frame, count));
                    return true;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// The pages dirtied since the last call: KVM's log (the guest's own
    /// writes) and guest memory's dirty bitmap (the hypervisor's: the
    /// mailbox, hypercall results, a debugger's bytes).
    fn dirtied(&mut self, vm: VmId) -> Result<Vec<u64>, String> {
        let machine = &self.slots[vm].runtime.machine;
        let mut pages = machine.dirty_pages().map_err(|error| format!("KVM_GET_DIRTY_LOG failed: {error}"))?;
        pages.extend(crate::vm::memory::take_host_writes(&machine.memory));
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }

    fn end_round(&mut self, vm: VmId, settings: &MigrationSettings) {
        let dirty = match self.dirtied(vm) {
            Ok(dirty) => dirty,
            Err(why) => return self.abandon(vm, &why),
        };
        let now_ns = monotonic_ns();
        let slot = &mut self.slots[vm];
        let memory = slot.runtime.machine.memory_size();
        let outgoing = slot.outgoing.as_mut().expect("migrating");
        let round_s = (now_ns.saturating_sub(outgoing.round_started_ns) as f64 / 1e9).max(1e-6);
        let dirty_bytes = dirty.len() as f64 * PAGE_SIZE as f64;
        let dirty_rate = dirty_bytes / round_s;
        let bandwidth = outgoing.bandwidth.max(1.0);
        let expected_ns = (dirty_bytes / bandwidth * 1e9) as u64;
        let limit_ns = settings.downtime_limit.as_nanos() as u64;
        let capped = outgoing.round + 1 >= settings.max_rounds || outgoing.sent_bytes >= 3 * memory;
        // Two short lines: a pane of 50 columns shows them whole.
        let line = format!(
            "round {}: {} sent, {} dirtied ({:.0}/s)",
            outgoing.round,
            outgoing.round_pages,
            dirty.len(),
            dirty_rate / PAGE_SIZE as f64,
        );
        let second = format!(
            "{:.1} MB/s, pause {}, throttle {}%",
            bandwidth / 1e6,
            short_time(expected_ns),
            outgoing.throttle_pct
        );
        let record = RoundReport {
            round: outgoing.round,
            pages_sent: outgoing.round_pages,
            pages_dirtied: dirty.len() as u64,
            ms: round_s * 1e3,
            bandwidth_bytes_s: bandwidth,
            expected_downtime_ms: expected_ns as f64 / 1e6,
            throttle_pct: outgoing.throttle_pct,
        };
        let fits = expected_ns <= limit_ns;
        // QEMU's trigger: the guest dirtied more than half of what the round sent.
        let not_converging = dirty.len() as u64 * 2 > outgoing.round_pages;
        let throttle = settings.auto_converge && !fits && !capped && not_converging;
        if throttle {
            outgoing.throttle_pct = next_throttle(outgoing.throttle_pct);
        }
        outgoing.round += 1;
        outgoing.round_pages = 0;
        outgoing.round_started_ns = now_ns;
        outgoing.pending = dirty;
        self.note(vm, format_args!("{line}"));
        self.note(vm, format_args!("{second}"));
        if let Some(report) = &mut self.slots[vm].migration_report {
            report.rounds.push(record);
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.push(TraceRecord::Round { vm, t_ns: now_ns.saturating_sub(self.epoch_ns), round: record });
        }
        let ends = if fits { Some(RoundsEnd::Fits) } else { capped.then_some(RoundsEnd::Capped) };
        self.outbox.push_back(Event::Round { vm, round: record, ends });
        if fits || capped {
            let why = if fits { "the rest fits the downtime limit" } else { "the round or byte cap is reached" };
            self.note(vm, format_args!("last round, the VM paused: {why}"));
            self.start_last_round(vm);
        }
    }

    /// Auto-converge: a throttled VM that ran `ran_ns` is held off the CPU
    /// for `ran_ns * pct / (100 - pct)`, so it runs at most `100 - pct` % of
    /// the time, whoever else runs (its weight alone would not slow a VM
    /// that runs alone).
    pub(super) fn throttle_after_slice(&mut self, vm: VmId, ran_ns: u64, now_ns: u64) {
        let Some(outgoing) = &self.slots[vm].outgoing else { return };
        if outgoing.throttle_pct == 0 || outgoing.phase != Phase::Rounds {
            return;
        }
        let pct = u64::from(outgoing.throttle_pct);
        let rest_ns = ran_ns * pct / (100 - pct);
        let until_ns = (now_ns + rest_ns).saturating_sub(self.epoch_ns);
        self.set_state(vm, VmState::Throttled { until_ns });
    }

    /// Pauses the VM and queues every page dirtied since the last round.
    fn start_last_round(&mut self, vm: VmId) {
        let slot = &mut self.slots[vm];
        let before = slot.state.clone();
        // Its exit in progress is completed now, so memory and registers agree.
        slot.runtime.machine.boot_vcpu_mut().complete_pending_exit();
        // A VM that was not running (asleep, paused) lost no time before the pause.
        let last_slice_ns = match before {
            VmState::Running | VmState::Throttled { .. } => slot.last_slice_ns,
            _ => monotonic_ns(),
        };
        // A throttled VM goes back to running if the move fails.
        let before = if matches!(before, VmState::Throttled { .. }) { VmState::Running } else { before };
        if matches!(before, VmState::Running | VmState::Sleeping { .. }) {
            self.set_state(vm, VmState::Paused);
        }
        let dirty = match self.dirtied(vm) {
            Ok(dirty) => dirty,
            Err(why) => return self.abandon(vm, &why),
        };
        let outgoing = self.slots[vm].outgoing.as_mut().expect("migrating");
        outgoing.before_pause = Some(before);
        outgoing.last_slice_ns = last_slice_ns;
        outgoing.paused_ns = monotonic_ns();
        outgoing.pending.extend(dirty);
        outgoing.pending.sort_unstable();
        outgoing.pending.dedup();
        self.sender_event(vm, SenderEvent::RoundsDone, "");
    }

    /// Sends the VM's state after its last pages: the receiver makes it then.
    fn send_state(&mut self, vm: VmId) {
        let now_ns = monotonic_ns();
        let slot = &mut self.slots[vm];
        let sleeping =
            matches!(slot.outgoing.as_ref().and_then(|o| o.before_pause.as_ref()), Some(VmState::Sleeping { .. }));
        // Its memory went in the rounds: only the vCPU's and the run's state now.
        let saved = match slot.runtime.save_state(&self.kvm, now_ns, sleeping) {
            Ok((machine, runtime)) => SnapshotState { vm: identity(&slot.config), machine, runtime },
            Err(error) => return self.abandon(vm, &error.to_string()),
        };
        let json = crate::snapshot::schema::to_compact_json(&saved);
        let outgoing = slot.outgoing.as_mut().expect("migrating");
        // Behind the last pages, which may still fill the link: sent as
        // soon as it has room (the next pass of `drive_migrations`).
        outgoing.held = Some((Frame::State(json), 0));
        self.sender_event(vm, SenderEvent::StateQueued, "");
    }

    /// Why a VM of `name` and `memory_size` may not come in, if it may not:
    /// its name is a VM's here (one that moved away or was dropped frees
    /// its name), or it would take the run past its VM cap or its memory cap.
    pub(super) fn arrival_refusal(&self, name: &str, memory_size: u64) -> Option<String> {
        let here: Vec<&Slot> =
            self.slots.iter().filter(|slot| !matches!(slot.state, VmState::Moved { .. } | VmState::Dropped)).collect();
        let memory: u64 = here.iter().map(|slot| slot.config.memory_size).sum();
        let limit = self.migration.max_total_memory;
        if here.iter().any(|slot| slot.config.name == name) {
            Some(format!("a VM is already called '{name}' here"))
        } else if here.len() >= crate::scenario::MAX_VMS {
            Some(format!("this run has {} VMs, the most a run may have", here.len()))
        } else if memory + memory_size > limit {
            Some(format!(
                "{} MiB more would take this run's VMs to {} MiB, past its --max-total-mem of {} MiB",
                memory_size >> 20,
                (memory + memory_size) >> 20,
                limit >> 20
            ))
        } else {
            None
        }
    }

    /// A VM would come in: made now, blank and arriving, so that making it
    /// is not part of the sender's final pause; its memory goes to the link
    /// thread, which writes the pages into it as they come.
    pub(super) fn prepare_arrival(
        &mut self,
        name: String,
        memory_size: u64,
        from: String,
    ) -> Result<(VmId, ArrivalMemory), String> {
        if let Some(why) = self.arrival_refusal(&name, memory_size) {
            return Err(why);
        }
        let mut config = VmConfig::new(name.clone(), format!("(arriving from {from})"), Arc::from(&[][..]));
        config.memory_size = memory_size;
        config.paused = true;
        let slot = Slot::arriving(&self.kvm, config).map_err(|error| error.to_string())?;
        let memory = ArrivalMemory(slot.runtime.machine.memory.clone());
        let vm = self.slots.push(slot);
        self.planner = Planner::new(
            self.planner.policy(),
            self.planner.quantum_ns(),
            &candidates(&self.slots, self.planner.policy()),
        );
        self.outbox.push_back(Event::Added { vm, name });
        let memory_pages = memory_size / PAGE_SIZE as u64;
        self.slots[vm].migration_report =
            Some(MigrationReport { direction: "in", peer: from.clone(), memory_pages, ..Default::default() });
        self.note(
            vm,
            format_args!("arriving from {from}: {} KiB of memory, its pages go straight in", memory_size >> 10),
        );
        self.outbox.push_back(Event::State { vm, state: self.slots[vm].state.clone() });
        self.outbox.push_back(Event::Settings(self.settings()));
        Ok((vm, memory))
    }

    /// The arriving VM's pages are in: it takes its sender's state (already
    /// checked as a snapshot file's), and waits for the Go.
    pub(super) fn arrival_state(
        &mut self,
        vm: VmId,
        state: SnapshotState,
        rounds: u32,
        pages: u64,
    ) -> Result<(), String> {
        let Some(slot) = self.slots.get_mut(vm) else { return Err("the VM is gone".into()) };
        if slot.state != VmState::Arriving || slot.arrived {
            return Err("the VM is no longer waiting for its state".into());
        }
        let SnapshotState { vm: identity, machine, runtime } = state;
        let ports = identity.port_map()?;
        // What it said while arriving goes out before its console becomes
        // the sender's (kept for the record there).
        self.queue_console(vm);
        let slot = &mut self.slots[vm];
        let source = match &slot.migration_report {
            Some(report) => format!("its sender's state ({})", report.peer),
            None => "its sender's state".to_string(),
        };
        slot.runtime
            .take_arrival(&machine, &runtime, ports.clone(), &source, monotonic_ns())
            .map_err(|error| error.to_string())?;
        slot.arrived = true;
        slot.config.guest = identity.guest;
        slot.config.weight = identity.weight;
        slot.config.ports = ports;
        slot.config.layout.mode = machine.mode;
        let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
        slot.runtime.console.restamp_pending(t_ns);
        if let Some(report) = &mut slot.migration_report {
            report.round_count = rounds;
            report.pages = pages;
        }
        let memory_pages = machine.memory_size / PAGE_SIZE as u64;
        self.planner = Planner::new(
            self.planner.policy(),
            self.planner.quantum_ns(),
            &candidates(&self.slots, self.planner.policy()),
        );
        self.note(
            vm,
            format_args!(
                "came in by migration: {rounds} rounds, {pages} pages received for {memory_pages} pages of memory"
            ),
        );
        self.outbox.push_back(Event::Settings(self.settings()));
        self.announce_setup(vm);
        Ok(())
    }

    /// The sender said Go: the VM runs here from now on.
    pub(super) fn start_incoming(
        &mut self,
        vm: VmId,
        last_slice_ns: u64,
        paused: bool,
        report: crate::event::Reply<u64>,
    ) {
        let Some(slot) = self.slots.get_mut(vm) else { return };
        // A Go before its state would run a blank machine: the link never
        // sends one (Ready follows the state), and nothing else may.
        if slot.state != VmState::Arriving || !slot.arrived {
            return;
        }
        if paused {
            // Paused by a person there: paused here, its downtime not measured.
            self.note(vm, format_args!("it was paused on the sender: it stays paused here"));
            self.set_state(vm, VmState::Paused);
        } else {
            slot.incoming = Some((last_slice_ns, report));
            self.set_state(vm, VmState::Running);
        }
    }

    /// An arriving VM that will not be handed over: `dropped` when the
    /// sender keeps it for sure (the move ended before Ready, or the sender
    /// called it off after: it runs there, and this copy goes), else
    /// orphaned (the sender went silent: it may still run there; held
    /// until `adopt`).
    pub(super) fn incoming_ended(&mut self, vm: VmId, why: &str, dropped: bool) {
        if self.slots.get(vm).is_none_or(|slot| slot.state != VmState::Arriving) {
            return;
        }
        let why = crate::console::escape_bounded(why, crate::console::REASON_LIMIT);
        if dropped {
            self.note(vm, format_args!("not handed over ({why}): the sender keeps it; this copy is dropped"));
            self.set_state(vm, VmState::Dropped);
        } else {
            self.note(
                vm,
                format_args!(
                    "the sender did not hand this VM over ({why}) and may still run it: held here; if it does \
                     not run there, adopt it (adopt NAME) and resume it"
                ),
            );
            self.set_state(vm, VmState::Orphaned);
        }
    }

    /// `adopt NAME`: an orphaned VM becomes this run's, paused.
    pub(super) fn adopt(&mut self, vm: VmId) {
        self.note(vm, format_args!("adopted: it is this run's now, paused; resume it to run it"));
        self.set_state(vm, VmState::Paused);
    }

    /// Where `vm` stands in a migration, for [`ownership::decide`].
    pub(super) fn holding(&self, vm: VmId) -> Holding {
        let Some(slot) = self.slots.get(vm) else { return Holding::Gone };
        if slot.saving.is_some() {
            return Holding::Saving;
        }
        match (&slot.state, slot.outgoing.as_ref().map(|outgoing| outgoing.phase)) {
            (VmState::Arriving, _) => Holding::Arriving,
            (VmState::Orphaned, _) => Holding::Orphaned,
            (VmState::Moved { .. }, _) | (_, Some(Phase::Moved)) => Holding::Gone,
            (_, Some(Phase::Hello | Phase::Rounds)) => Holding::LeavingInRounds,
            (_, Some(Phase::Last | Phase::Ready)) => Holding::LeavingPaused,
            (_, Some(Phase::Go)) => Holding::HandingOver,
            (_, None) => Holding::Free,
        }
    }

    /// Carries out nothing and says why when `request` may not be carried
    /// out for `vm` now; true if it was refused.
    pub(super) fn refuses(&mut self, vm: VmId, request: Request, what: &str) -> bool {
        let Err(why) = ownership::decide(self.holding(vm), request) else { return false };
        if self.slots.owns(vm) {
            self.note(vm, format_args!("{what} refused: {why}"));
        }
        true
    }

    /// Its first slice here: says the downtime (and tells the sender).
    pub(super) fn first_slice_here(&mut self, vm: VmId, started_ns: u64) {
        let Some((last_slice_ns, report)) = self.slots[vm].incoming.take() else { return };
        let downtime_ns = started_ns.saturating_sub(last_slice_ns);
        report.send(downtime_ns);
        if let Some(report) = &mut self.slots[vm].migration_report {
            report.downtime_ms = Some(downtime_ns as f64 / 1e6);
        }
        self.note(
            vm,
            format_args!(
                "running here; downtime {:.3} ms: its last slice there to its first here (one host's clock)",
                downtime_ns as f64 / 1e6
            ),
        );
    }
}
