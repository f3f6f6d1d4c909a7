//! Running one vCPU once and handling its exit. The vCPU is passed beside
//! its VM rather than found in it, and the VM is reached through a
//! [`Gate`]: one thread running the VM holds it whole, while under `gang`
//! the VM's vCPUs run on several cores at once and the gate is a lock that
//! KVM_RUN never holds.

use super::{RunSpan, Step, VmRuntime};
use crate::hypercall::{self, GuestView, Outcome, VcpuIdentity, VmIo};
use crate::record::{CallRecord, ExitKind, ExitRecord};
use crate::vm::kick::monotonic_ns;
use crate::vm::{CrashKind, Exit, GuestMemory, KickTarget, PortAccess, Vcpu};

/// The way to a VM while one of its vCPUs runs.
pub trait Gate {
    /// Runs `f` on the VM (under its lock, where it has one).
    fn with<T>(&mut self, f: impl FnOnce(&mut VmRuntime) -> T) -> T;
}

impl Gate for VmRuntime {
    fn with<T>(&mut self, f: impl FnOnce(&mut VmRuntime) -> T) -> T {
        f(self)
    }
}

/// Runs vCPU `index` of the VM behind `gate` (`vcpu`, held apart from it)
/// once and handles its exit: what [`VmRuntime::step`] does, for any gate.
/// The gate is not held while the guest runs.
pub fn run_vcpu(
    gate: &mut impl Gate,
    index: usize,
    vcpu: &mut Vcpu,
    kick: &KickTarget,
    epoch_ns: u64,
    deliver: bool,
    deadline_ns: u64,
) -> (Step, RunSpan, Option<ExitRecord>) {
    if deliver {
        gate.with(|vm| vm.deliver_interrupt(index, vcpu, monotonic_ns(), epoch_ns));
    }
    let entered_ns = monotonic_ns();
    let (exit, rip) = vcpu.run(kick);
    let span = RunSpan { entered_ns, exited_ns: monotonic_ns() };
    let handled = |vm: &mut VmRuntime, step: Step, record: ExitRecord| vm.exit_done(index, span, step, record);
    match exit {
        Exit::Interrupted => {
            gate.with(|vm| vm.ran(index, span, deadline_ns));
            (Step::Interrupted, span, None)
        }
        Exit::Debug(exit) => {
            gate.with(|vm| vm.ran(index, span, deadline_ns));
            (Step::Debug(exit), span, None)
        }
        Exit::In { port, access, data } => gate.with(|vm| {
            let mut record = vm.exit_began(index, span, deadline_ns, epoch_ns, rip);
            vm.counters.exits.io_in += 1;
            let call = vm.on_in(index, port, access, data);
            (record.kind, record.port, record.size, record.call) = (ExitKind::IoIn, port, access.size, call);
            handled(vm, Step::Io, record)
        }),
        Exit::Mmio { address, write, data } => gate.with(|vm| {
            let mut record = vm.exit_began(index, span, deadline_ns, epoch_ns, rip);
            vm.counters.exits.mmio += 1;
            vm.counters.faults += 1;
            let what = if write { "write to" } else { "read from" };
            if let Some(data) = data {
                data.fill(0xff);
            }
            vm.console.note(format_args!("MMIO {what} 0x{address:x}, outside guest memory; ignored"));
            (record.kind, record.address) = (ExitKind::Mmio, address);
            handled(vm, Step::Io, record)
        }),
        Exit::Out { port, access, value } => gate.with(|vm| {
            let mut record = vm.exit_began(index, span, deadline_ns, epoch_ns, rip);
            let step = vm.on_out(index, vcpu, &mut record, port, access, value, span.exited_ns);
            handled(vm, step, record)
        }),
        Exit::Hlt { interrupts_on } => gate.with(|vm| {
            let mut record = vm.exit_began(index, span, deadline_ns, epoch_ns, rip);
            vm.counters.exits.hlt += 1;
            record.kind = ExitKind::Hlt;
            let step = vm.hlt(index, vcpu, interrupts_on, span.exited_ns);
            handled(vm, step, record)
        }),
        Exit::Crash(kind) => gate.with(|vm| {
            let mut record = vm.exit_began(index, span, deadline_ns, epoch_ns, rip);
            let step = vm.on_crash(index, vcpu, &mut record, kind);
            handled(vm, step, record)
        }),
    }
}

impl VmRuntime {
    /// Counts the time vCPU `index` spent in KVM_RUN (up to `deadline_ns`
    /// as its part of the slice).
    fn ran(&mut self, index: usize, span: RunSpan, deadline_ns: u64) {
        let ran_ns = span.exited_ns - span.entered_ns;
        self.cpu_ns += ran_ns;
        let vcpu = &mut self.vcpus[index];
        vcpu.cpu_ns += ran_ns;
        vcpu.slice_ns += span.charged_until(deadline_ns);
    }

    /// A guest exit of vCPU `index` begins: its time counted, the console
    /// stamped, its record started.
    fn exit_began(&mut self, index: usize, span: RunSpan, deadline_ns: u64, epoch_ns: u64, rip: u64) -> ExitRecord {
        self.ran(index, span, deadline_ns);
        let t_ns = span.exited_ns.saturating_sub(epoch_ns);
        self.console.set_clock(t_ns);
        self.console.set_speaker(index);
        ExitRecord {
            t_ns,
            vm: 0,
            vcpu: index as u16,
            number: 0,
            kind: ExitKind::Other,
            port: 0,
            size: 0,
            value: 0,
            address: 0,
            call: CallRecord::default(),
            rip,
            handling_ns: 0,
        }
    }

    /// The exit is handled: counted, and its record finished.
    fn exit_done(
        &mut self,
        index: usize,
        span: RunSpan,
        step: Step,
        mut record: ExitRecord,
    ) -> (Step, RunSpan, Option<ExitRecord>) {
        self.vcpus[index].exits += 1;
        record.number = self.counters.exits.total();
        record.handling_ns = monotonic_ns().saturating_sub(span.exited_ns).min(u64::from(u32::MAX)) as u32;
        (step, span, Some(record))
    }

    /// What vCPU `index`'s hypercalls are handled with, and the guest's
    /// memory beside it.
    fn io(&mut self, index: usize) -> (VmIo<'_>, &GuestMemory, u64) {
        let memory_size = self.machine.memory_size();
        let io = VmIo {
            counters: &mut self.counters,
            state: &mut self.hypercalls,
            console: &mut self.console,
            mode: self.machine.mode,
            ports: &self.ports,
            vcpu: VcpuIdentity { index: index as u32, count: self.vcpus.len() as u32 },
            gva_result: &mut self.vcpus[index].gva_result,
        };
        (io, &self.machine.memory, memory_size)
    }

    /// An `in` of vCPU `index`: `data` gets what it reads.
    fn on_in(&mut self, index: usize, port: u16, access: PortAccess, data: &mut [u8]) -> CallRecord {
        let (mut io, memory, _) = self.io(index);
        hypercall::handle_in(memory, &mut io, port, access, data)
    }

    /// An `out` of vCPU `index` (`vcpu` translates the guest's addresses).
    #[allow(clippy::too_many_arguments)]
    fn on_out(
        &mut self,
        index: usize,
        vcpu: &Vcpu,
        record: &mut ExitRecord,
        port: u16,
        access: PortAccess,
        value: u32,
        exited_ns: u64,
    ) -> Step {
        self.counters.exits.io_out += 1;
        let (mut io, memory, memory_size) = self.io(index);
        let view = GuestView { memory, memory_size, translator: vcpu };
        let (outcome, call) = hypercall::handle_out(&view, &mut io, port, access, value);
        (record.kind, record.port, record.size, record.value, record.call) =
            (ExitKind::IoOut, port, access.size, value, call);
        match outcome {
            Outcome::Continue => Step::Io,
            Outcome::Yield => Step::Yielded,
            Outcome::TimerStart(period_us) => {
                let started = self.vcpus[index].timer.start(exited_ns, period_us);
                if let Some(asked) = started.raised_from {
                    self.console.note(format_args!(
                        "HC_timerStart({asked} us): raised to {} us, the shortest period",
                        started.period_us
                    ));
                }
                Step::Io
            }
            Outcome::TimerStop => {
                self.vcpus[index].timer.stop();
                Step::Io
            }
            Outcome::Ipi { vcpu, vector } => {
                if !self.raise_ipi(index, vcpu, vector) {
                    self.counters.faults += 1;
                    record.call.refused = true;
                }
                Step::Io
            }
            Outcome::YieldTo(vcpu) => self.yield_to(index, vcpu),
        }
    }

    /// vCPU `index` crashed: the VM cannot go on.
    fn on_crash(&mut self, index: usize, vcpu: &Vcpu, record: &mut ExitRecord, kind: CrashKind) -> Step {
        record.kind = match kind {
            CrashKind::TripleFault => ExitKind::Shutdown,
            CrashKind::InternalError(_) => ExitKind::InternalError,
            CrashKind::FailedEntry(_) => ExitKind::FailEntry,
            CrashKind::UnexpectedExit(_) | CrashKind::RunFailed(_) => ExitKind::Other,
        };
        match kind {
            CrashKind::TripleFault => self.counters.exits.shutdown += 1,
            _ => self.counters.exits.other += 1,
        }
        let registers = vcpu.registers();
        let reason = match self.vcpus.len() {
            1 => kind.to_string(),
            _ => format!("vCPU {index}: {kind}"),
        };
        self.console.note(format_args!(
            "VM crashed: {reason}; rip=0x{:x} rsp=0x{:x} cr2=0x{:x}",
            registers.rip, registers.rsp, registers.cr2
        ));
        self.console.end_spoken_lines();
        Step::Crashed { kind, reason, registers }
    }
}
