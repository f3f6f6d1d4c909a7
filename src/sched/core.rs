//! The scheduler core: one thread (`matrix-core`) that owns every VM and runs
//! them one at a time. Front ends talk to it only through [`CoreHandle`]:
//! commands in, events out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use kvm_ioctls::Kvm;

use crate::config::{Policy, RunConfig, VmConfig};
use crate::console::ConsoleOut;
use crate::event::{Command, Event, VmId, VmSample, VmState};
use crate::hypercall::{self, GuestView, HypercallState, Outcome, VmIo};
use crate::report::{RunReport, VmReport};
use crate::stats::VmCounters;
use crate::vm::{CrashKind, Exit, KickTarget, Machine, MachineSpec, SetupError};

/// Events waiting in the channel before the core starts coalescing.
const EVENT_CAPACITY: usize = 1024;
/// Console bytes one VM may have waiting for a slow front end; older ones are
/// dropped (and counted) past this.
pub const CONSOLE_BACKLOG_CAP: usize = 256 * 1024;
/// Console bytes kept per VM for the final report.
const CONSOLE_TAIL: usize = 64 * 1024;
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
}

impl CoreHandle {
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
    let core = Core {
        slots,
        policy: config.policy,
        kick: Arc::clone(&kick),
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        started: Instant::now(),
        last_sample: Instant::now(),
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
    })
}

/// One VM and everything the core keeps about it.
struct Slot {
    config: VmConfig,
    machine: Machine,
    counters: VmCounters,
    hypercalls: HypercallState,
    console: ConsoleOut,
    console_tail: Vec<u8>,
    console_dropped: u64,
    state: VmState,
    cpu_ns: u64,
}

impl Slot {
    fn new(kvm: &Kvm, config: VmConfig) -> Result<Self, VmSetupError> {
        let spec = MachineSpec {
            image: Arc::clone(&config.image),
            memory_size: config.memory_size,
            args: config.args.clone(),
        };
        let machine = Machine::new(kvm, &spec).map_err(|source| VmSetupError {
            name: config.name.clone(),
            guest: config.guest.clone(),
            source,
        })?;
        Ok(Self {
            config,
            machine,
            counters: VmCounters::default(),
            hypercalls: HypercallState::default(),
            console: ConsoleOut::default(),
            console_tail: Vec::new(),
            console_dropped: 0,
            state: VmState::Running,
            cpu_ns: 0,
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
        self.started = Instant::now();
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

    /// One KVM_RUN of `vm` and the handling of its exit. Returns how the slice
    /// ends, or None to keep running the same VM.
    fn run_once(&mut self, vm: VmId) -> Option<SliceEnd> {
        let kick = &self.kick;
        let slot = &mut self.slots[vm];
        let entered = Instant::now();
        let exit = slot.machine.vcpu.run(kick);
        slot.cpu_ns += entered.elapsed().as_nanos() as u64;
        let mut io = VmIo {
            counters: &mut slot.counters,
            state: &mut slot.hypercalls,
            console: &mut slot.console,
        };
        match exit {
            Exit::Out {
                port,
                access,
                value,
            } => {
                io.counters.exits.io_out += 1;
                let view = GuestView {
                    memory: &slot.machine.memory,
                    memory_size: slot.machine.memory_size(),
                    translator: &slot.machine.vcpu,
                };
                match hypercall::handle_out(&view, &mut io, port, access, value) {
                    Outcome::Continue | Outcome::Yield => Some(SliceEnd::Switch),
                }
            }
            Exit::In { port, access, data } => {
                io.counters.exits.io_in += 1;
                hypercall::handle_in(&slot.machine.memory, &mut io, port, access, data);
                Some(SliceEnd::Switch)
            }
            Exit::Mmio {
                address,
                write,
                data,
            } => {
                io.counters.exits.mmio += 1;
                io.counters.faults += 1;
                let what = if write { "write to" } else { "read from" };
                if let Some(data) = data {
                    data.fill(0xff);
                }
                io.console.note(format_args!(
                    "MMIO {what} 0x{address:x}, outside guest memory; ignored"
                ));
                Some(SliceEnd::Switch)
            }
            Exit::Hlt => {
                io.counters.exits.hlt += 1;
                self.set_state(vm, VmState::Halted);
                Some(SliceEnd::Finished)
            }
            Exit::Crash(kind) => {
                match kind {
                    CrashKind::TripleFault => io.counters.exits.shutdown += 1,
                    _ => io.counters.exits.other += 1,
                }
                let registers = slot.machine.vcpu.registers();
                slot.console.note(format_args!(
                    "VM crashed: {kind}; rip=0x{:x} rsp=0x{:x} cr2=0x{:x}",
                    registers.rip, registers.rsp, registers.cr2
                ));
                self.set_state(
                    vm,
                    VmState::Crashed {
                        reason: kind.to_string(),
                        registers,
                    },
                );
                Some(SliceEnd::Finished)
            }
            Exit::Interrupted => {
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

    fn set_state(&mut self, vm: VmId, state: VmState) {
        self.slots[vm].state = state.clone();
        self.outbox.push_back(Event::State { vm, state });
    }

    /// Sends `vm`'s new console bytes, or keeps them (bounded) if the front end
    /// is behind.
    fn flush_console(&mut self, vm: VmId) {
        let slot = &mut self.slots[vm];
        if slot.console.pending_len() == 0 {
            return;
        }
        let bytes = slot.console.take();
        slot.console_tail.extend_from_slice(&bytes);
        if slot.console_tail.len() > 2 * CONSOLE_TAIL {
            slot.console_tail
                .drain(..slot.console_tail.len() - CONSOLE_TAIL);
        }
        let event = Event::Console {
            vm,
            bytes,
            dropped: slot.console_dropped,
        };
        match self.events.try_send(event) {
            Ok(()) => slot.console_dropped = 0,
            Err(TrySendError::Full(Event::Console { mut bytes, .. })) => {
                if bytes.len() > CONSOLE_BACKLOG_CAP {
                    let excess = bytes.len() - CONSOLE_BACKLOG_CAP;
                    bytes.drain(..excess);
                    slot.console_dropped += excess as u64;
                }
                slot.console.put_back(bytes);
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
                counters: slot.counters,
                cpu_ns: slot.cpu_ns,
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
        for vm in 0..self.slots.len() {
            // Waiting is fine now: the run is over and the front end is reading.
            let slot = &mut self.slots[vm];
            let bytes = slot.console.take();
            slot.console_tail.extend_from_slice(&bytes);
            if !bytes.is_empty() || slot.console_dropped > 0 {
                let _ = self.events.send(Event::Console {
                    vm,
                    bytes,
                    dropped: slot.console_dropped,
                });
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
        let total_cpu: u64 = self.slots.iter().map(|slot| slot.cpu_ns).sum();
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
                let tail_start = slot.console_tail.len().saturating_sub(CONSOLE_TAIL);
                VmReport {
                    name: slot.config.name.clone(),
                    guest: slot.config.guest.clone(),
                    state: slot.state.name().to_string(),
                    crash_reason,
                    registers,
                    weight: slot.config.weight,
                    target_share: ratio(slot.config.weight, total_weight),
                    share: ratio(slot.cpu_ns as f64, total_cpu as f64),
                    cpu_ns: slot.cpu_ns,
                    exits: slot.counters.exits.into(),
                    preemptions: slot.counters.preemptions,
                    faults: slot.counters.faults,
                    console: String::from_utf8_lossy(&slot.console_tail[tail_start..]).into_owned(),
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
