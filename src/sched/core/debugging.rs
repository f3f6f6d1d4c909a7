//! The core's half of gdb: the requests a VM's gdb server sends, the VM's
//! stops and ends told back to it, and stepping for gdb. Everything that
//! touches the vCPU for a debugger happens here, on the core thread.

use super::*;
use crate::migration::ownership::Request;

/// The `hlt` opcode.
const HLT: u8 = 0xF4;

/// `vm`'s memory seen through its first vCPU's page tables (breakpoints'
/// and watchpoints' addresses: a guest's vCPUs share their tables).
pub(super) fn view(runtime: &VmRuntime) -> GuestView<'_, Vcpu> {
    view_on(runtime, 0)
}

/// `vm`'s memory seen through vCPU `vcpu`'s page tables.
fn view_on(runtime: &VmRuntime, vcpu: usize) -> GuestView<'_, Vcpu> {
    let machine = &runtime.machine;
    GuestView { memory: &machine.memory, memory_size: machine.memory_size(), translator: &machine.vcpus[vcpu] }
}

impl Core {
    /// Serves one request of `vm`'s gdb server.
    pub(super) fn debug_request(&mut self, vm: VmId, request: DebugRequest) {
        // gdb names threads the VM has (it lists them); a stale or made-up
        // one is refused rather than trusted.
        let vcpus = self.slots[vm].runtime.vcpus.len();
        let asked = match &request {
            DebugRequest::ReadRegisters { vcpu }
            | DebugRequest::WriteRegisters { vcpu, .. }
            | DebugRequest::ReadMemory { vcpu, .. }
            | DebugRequest::WriteMemory { vcpu, .. }
            | DebugRequest::Step { vcpu } => Some(*vcpu),
            _ => None,
        };
        if asked.is_some_and(|vcpu| vcpu >= vcpus) {
            let why = format!("the VM has {vcpus} vCPUs (gdb threads 1 to {vcpus})");
            if let Some(debug) = self.slots[vm].debug.as_mut() {
                debug.reply(match request {
                    DebugRequest::ReadRegisters { .. } => DebugReply::Registers(Err(why)),
                    DebugRequest::ReadMemory { .. } => DebugReply::Memory(Vec::new()),
                    _ => DebugReply::Done(Err(why)),
                });
            }
            return;
        }
        // gdb may look at a VM that is moving, but neither run it nor change
        // it once it is paused for its move: its registers would be newer
        // than the memory the receiver got.
        let runs_or_changes = matches!(
            request,
            DebugRequest::Continue
                | DebugRequest::Step { .. }
                | DebugRequest::WriteRegisters { .. }
                | DebugRequest::WriteMemory { .. }
                | DebugRequest::Breakpoint { .. }
                | DebugRequest::Watchpoint { .. }
        );
        if runs_or_changes {
            if let Err(why) = crate::migration::ownership::decide(self.holding(vm), Request::GdbRun) {
                self.note(vm, format_args!("gdb's request refused: {why}"));
                let stopped = self.stop_reply(vm, DebugStop::Interrupt);
                let reply = match request {
                    // gdb waits for a stop: it gets one at once, where the VM is.
                    DebugRequest::Continue | DebugRequest::Step { .. } => stopped,
                    _ => DebugReply::Done(Err(why.to_string())),
                };
                if let Some(debug) = self.slots[vm].debug.as_mut() {
                    debug.reply(reply);
                }
                return;
            }
        }
        let slot = &mut self.slots[vm];
        let Some(debug) = slot.debug.as_mut() else { return };
        let runtime = &mut slot.runtime;
        match request {
            DebugRequest::Attach { peer } => {
                debug.peer = Some(peer.clone());
                debug.reply(DebugReply::Done(Ok(true)));
                self.debugger_status(vm, DebuggerStatus::Connected { peer });
            }
            DebugRequest::Detach { reason } => self.detach(vm, reason),
            DebugRequest::Refused { peer } => self.debugger_status(vm, DebuggerStatus::Refused { peer }),
            DebugRequest::ReadRegisters { vcpu } => {
                let state = runtime.machine.vcpus[vcpu].cpu_state().map(Box::new).map_err(|error| error.to_string());
                debug.reply(DebugReply::Registers(state));
            }
            DebugRequest::WriteRegisters { vcpu, state } => {
                let done = runtime.machine.vcpus[vcpu].set_cpu_state(&state).map(|()| true).map_err(|e| e.to_string());
                debug.reply(DebugReply::Done(done));
            }
            DebugRequest::ReadMemory { vcpu, address, length } => {
                let mut bytes = vec![0; length];
                let read = view_on(runtime, vcpu).read(address, &mut bytes);
                bytes.truncate(read);
                debug.unpatch(address, &mut bytes);
                debug.reply(DebugReply::Memory(bytes));
            }
            DebugRequest::WriteMemory { vcpu, address, bytes } => {
                let written = debug.write_memory(address, &bytes, &view_on(runtime, vcpu)).map(|()| true);
                debug.reply(DebugReply::Done(written));
            }
            DebugRequest::Breakpoint { kind, address, insert } => {
                let done = debug.breakpoint(kind, address, insert, &view(runtime));
                debug.reply(DebugReply::Done(done));
            }
            DebugRequest::Watchpoint { kind, address, length, insert } => {
                let done = debug.watchpoint(kind, address, length, insert, &view(runtime));
                debug.reply(DebugReply::Done(done));
            }
            DebugRequest::Continue | DebugRequest::Step { .. } if slot.state.is_finished() => {
                let end = match slot.state {
                    VmState::Halted { .. } => DebugEnd::Halted,
                    VmState::Killed => DebugEnd::Killed,
                    _ => DebugEnd::Crashed,
                };
                debug.reply(DebugReply::Ended(end));
            }
            DebugRequest::Continue => {
                self.debugger_status(vm, DebuggerStatus::Continued);
                self.arm_debugger(vm, Some(Resume::Continue));
                self.set_state(vm, VmState::Running);
            }
            DebugRequest::Step { vcpu } => {
                // Its turn, whatever the VM would have chosen: gdb picked the thread.
                runtime.pin_vcpu(vcpu);
                self.arm_debugger(vm, Some(Resume::Step));
                self.gdb_steps.push_back(vm);
            }
            DebugRequest::Interrupt => {
                if debug.resumed == Some(Resume::Continue) && !slot.state.is_finished() {
                    self.stop_for_debugger(vm, DebugStop::Interrupt);
                }
            }
            DebugRequest::Kill => {
                debug.forget();
                self.arm_debugger(vm, None);
                self.answer_debugger(vm, DebugReply::Ended(DebugEnd::Killed));
                if !self.slots[vm].state.is_finished() {
                    self.set_state(vm, VmState::Killed);
                }
                self.debugger_status(vm, DebuggerStatus::Disconnected { reason: "killed the VM".into() });
            }
        }
    }

    /// The debugger left: by gdb's `detach` (`reason` None: the VM goes on)
    /// or with the connection (the VM waits for the next debugger).
    fn detach(&mut self, vm: VmId, reason: Option<String>) {
        let slot = &mut self.slots[vm];
        let Some(debug) = slot.debug.as_mut() else { return };
        debug.clear(&view(&slot.runtime));
        debug.peer = None;
        debug.resumed = None;
        self.arm_debugger(vm, None);
        let finished = self.slots[vm].state.is_finished();
        let status = match reason {
            None if finished => "detached (the VM has ended)".to_string(),
            Some(why) if finished => format!("left: {why}"),
            None => {
                let may_run = crate::migration::ownership::may_run(self.holding(vm));
                if self.slots[vm].state != VmState::Running && may_run {
                    self.set_state(vm, VmState::Running);
                }
                "detached; the VM goes on".to_string()
            }
            Some(why) => {
                self.slots[vm].runtime.machine.vcpus.iter_mut().for_each(Vcpu::complete_pending_exit);
                self.set_state(vm, VmState::Gdb { stop: DebugStop::Waiting });
                format!("left: {why}; the VM waits for the next debugger")
            }
        };
        self.debugger_status(vm, DebuggerStatus::Disconnected { reason: status });
    }

    /// Gives the vCPU what the resume `resume` needs of guest debugging
    /// (None: none), and remembers the resume until it is answered.
    pub(super) fn arm_debugger(&mut self, vm: VmId, resume: Option<Resume>) {
        let slot = &mut self.slots[vm];
        let Some(debug) = slot.debug.as_mut() else { return };
        debug.resumed = resume;
        let settings = debug.guest_debug(resume);
        if settings == debug.applied {
            return;
        }
        // Every vCPU: a breakpoint stops whichever reaches it. A step is
        // only the pinned vCPU's to take (its siblings do not run meanwhile).
        let applied = slot.runtime.machine.vcpus.iter_mut().try_for_each(|vcpu| vcpu.set_guest_debug(&settings));
        match applied {
            Ok(()) => debug.applied = settings,
            Err(error) => slot.runtime.console.note(format_args!("gdb: KVM_SET_GUEST_DEBUG failed: {error}")),
        }
    }

    /// Answers the resume `vm`'s debugger waits on, if it waits.
    pub(super) fn answer_debugger(&mut self, vm: VmId, reply: DebugReply) {
        if let Some(debug) = &mut self.slots[vm].debug {
            debug.answer_resume(reply);
        }
    }

    /// Stops `vm` for its debugger and tells gdb why.
    pub(super) fn stop_for_debugger(&mut self, vm: VmId, stop: DebugStop) {
        let slot = &mut self.slots[vm];
        // An `in` completes only on the next entry: do it now, so that gdb
        // sees its value (on every vCPU: all of them stop).
        slot.runtime.machine.vcpus.iter_mut().for_each(Vcpu::complete_pending_exit);
        let reply = self.stop_reply(vm, stop);
        self.answer_debugger(vm, reply);
        if stop != DebugStop::Step {
            // Steps go unannounced: gdb's `next` is hundreds of them.
            self.debugger_status(vm, DebuggerStatus::Stopped(stop));
        }
        if !self.slots[vm].state.is_finished() {
            self.set_state(vm, VmState::Gdb { stop });
        }
    }

    /// What a debug exit of `vm` means for its debugger (None: go on).
    pub(super) fn debugger_exit(&mut self, vm: VmId, exit: DebugExit) -> Option<DebugStop> {
        let slot = &mut self.slots[vm];
        slot.debug.as_mut()?.on_debug_exit(exit, &view(&slot.runtime))
    }

    /// After an I/O exit of a VM stepped to serve breakpoints or
    /// watchpoints: whether it reached one (`rip` is the next instruction).
    pub(super) fn debugger_after_io(&mut self, vm: VmId, rip: u64) -> Option<DebugStop> {
        let slot = &mut self.slots[vm];
        let debug = slot.debug.as_mut()?;
        if debug.resumed != Some(Resume::Continue) || !debug.applied.single_step {
            return None;
        }
        debug.stepped_to(rip, &view(&slot.runtime))
    }

    /// Whether the instruction at `pc` is a `hlt`: some hosts do not report
    /// a stepped hlt as a halt (kvm_pvm runs on past it), so the core halts
    /// the VM itself before it is stepped.
    pub(super) fn halts_next(&self, vm: VmId, pc: u64) -> bool {
        // A VM of several vCPUs does not end with one vCPU's hlt: its step
        // runs (on such a host, on past the hlt, as if an interrupt came).
        if self.slots[vm].runtime.vcpus.len() > 1 {
            return false;
        }
        let mut instruction = [0];
        view(&self.slots[vm].runtime).read(pc, &mut instruction) == 1 && instruction[0] == HLT
    }

    /// Halts `vm` at the `hlt` it is about to step (counted as its HLT exit)
    /// and tells gdb.
    pub(super) fn halt_for_debugger(&mut self, vm: VmId) {
        self.slots[vm].runtime.counters.exits.hlt += 1;
        let registers = self.slots[vm].runtime.machine.boot_vcpu().registers();
        let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
        self.set_state(vm, VmState::Halted { registers, t_ns });
        let reply = self.stop_reply(vm, DebugStop::Halted);
        self.answer_debugger(vm, reply);
    }

    /// gdb's answer for `vm` stopping with `stop`, on the vCPU that ran last.
    pub(super) fn stop_reply(&self, vm: VmId, stop: DebugStop) -> DebugReply {
        DebugReply::Stopped { stop, vcpu: self.slots[vm].runtime.current_vcpu() }
    }

    /// Runs one instruction of `vm` for gdb (charged to the VM, not to the
    /// policy) and tells gdb where it stopped.
    pub(super) fn gdb_step(&mut self, vm: VmId, deadlines: &mut Deadlines) {
        if !crate::migration::ownership::may_run(self.holding(vm)) {
            let reply = self.stop_reply(vm, DebugStop::Interrupt);
            self.answer_debugger(vm, reply);
            return;
        }
        let runtime = &self.slots[vm].runtime;
        let rip = runtime.machine.vcpus[runtime.current_vcpu()].registers().rip;
        if self.halts_next(vm, rip) {
            self.halt_for_debugger(vm);
            return;
        }
        let slice = Slice { vm, length_ns: Some(STEP_LIMIT.as_nanos() as u64) };
        let record = self.run_slice(slice, deadlines, true);
        let answered = self.slots[vm].debug.as_ref().is_none_or(|debug| debug.resumed.is_none());
        if answered || self.quit {
            return;
        }
        if record.end == SliceEnd::Command && record.exits == 0 {
            // A command came first: apply it, then step afresh (if still asked to).
            self.kick.take_request();
            self.apply_commands();
            if self.slots[vm].debug.as_ref().is_some_and(|debug| debug.resumed == Some(Resume::Step)) {
                self.gdb_steps.push_front(vm);
            }
            return;
        }
        // An I/O exit (the instruction was an `out` or `in`, now done), a
        // yield, or no exit at all within the step's time.
        self.stop_for_debugger(vm, DebugStop::Step);
    }

    /// Tells the front ends how `vm`'s debugger stands (headless runs print
    /// it as a `[matrix]` line).
    pub(super) fn debugger_status(&mut self, vm: VmId, status: DebuggerStatus) {
        let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
        // What the guest printed before goes out before it.
        self.queue_console(vm);
        self.outbox.push_back(Event::Debugger { vm, t_ns, status });
    }
}
