//! The scheduler core: one thread (`matrix-core`) that owns every VM and runs
//! them one at a time. Front ends talk to it only through [`CoreHandle`]:
//! commands in, events out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use kvm_ioctls::Kvm;

use super::vm_runtime::{Step, VmRuntime};
use crate::config::{Policy, RunConfig, VmConfig};
use crate::event::{Command, Event, VmId, VmSample, VmState};
use crate::report::{RunReport, VmReport};
use crate::vm::{KickTarget, MachineSpec, SetupError};

/// Events waiting in the channel before the core starts coalescing.
const EVENT_CAPACITY: usize = 1024;
/// Console bytes one VM may have waiting for a slow front end; older ones are
/// dropped (and counted) past this.
pub const CONSOLE_BACKLOG_CAP: usize = 256 * 1024;
/// How often counters are sampled for the front ends.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A VM that could not be set up, with its name.
#[derive(Debug, thiserror::Error)]
#[error("VM '{name}' ({guest}): {source}")]
pub struct VmSetupError {
    /// The VM's name.
    pub name: String,
    /// Its GUEST.
    pub guest: String,
    /// What went wrong.
    pub source: SetupError,
}

/// The front end's side of a running core.
pub struct CoreHandle {
    commands: Sender<Command>,
    events: Receiver<Event>,
    kick: Arc<KickTarget>,
    thread: JoinHandle<()>,
    started: Instant,
}

impl CoreHandle {
    /// When the run started: the zero of timestamps, durations and `wall_ns`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends a command and kicks the core out of KVM_RUN to read it.
    pub fn send(&self, command: Command) {
        // The core holds the receiver until it finishes; after that there is
        // nobody to tell, so a failed send needs no handling.
        let _ = self.commands.send(command);
        self.kick.request();
    }

    /// The events the core sends, ending with [`Event::Finished`].
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Kernel thread id of the core thread (for tests and /proc lookups).
    pub fn core_tid(&self) -> libc::pid_t {
        self.kick.tid()
    }

    /// Waits for the core thread to end.
    pub fn join(self) {
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Sets up every VM of `config` (on the calling thread, so that errors come back
/// at once) and starts the core thread running them.
pub fn spawn(kvm: Kvm, config: RunConfig) -> Result<CoreHandle, VmSetupError> {
    let mut slots = Vec::with_capacity(config.vms.len());
    for vm in config.vms {
        slots.push(Slot::new(&kvm, vm)?);
    }
    let (command_tx, command_rx) = crossbeam_channel::unbounded();
    let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
    let kick = KickTarget::new();
    let started = Instant::now();
    let core = Core {
        slots,
        policy: config.policy,
        kick: Arc::clone(&kick),
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        started,
        last_sample: started,
        quit: false,
    };
    let thread = std::thread::Builder::new()
        .name("matrix-core".into())
        .spawn(move || core.run())
        .expect("spawning the core thread");
    Ok(CoreHandle {
        commands: command_tx,
        events: event_rx,
        kick,
        thread,
        started,
    })
}

/// One VM as the core schedules it.
struct Slot {
    config: VmConfig,
    runtime: VmRuntime,
    console_dropped: u64,
    state: VmState,
}

impl Slot {
    fn new(kvm: &Kvm, config: VmConfig) -> Result<Self, VmSetupError> {
        let spec = MachineSpec {
            image: Arc::clone(&config.image),
            memory_size: config.memory_size,
            args: config.args.clone(),
        };
        let runtime = VmRuntime::new(kvm, &spec).map_err(|source| VmSetupError {
            name: config.name.clone(),
            guest: config.guest.clone(),
            source,
        })?;
        Ok(Self {
            config,
            runtime,
            console_dropped: 0,
            state: VmState::Running,
        })
    }
}

/// How a slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SliceEnd {
    /// The policy switches VMs here (under `io`: any guest I/O).
    Switch,
    /// The VM halted or crashed.
    Finished,
    /// A front end asked for attention.
    Command,
}

struct Core {
    slots: Vec<Slot>,
    policy: Policy,
    kick: Arc<KickTarget>,
    commands: Receiver<Command>,
    events: Sender<Event>,
    /// Events that must arrive (state changes), waiting for room in the channel.
    outbox: VecDeque<Event>,
    started: Instant,
    last_sample: Instant,
    quit: bool,
}

impl Core {
    fn run(mut self) {
        let _attached = self.kick.attach();
        let mut next = 0;
        while !self.quit {
            if self.kick.take_request() {
                self.apply_commands();
                continue;
            }
            let Some(vm) = self.next_runnable(next) else {
                break;
            };
            self.run_slice(vm);
            self.flush_console(vm);
            self.deliver_outbox();
            self.sample_if_due();
            next = vm + 1;
        }
        self.finish();
    }

    /// The first runnable VM at or after `from`, round robin.
    fn next_runnable(&self, from: VmId) -> Option<VmId> {
        let count = self.slots.len();
        (0..count)
            .map(|offset| (from + offset) % count)
            .find(|&vm| self.slots[vm].state == VmState::Running)
    }

    fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Quit => self.quit = true,
            }
        }
    }

    /// Runs `vm` until the policy ends its slice.
    fn run_slice(&mut self, vm: VmId) -> SliceEnd {
        loop {
            let end = self.run_once(vm);
            match (end, self.policy) {
                (None, _) => continue,
                (Some(end), Policy::Io) => return end,
            }
        }
    }

    /// One step of `vm`. Returns how the slice ends, or None to keep running
    /// the same VM.
    fn run_once(&mut self, vm: VmId) -> Option<SliceEnd> {
        match self.slots[vm].runtime.step(&self.kick) {
            Step::Io | Step::Yielded => Some(SliceEnd::Switch),
            Step::Halted => {
                self.set_state(vm, VmState::Halted);
                Some(SliceEnd::Finished)
            }
            Step::Crashed { kind, registers } => {
                self.set_state(
                    vm,
                    VmState::Crashed {
                        reason: kind.to_string(),
                        registers,
                    },
                );
                Some(SliceEnd::Finished)
            }
            Step::Interrupted => {
                if self.kick.take_request() {
                    // Put it back for the main loop, which applies commands.
                    self.kick.request();
                    Some(SliceEnd::Command)
                } else {
                    // A signal that was not for us (or a stale one): go on.
                    None
                }
            }
        }
    }

    /// Records a state change. A VM that finishes has its last console bytes
    /// queued first, so that front ends see them before the new state.
    fn set_state(&mut self, vm: VmId, state: VmState) {
        if state.is_finished() {
            if let Some(event) = self.take_console(vm) {
                self.outbox.push_back(event);
            }
        }
        self.slots[vm].state = state.clone();
        self.outbox.push_back(Event::State { vm, state });
    }

    /// Takes `vm`'s pending console bytes (and drop count) as an event.
    fn take_console(&mut self, vm: VmId) -> Option<Event> {
        let slot = &mut self.slots[vm];
        if slot.runtime.console.pending_len() == 0 && slot.console_dropped == 0 {
            return None;
        }
        let bytes = slot.runtime.console.take();
        let dropped = std::mem::take(&mut slot.console_dropped);
        Some(Event::Console { vm, bytes, dropped })
    }

    /// Sends `vm`'s new console bytes, or keeps them (bounded, oldest dropped
    /// first and counted) while the front end is behind.
    fn flush_console(&mut self, vm: VmId) {
        let Some(event) = self.take_console(vm) else {
            return;
        };
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(Event::Console {
                mut bytes, dropped, ..
            })) => {
                let slot = &mut self.slots[vm];
                slot.console_dropped += dropped;
                if bytes.len() > CONSOLE_BACKLOG_CAP {
                    let excess = bytes.len() - CONSOLE_BACKLOG_CAP;
                    bytes.drain(..excess);
                    slot.console_dropped += excess as u64;
                }
                slot.runtime.console.put_back(bytes);
            }
            Err(_) => {}
        }
    }

    fn deliver_outbox(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn sample_if_due(&mut self) {
        if self.last_sample.elapsed() < SAMPLE_EVERY {
            return;
        }
        self.last_sample = Instant::now();
        let vms = self
            .slots
            .iter()
            .map(|slot| VmSample {
                counters: slot.runtime.counters,
                cpu_ns: slot.runtime.cpu_ns,
            })
            .collect();
        // A sample the front end has no room for is simply skipped: the next
        // one carries the same counters, newer.
        let _ = self.events.try_send(Event::Sample {
            elapsed_ns: self.started.elapsed().as_nanos() as u64,
            vms,
        });
    }

    /// Delivers what is left and the final report, then returns (the thread ends).
    fn finish(mut self) {
        let wall_ns = self.started.elapsed().as_nanos() as u64;
        // Waiting is fine now: the run is over and the front end is reading.
        for event in std::mem::take(&mut self.outbox) {
            let _ = self.events.send(event);
        }
        for vm in 0..self.slots.len() {
            if let Some(event) = self.take_console(vm) {
                let _ = self.events.send(event);
            }
        }
        for event in self.outbox.drain(..) {
            let _ = self.events.send(event);
        }
        let report = self.report(wall_ns);
        let _ = self.events.send(Event::Finished(Box::new(report)));
    }

    fn report(&self, wall_ns: u64) -> RunReport {
        let total_weight: f64 = self.slots.iter().map(|slot| slot.config.weight).sum();
        let total_cpu: u64 = self.slots.iter().map(|slot| slot.runtime.cpu_ns).sum();
        let vms = self
            .slots
            .iter()
            .map(|slot| {
                let (crash_reason, registers) = match &slot.state {
                    VmState::Crashed { reason, registers } => {
                        (Some(reason.clone()), Some(*registers))
                    }
                    _ => (None, None),
                };
                VmReport {
                    name: slot.config.name.clone(),
                    guest: slot.config.guest.clone(),
                    state: slot.state.name().to_string(),
                    crash_reason,
                    registers,
                    weight: slot.config.weight,
                    target_share: ratio(slot.config.weight, total_weight),
                    share: ratio(slot.runtime.cpu_ns as f64, total_cpu as f64),
                    cpu_ns: slot.runtime.cpu_ns,
                    exits: slot.runtime.counters.exits.into(),
                    preemptions: slot.runtime.counters.preemptions,
                    faults: slot.runtime.counters.faults,
                    console: String::from_utf8_lossy(slot.runtime.console.history()).into_owned(),
                    console_dropped: slot.console_dropped,
                }
            })
            .collect();
        RunReport {
            wall_ns,
            policy: self.policy.name().into(),
            quantum_us: None,
            timer: None,
            vms,
        }
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}
