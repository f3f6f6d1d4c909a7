//! One VM at run time: its machine, counters, hypercall state and console, and
//! [`VmRuntime::step`], which runs it once and handles the exit. The core
//! decides *when* to step which VM; this module decides what an exit means.

use kvm_ioctls::Kvm;

use super::virtual_timer::{TIMER_VECTOR, VirtualTimer};
use crate::console::ConsoleOut;
use crate::hypercall::{self, GuestView, HypercallState, Outcome, PortMap, VmIo};
use crate::record::{CallRecord, ExitKind, ExitRecord};
use crate::snapshot::format::Pages;
use crate::snapshot::{RuntimeState, Snapshot};
use crate::stats::VmCounters;
use crate::vm::MachineState;
use crate::vm::guest_debug::DebugExit;
use crate::vm::kick::monotonic_ns;
use crate::vm::layout::Structure;
use crate::vm::vcpu_state::VcpuStateError;
use crate::vm::{CrashKind, Exit, KickTarget, Machine, MachineSpec, RegisterDump, SetupError};

/// What one step of a VM came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A guest I/O exit (port or MMIO) was handled; the VM can go on.
    Io,
    /// The guest asked to give up its slice (HC_yield).
    Yielded,
    /// The guest halted.
    Halted {
        /// Registers at the halt (a course's checker reads eax).
        registers: RegisterDump,
    },
    /// The guest waits in `hlt` with interrupts on for its next timer tick.
    Sleeping {
        /// When the tick comes due (monotonic ns).
        until_ns: u64,
    },
    /// The VM crashed.
    Crashed {
        /// Why.
        kind: CrashKind,
        /// Registers at the crash.
        registers: RegisterDump,
    },
    /// KVM_RUN was interrupted (a kick or a stray signal); nothing was counted.
    Interrupted,
    /// A debug exit for the VM's debugger (not a guest exit: not counted).
    Debug(DebugExit),
}

/// When one KVM_RUN entered and returned (monotonic ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpan {
    /// Just before KVM_RUN.
    pub entered_ns: u64,
    /// Just after it returned.
    pub exited_ns: u64,
}

impl RunSpan {
    /// The part of this span before `deadline_ns`: what a slice is charged.
    /// Time past the deadline is host latency, not the guest's.
    pub fn charged_until(&self, deadline_ns: u64) -> u64 {
        self.exited_ns.min(deadline_ns).saturating_sub(self.entered_ns)
    }
}

/// A VM and everything kept about it while it runs.
pub struct VmRuntime {
    /// The machine.
    pub machine: Machine,
    /// Its counters; the timer's two are its own (see [`Self::counters`]).
    pub counters: VmCounters,
    /// Its console output.
    pub console: ConsoleOut,
    /// Nanoseconds spent inside KVM_RUN.
    pub cpu_ns: u64,
    hypercalls: HypercallState,
    ports: PortMap,
    /// The virtual timer the guest programs (HC_timerStart).
    pub timer: VirtualTimer,
    /// The record of the tick injected before the last entry, if one was.
    pub injection: Option<ExitRecord>,
}

impl VmRuntime {
    /// Creates the machine for `spec`, with `ports` mapped. Its console
    /// starts with a note when the image made the hypervisor's structures move.
    pub fn new(kvm: &Kvm, spec: &MachineSpec, ports: PortMap) -> Result<Self, SetupError> {
        let machine = Machine::new(kvm, spec)?;
        let mut console = ConsoleOut::default();
        if machine.area.shift != 0 {
            let (image, area) = (&machine.image.span, machine.area);
            let structures = machine.mode.structures();
            let start = structures.iter().map(|s| area.start(*s)).min().unwrap_or(0);
            let end = structures.iter().map(|s| area.range(*s).end).max().unwrap_or(0);
            console.note(format_args!(
                "the image spans 0x{:x}..0x{:x}, so the hypervisor's structures moved to 0x{start:x}..0x{end:x} \
                 (mailbox 0x{:x})",
                image.start,
                image.end,
                area.start(Structure::Mailbox)
            ));
        }
        Ok(Self { console, ..Self::around(machine, ports) })
    }

    /// Brings back the VM `snapshot` saved (`spec` restores its machine),
    /// with its counters, hypercall state, timer and console as they were;
    /// its timer's next tick is as far from `now_ns` as it was from the
    /// snapshot.
    pub fn restored(
        kvm: &Kvm,
        spec: &MachineSpec,
        ports: PortMap,
        snapshot: &Snapshot,
        now_ns: u64,
    ) -> Result<Self, SetupError> {
        let mut runtime = Self::around(Machine::new(kvm, spec)?, ports);
        let source = format!("the snapshot {}", crate::console::escape_input(&snapshot.path));
        runtime.resume(&source, &snapshot.runtime, now_ns);
        Ok(runtime)
    }

    /// A VM whose memory a migration writes as its pages come, before it
    /// [takes its state](Self::take_arrival) (see [`Machine::blank`]).
    pub fn arriving(kvm: &Kvm, memory_size: u64) -> Result<Self, SetupError> {
        Ok(Self::around(Machine::blank(kvm, memory_size)?, PortMap::default()))
    }

    /// The arriving VM, its memory complete, takes the vCPU and the state
    /// its sender saved (`from` says where from, for its console).
    pub fn take_arrival(
        &mut self,
        machine: &MachineState,
        saved: &RuntimeState,
        ports: PortMap,
        from: &str,
        now_ns: u64,
    ) -> Result<(), SetupError> {
        self.machine.take_state(machine)?;
        self.ports = ports;
        self.resume(from, saved, now_ns);
        Ok(())
    }

    fn around(machine: Machine, ports: PortMap) -> Self {
        Self {
            hypercalls: HypercallState::with_mailbox(machine.area.start(Structure::Mailbox)),
            machine,
            counters: VmCounters::default(),
            console: ConsoleOut::default(),
            cpu_ns: 0,
            ports,
            timer: VirtualTimer::default(),
            injection: None,
        }
    }

    /// Takes the counters, hypercall state, timer and console `saved` kept,
    /// its machine already restored; `source` says from what, for people.
    fn resume(&mut self, source: &str, saved: &RuntimeState, now_ns: u64) {
        let mut console = ConsoleOut::with_history(saved.console.as_bytes());
        console.note(format_args!(
            "restored from {source} after {} exits (its TSC, not saved, reads this host's: it may have jumped)",
            saved.counters.exits.total()
        ));
        let notes = &self.machine.restore_notes;
        if notes.cpuid_differs > 0 {
            console.note(format_args!(
                "its saved CPUID differs from what this host's KVM offers in {} leaves: the guest sees the saved one",
                notes.cpuid_differs
            ));
        }
        if let Some((saved, here)) = notes.tsc_khz {
            console.note(format_args!(
                "its TSC ran at {saved} kHz where it was saved; this host's KVM keeps {here} kHz (time read from it \
                 runs at another rate)"
            ));
        }
        if !notes.refused_msrs.is_empty() {
            let refused: Vec<String> = notes.refused_msrs.iter().map(|index| format!("0x{index:x}")).collect();
            console.note(format_args!("this host's KVM refused MSRs {}; they were skipped", refused.join(", ")));
        }
        self.console = console;
        self.hypercalls = HypercallState::resumed(self.machine.area.start(Structure::Mailbox), saved.hypercalls);
        self.counters = saved.counters;
        self.cpu_ns = saved.cpu_ns;
        self.timer = VirtualTimer::restore(&saved.timer, now_ns);
        self.injection = None;
    }

    /// Saves the VM at `now_ns` (between exits: the exit in progress is
    /// completed first); `sleeping` when it waits in `hlt` for its tick. It
    /// goes on running afterwards.
    pub fn save(
        &mut self,
        kvm: &Kvm,
        now_ns: u64,
        sleeping: bool,
    ) -> Result<(MachineState, RuntimeState, Pages), VcpuStateError> {
        let (machine, runtime) = self.save_state(kvm, now_ns, sleeping)?;
        let memory = self.machine.copy_pages(&self.machine.resident_pages(), false);
        Ok((machine, runtime, memory))
    }

    /// [`Self::save`] without the memory: the vCPU's and this VM's state
    /// (for a save whose pages are copied in steps while the VM is held).
    pub fn save_state(
        &mut self,
        kvm: &Kvm,
        now_ns: u64,
        sleeping: bool,
    ) -> Result<(MachineState, RuntimeState), VcpuStateError> {
        let machine = self.machine.save_state(kvm)?;
        let runtime = RuntimeState {
            counters: self.counters(),
            hypercalls: self.hypercalls.progress(),
            timer: self.timer.save(now_ns),
            sleeping,
            console: String::from_utf8_lossy(self.console.history()).into_owned(),
            cpu_ns: self.cpu_ns,
        };
        Ok((machine, runtime))
    }

    /// Runs the vCPU once (until its next exit) and handles that exit;
    /// returns what it came to, when it ran and, for a guest exit, its
    /// record (times in ns since `epoch_ns`, the start of the run; the
    /// record's `vm` is left 0 for the caller to fill in).
    ///
    /// With `deliver`, a timer tick that is due goes in first if the guest
    /// can take it (else KVM is asked to exit when it can); a stepped,
    /// paused or debugger-held VM is run without `deliver`.
    pub fn step(&mut self, kick: &KickTarget, epoch_ns: u64, deliver: bool) -> (Step, RunSpan, Option<ExitRecord>) {
        // A stopped timer has nothing pending (stopping drops the tick).
        if deliver && self.timer.running() {
            self.deliver_tick(monotonic_ns(), epoch_ns);
        }
        let entered_ns = monotonic_ns();
        let (exit, rip) = self.machine.vcpu.run(kick);
        let exited_ns = monotonic_ns();
        self.cpu_ns += exited_ns - entered_ns;
        let span = RunSpan { entered_ns, exited_ns };
        let t_ns = exited_ns.saturating_sub(epoch_ns);
        self.console.set_clock(t_ns);
        let mut record = ExitRecord {
            t_ns,
            vm: 0,
            number: 0,
            kind: ExitKind::Other,
            port: 0,
            size: 0,
            value: 0,
            address: 0,
            call: CallRecord::default(),
            rip,
            handling_ns: 0,
        };
        let mut io = VmIo {
            counters: &mut self.counters,
            state: &mut self.hypercalls,
            console: &mut self.console,
            mode: self.machine.mode,
            ports: &self.ports,
        };
        let step = match exit {
            Exit::Out { port, access, value } => {
                io.counters.exits.io_out += 1;
                let view = GuestView {
                    memory: &self.machine.memory,
                    memory_size: self.machine.memory_size(),
                    translator: &self.machine.vcpu,
                };
                let (outcome, call) = hypercall::handle_out(&view, &mut io, port, access, value);
                (record.kind, record.port, record.size, record.value, record.call) =
                    (ExitKind::IoOut, port, access.size, value, call);
                match outcome {
                    Outcome::Continue => Step::Io,
                    Outcome::Yield => Step::Yielded,
                    Outcome::TimerStart(period_us) => {
                        let started = self.timer.start(exited_ns, period_us);
                        if let Some(asked) = started.raised_from {
                            self.console.note(format_args!(
                                "HC_timerStart({asked} us): raised to {} us, the shortest period",
                                started.period_us
                            ));
                        }
                        Step::Io
                    }
                    Outcome::TimerStop => {
                        self.timer.stop();
                        Step::Io
                    }
                }
            }
            Exit::In { port, access, data } => {
                io.counters.exits.io_in += 1;
                let call = hypercall::handle_in(&self.machine.memory, &mut io, port, access, data);
                (record.kind, record.port, record.size, record.call) = (ExitKind::IoIn, port, access.size, call);
                Step::Io
            }
            Exit::Mmio { address, write, data } => {
                io.counters.exits.mmio += 1;
                io.counters.faults += 1;
                let what = if write { "write to" } else { "read from" };
                if let Some(data) = data {
                    data.fill(0xff);
                }
                io.console.note(format_args!("MMIO {what} 0x{address:x}, outside guest memory; ignored"));
                (record.kind, record.address) = (ExitKind::Mmio, address);
                Step::Io
            }
            Exit::Hlt { interrupts_on: true } if self.timer.running() => {
                io.counters.exits.hlt += 1;
                record.kind = ExitKind::Hlt;
                let until_ns =
                    if self.timer.poll(exited_ns) { exited_ns } else { self.timer.next_due_ns().unwrap_or(exited_ns) };
                Step::Sleeping { until_ns }
            }
            Exit::Hlt { interrupts_on } => {
                io.counters.exits.hlt += 1;
                record.kind = ExitKind::Hlt;
                if interrupts_on {
                    io.console.note(format_args!("hlt with interrupts on and no timer running: nothing can wake it"));
                }
                Step::Halted { registers: self.machine.vcpu.registers() }
            }
            Exit::Crash(kind) => {
                record.kind = match kind {
                    CrashKind::TripleFault => ExitKind::Shutdown,
                    CrashKind::InternalError(_) => ExitKind::InternalError,
                    CrashKind::FailedEntry(_) => ExitKind::FailEntry,
                    CrashKind::UnexpectedExit(_) | CrashKind::RunFailed(_) => ExitKind::Other,
                };
                match kind {
                    CrashKind::TripleFault => io.counters.exits.shutdown += 1,
                    _ => io.counters.exits.other += 1,
                }
                let registers = self.machine.vcpu.registers();
                self.console.note(format_args!(
                    "VM crashed: {kind}; rip=0x{:x} rsp=0x{:x} cr2=0x{:x}",
                    registers.rip, registers.rsp, registers.cr2
                ));
                Step::Crashed { kind, registers }
            }
            Exit::Interrupted => return (Step::Interrupted, span, None),
            Exit::Debug(exit) => return (Step::Debug(exit), span, None),
        };
        record.number = self.counters.exits.total();
        record.handling_ns = monotonic_ns().saturating_sub(exited_ns).min(u64::from(u32::MAX)) as u32;
        (step, span, Some(record))
    }

    /// Injects the pending timer tick if the guest can take it now; else
    /// asks KVM to exit as soon as it can (the tick goes in then).
    fn deliver_tick(&mut self, now_ns: u64, epoch_ns: u64) {
        let vcpu = &mut self.machine.vcpu;
        if !self.timer.poll(now_ns) {
            return;
        }
        if vcpu.can_take_interrupt() && vcpu.inject(TIMER_VECTOR).is_ok() {
            self.timer.injected();
            vcpu.request_interrupt_window(false);
            self.injection = Some(ExitRecord {
                t_ns: now_ns.saturating_sub(epoch_ns),
                vm: 0,
                number: self.counters.exits.total(),
                kind: ExitKind::Interrupt,
                port: 0,
                size: 0,
                value: u32::from(TIMER_VECTOR),
                address: 0,
                call: CallRecord::default(),
                rip: 0,
                handling_ns: 0,
            });
        } else {
            vcpu.request_interrupt_window(true);
        }
    }

    /// Every counter of the VM, its timer's ticks injected and coalesced included.
    pub fn counters(&self) -> VmCounters {
        VmCounters { injected: self.timer.injected, coalesced: self.timer.coalesced, ..self.counters }
    }
}
