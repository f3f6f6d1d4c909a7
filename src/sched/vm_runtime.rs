//! One VM at run time: its machine, counters, hypercall state, console and
//! vCPUs, and [`VmRuntime::step`], which runs one of its vCPUs once and
//! handles the exit. The core decides *when* to step which VM; this module
//! decides which of its vCPUs runs and what an exit means.

mod exits;
mod locks;

pub use self::exits::{Gate, run_vcpu};

use kvm_ioctls::Kvm;

use super::vcpu_runtime::{self, VcpuRuntime, VcpuState};
use super::virtual_timer::{TIMER_VECTOR, VirtualTimer};
use crate::console::ConsoleOut;
use crate::hypercall::{self, HypercallState, PortMap};
use crate::record::{CallRecord, ExitKind, ExitRecord};
use crate::snapshot::format::Pages;
use crate::snapshot::{RuntimeState, SavedVcpu, SavedVcpuState, Snapshot};
use crate::stats::VmCounters;
use crate::vm::MachineState;
use crate::vm::guest_debug::DebugExit;
use crate::vm::kick::monotonic_ns;
use crate::vm::layout::Structure;
use crate::vm::vcpu_state::VcpuStateError;
use crate::vm::{CrashKind, KickTarget, Machine, MachineSpec, RegisterDump, SetupError, Vcpu};

/// What one step of a VM came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A guest I/O exit (port or MMIO) was handled; the VM can go on.
    Io,
    /// The guest asked to give up its slice (HC_yield).
    Yielded,
    /// The vCPU that ran stopped (asleep, halted, or it yielded to a
    /// sibling) and another vCPU of the VM takes the rest of the slice.
    Switched,
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
    /// The VM crashed (one vCPU's crash ends its whole VM).
    Crashed {
        /// Why.
        kind: CrashKind,
        /// What people read: why, naming the vCPU in a VM of several.
        reason: String,
        /// Registers at the crash.
        registers: RegisterDump,
    },
    /// KVM_RUN was interrupted (a kick or a stray signal); nothing was counted.
    Interrupted,
    /// A debug exit for the VM's debugger (not a guest exit: not counted).
    Debug(DebugExit),
}

/// How a VM's vCPU stopped when no sibling can take over.
enum Stop {
    /// Every vCPU sleeps until the earliest timer's tick (monotonic ns).
    Sleep(u64),
    /// None can ever run again.
    Halt,
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
    /// Nanoseconds spent inside KVM_RUN (all its vCPUs).
    pub cpu_ns: u64,
    hypercalls: HypercallState,
    ports: PortMap,
    /// Its vCPUs as the scheduler keeps them, by index (the machine's
    /// `vcpus` of the same index run them).
    pub vcpus: Vec<VcpuRuntime>,
    /// The vCPU that runs in the slice under way.
    current: usize,
    /// The next slice is `current`'s, whatever the VM would choose (gdb
    /// stepping a thread).
    pinned: bool,
    /// The record of the interrupt injected before the last entry, if one was.
    pub injection: Option<ExitRecord>,
}

impl VmRuntime {
    /// Creates the machine for `spec`, with `ports` mapped. Its console
    /// starts with a note when the image made the hypervisor's structures move.
    pub fn new(kvm: &Kvm, spec: &MachineSpec, ports: PortMap) -> Result<Self, SetupError> {
        let machine = Machine::new(kvm, spec)?;
        let mut console = ConsoleOut::default();
        console.split_by_vcpu(machine.vcpus.len());
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
        let mut console = ConsoleOut::default();
        console.split_by_vcpu(machine.vcpus.len());
        Self {
            hypercalls: HypercallState::with_mailbox(machine.area.start(Structure::Mailbox)),
            vcpus: machine.vcpus.iter().map(|_| VcpuRuntime::default()).collect(),
            current: 0,
            pinned: false,
            machine,
            counters: VmCounters::default(),
            console,
            cpu_ns: 0,
            ports,
            injection: None,
        }
    }

    /// The bootstrap vCPU's timer (a snapshot's and a migration's: they
    /// take VMs of one vCPU).
    fn boot_timer(&mut self) -> &mut VirtualTimer {
        &mut self.vcpus[0].timer
    }

    /// Takes the counters, hypercall state, timer and console `saved` kept,
    /// its machine already restored; `source` says from what, for people.
    fn resume(&mut self, source: &str, saved: &RuntimeState, now_ns: u64) {
        let mut console = ConsoleOut::with_history(saved.console.as_bytes());
        console.split_by_vcpu(self.vcpus.len());
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
        // A migration's machine gained its vCPUs past the first just now.
        self.vcpus.resize_with(self.machine.vcpus.len(), VcpuRuntime::default);
        self.console.split_by_vcpu(self.vcpus.len());
        *self.boot_timer() = VirtualTimer::restore(&saved.timer, now_ns);
        self.vcpus[0].gva_result = saved.hypercalls.gva_result;
        self.vcpus[0].state = VcpuState::Runnable;
        for (vcpu, kept) in self.vcpus.iter_mut().zip(&saved.vcpus) {
            *vcpu = restored_vcpu(kept, now_ns);
        }
        self.current = 0;
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
            hypercalls: self.hypercalls.progress(self.vcpus[0].gva_result),
            timer: self.vcpus[0].timer.save(now_ns),
            sleeping,
            console: String::from_utf8_lossy(&self.console.saved_history()).into_owned(),
            cpu_ns: self.cpu_ns,
            vcpus: if self.vcpus.len() == 1 {
                Vec::new()
            } else {
                self.vcpus.iter().map(|vcpu| saved_vcpu(vcpu, now_ns)).collect()
            },
        };
        Ok((machine, runtime))
    }

    /// Starts a slice of this VM at `now_ns` (monotonic): wakes the vCPUs
    /// whose timer is due, and gives the slice to the runnable one that has
    /// had the least of the VM's time. A VM of one vCPU has nothing to choose.
    pub fn begin_slice(&mut self, now_ns: u64) {
        if self.vcpus.len() == 1 || std::mem::take(&mut self.pinned) {
            return;
        }
        for vcpu in &mut self.vcpus {
            vcpu.wake_if_due(now_ns);
        }
        if let Some(next) = vcpu_runtime::pick(&self.vcpus) {
            self.current = next;
        }
    }

    /// The vCPU that runs now (or ran last).
    pub fn current_vcpu(&self) -> usize {
        self.current
    }

    /// Gives the next slice to vCPU `index` (gdb steps that thread): it
    /// runs even from a sleep in `hlt`, as a VM of one vCPU does when stepped.
    pub fn pin_vcpu(&mut self, index: usize) {
        self.current = index;
        self.pinned = true;
        if self.vcpus[index].state != VcpuState::Halted {
            self.vcpus[index].state = VcpuState::Runnable;
        }
    }

    /// Ends a slice: its charge is split over the vCPUs that ran in it.
    pub fn end_slice(&mut self, charged_ns: u64) {
        vcpu_runtime::settle_slice(&mut self.vcpus, charged_ns);
    }

    /// Runs the current vCPU once (until its next exit) and handles that
    /// exit; returns what it came to, when it ran and, for a guest exit, its
    /// record (times in ns since `epoch_ns`, the start of the run; the
    /// record's `vm` is left 0 for the caller to fill in). The time it ran,
    /// up to `deadline_ns`, is counted as that vCPU's part of the slice.
    ///
    /// With `deliver`, an interrupt that is due (a timer tick, or one a
    /// sibling raised) goes in first if the guest can take it (else KVM is
    /// asked to exit when it can); a stepped, paused or debugger-held VM is
    /// run without `deliver`.
    pub fn step(
        &mut self,
        kick: &KickTarget,
        epoch_ns: u64,
        deliver: bool,
        deadline_ns: u64,
    ) -> (Step, RunSpan, Option<ExitRecord>) {
        let index = self.current;
        if self.vcpus.len() == 1 {
            // A VM of one vCPU runs whenever it is stepped, as it always
            // did: woken, resumed or stepped from its sleep, it goes on past
            // its hlt (its wait loop absorbs an early wake).
            self.vcpus[0].state = VcpuState::Runnable;
        } else if !self.vcpus[index].runnable() {
            // Woken for a sibling that is not due after all: nothing runs.
            let now_ns = monotonic_ns();
            let span = RunSpan { entered_ns: now_ns, exited_ns: now_ns };
            let step = match self.after_stop(now_ns) {
                None => Step::Switched,
                Some(Stop::Sleep(until_ns)) => Step::Sleeping { until_ns },
                Some(Stop::Halt) => Step::Halted { registers: self.machine.vcpus[self.current].registers() },
            };
            return (step, span, None);
        }
        // The vCPU runs outside the rest of the VM (as it does on a gang's
        // core): its handlers take it beside the VM.
        let mut vcpus = std::mem::take(&mut self.machine.vcpus);
        let result = exits::run_vcpu(self, index, &mut vcpus[index], kick, epoch_ns, deliver, deadline_ns);
        self.machine.vcpus = vcpus;
        result
    }

    /// vCPU `index` executed `hlt`: with interrupts on it sleeps until its
    /// timer's tick or a sibling's interrupt, as long as one of those could
    /// come; with them off it has halted for good. Then a sibling that can
    /// run takes the slice, or the VM sleeps or halts.
    fn hlt(&mut self, index: usize, halting: &Vcpu, interrupts_on: bool, now_ns: u64) -> Step {
        let vcpus = self.vcpus.len();
        let vcpu = &mut self.vcpus[index];
        let timed = vcpu.timer.running();
        vcpu.state = match (interrupts_on, timed) {
            // A sibling's IPI already waiting wakes it at once, timer or not.
            (true, _) if vcpu.pending.any() => VcpuState::Runnable,
            (true, true) => {
                let until_ns =
                    if vcpu.timer.poll(now_ns) { now_ns } else { vcpu.timer.next_due_ns().unwrap_or(now_ns) };
                VcpuState::Sleeping { until_ns: Some(until_ns) }
            }
            (true, false) if vcpus > 1 => VcpuState::Sleeping { until_ns: None },
            (true, false) => {
                self.console.note(format_args!("hlt with interrupts on and no timer running: nothing can wake it"));
                VcpuState::Halted
            }
            (false, _) => VcpuState::Halted,
        };
        if self.vcpus[index].runnable() {
            return Step::Io;
        }
        match self.after_stop(now_ns) {
            None => Step::Switched,
            Some(Stop::Sleep(until_ns)) => Step::Sleeping { until_ns },
            Some(Stop::Halt) => Step::Halted { registers: halting.registers() },
        }
    }

    /// After the current vCPU stopped: a sibling that can run takes over
    /// (None), else the VM sleeps until its earliest timer, else (nothing
    /// could wake any of them) it has halted.
    fn after_stop(&mut self, now_ns: u64) -> Option<Stop> {
        for vcpu in &mut self.vcpus {
            vcpu.wake_if_due(now_ns);
        }
        if let Some(next) = vcpu_runtime::pick(&self.vcpus) {
            self.current = next;
            return None;
        }
        if vcpu_runtime::can_wake(&self.vcpus) {
            let until_ns = self
                .vcpus
                .iter()
                .filter_map(|vcpu| match vcpu.state {
                    VcpuState::Sleeping { until_ns } => until_ns,
                    _ => None,
                })
                .min()
                .expect("one sleeps with a timer");
            return Some(Stop::Sleep(until_ns));
        }
        let waiting = self.vcpus.iter().filter(|vcpu| matches!(vcpu.state, VcpuState::Sleeping { .. })).count();
        if waiting > 0 {
            self.console.note(format_args!(
                "{waiting} of its vCPUs wait in hlt for an interrupt and no sibling runs to send one: the VM has halted"
            ));
        }
        for vcpu in &mut self.vcpus {
            vcpu.state = VcpuState::Halted;
        }
        self.console.end_spoken_lines();
        Some(Stop::Halt)
    }

    /// HC_ipi from vCPU `from`: `vector` raised on vCPU `to` of this VM,
    /// waking it if it sleeps; false (with a console note) when it cannot be.
    fn raise_ipi(&mut self, from: usize, to: u32, vector: u8) -> bool {
        let count = self.vcpus.len();
        let refused = match self.vcpus.get(to as usize) {
            _ if vector < 32 => {
                Some(format!("vector {vector} is below 32 (the exceptions'); give a vector from 32 to 255"))
            }
            None => Some(format!("the VM has {count} vCPUs (0 to {})", count - 1)),
            Some(target) if target.state == VcpuState::Halted => Some(format!("vCPU {to} has halted")),
            Some(_) => None,
        };
        if let Some(why) = refused {
            self.console.note(format_args!("HC_ipi(vCPU {to}, vector {vector}) from vCPU {from} refused: {why}"));
            return false;
        }
        let target = &mut self.vcpus[to as usize];
        target.ipis += 1;
        if !target.pending.raise(vector) {
            target.ipis_coalesced += 1;
        }
        if matches!(target.state, VcpuState::Sleeping { .. }) {
            target.state = VcpuState::Runnable;
        }
        true
    }

    /// HC_yieldTo from vCPU `from`: the rest of the slice to vCPU `to` if it
    /// can run; else the caller runs on (a console note says why).
    fn yield_to(&mut self, from: usize, to: u32) -> Step {
        let why = match self.vcpus.get(to as usize) {
            None => format!("the VM has {} vCPUs", self.vcpus.len()),
            Some(_) if to as usize == from => "it is the caller".to_string(),
            Some(target) if target.runnable() => {
                self.current = to as usize;
                return Step::Switched;
            }
            Some(target) if target.state == VcpuState::Halted => format!("vCPU {to} has halted"),
            // Asleep: it has nothing to do until its interrupt, so the caller goes on.
            Some(_) => return Step::Io,
        };
        self.console.note(format_args!("HC_yieldTo({to}) from vCPU {from} ignored: {why}; the caller runs on"));
        Step::Io
    }

    /// Injects vCPU `index`'s highest waiting interrupt (a sibling's IPI,
    /// else its timer's tick) if it can take one now; else asks KVM to exit
    /// as soon as it can (the interrupt goes in then).
    fn deliver_interrupt(&mut self, index: usize, vcpu: &mut Vcpu, now_ns: u64, epoch_ns: u64) {
        let state = &mut self.vcpus[index];
        let tick = state.timer.running() && state.timer.poll(now_ns);
        if !tick && !state.pending.any() {
            return;
        }
        if !vcpu.can_take_interrupt() {
            vcpu.request_interrupt_window(true);
            return;
        }
        let (vector, from_timer) = match state.pending.take_highest() {
            Some(vector) if !tick || vector > TIMER_VECTOR => (vector, false),
            Some(vector) => {
                // The tick goes first; the IPI waits for the next entry.
                state.pending.raise(vector);
                (TIMER_VECTOR, true)
            }
            None => (TIMER_VECTOR, true),
        };
        if vcpu.inject(vector).is_err() {
            if !from_timer {
                state.pending.raise(vector);
            }
            vcpu.request_interrupt_window(true);
            return;
        }
        if from_timer {
            state.timer.injected();
        }
        // One more waiting: KVM exits again as soon as the guest can take it.
        vcpu.request_interrupt_window(state.pending.any());
        self.injection = Some(ExitRecord {
            t_ns: now_ns.saturating_sub(epoch_ns),
            vm: 0,
            vcpu: index as u16,
            number: self.counters.exits.total(),
            kind: ExitKind::Interrupt,
            port: 0,
            size: 0,
            value: u32::from(vector),
            address: 0,
            // An IPI's injection names the hypercall that raised it.
            call: CallRecord { hypercall: (!from_timer).then_some(hypercall::Hypercall::Ipi), ..Default::default() },
            rip: 0,
            handling_ns: 0,
        });
    }

    /// Every counter of the VM, its vCPUs' timer ticks injected and
    /// coalesced included.
    pub fn counters(&self) -> VmCounters {
        let injected = self.vcpus.iter().map(|vcpu| vcpu.timer.injected).sum();
        let coalesced = self.vcpus.iter().map(|vcpu| vcpu.timer.coalesced).sum();
        let mut lock = self.lock_sums().unwrap_or_default();
        (lock.holder_preempted, lock.waiter_preempted) =
            (self.counters.lock.holder_preempted, self.counters.lock.waiter_preempted);
        VmCounters { injected, coalesced, lock, ..self.counters }
    }
}

/// What a snapshot keeps of a vCPU of a VM of several at `now_ns`.
fn saved_vcpu(vcpu: &VcpuRuntime, now_ns: u64) -> SavedVcpu {
    let mut waiting = vcpu.pending;
    SavedVcpu {
        state: match vcpu.state {
            VcpuState::Runnable => SavedVcpuState::Runnable,
            VcpuState::Sleeping { until_ns: Some(_) } => SavedVcpuState::Sleeping,
            VcpuState::Sleeping { until_ns: None } => SavedVcpuState::Waiting,
            VcpuState::Halted => SavedVcpuState::Halted,
        },
        timer: vcpu.timer.save(now_ns),
        pending: std::iter::from_fn(|| waiting.take_highest()).collect(),
        gva_result: vcpu.gva_result,
        cpu_ns: vcpu.cpu_ns,
        charged_ns: vcpu.charged_ns,
        exits: vcpu.exits,
        ipis: vcpu.ipis,
        ipis_coalesced: vcpu.ipis_coalesced,
    }
}

/// A vCPU of a VM of several as `kept` says, its timer's next tick as far
/// from `now_ns` as it was from the save.
fn restored_vcpu(kept: &SavedVcpu, now_ns: u64) -> VcpuRuntime {
    let timer = VirtualTimer::restore(&kept.timer, now_ns);
    let state = match kept.state {
        SavedVcpuState::Runnable => VcpuState::Runnable,
        SavedVcpuState::Sleeping => VcpuState::Sleeping { until_ns: Some(timer.next_due_ns().unwrap_or(now_ns)) },
        SavedVcpuState::Waiting => VcpuState::Sleeping { until_ns: None },
        SavedVcpuState::Halted => VcpuState::Halted,
    };
    let mut pending = vcpu_runtime::Vectors::default();
    for &vector in &kept.pending {
        pending.raise(vector);
    }
    VcpuRuntime {
        state,
        timer,
        pending,
        cpu_ns: kept.cpu_ns,
        charged_ns: kept.charged_ns,
        slice_ns: 0,
        exits: kept.exits,
        ipis: kept.ipis,
        ipis_coalesced: kept.ipis_coalesced,
        gva_result: kept.gva_result,
    }
}
