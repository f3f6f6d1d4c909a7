//! VMs moving between cores (`--cpus` over 1): handing one over, taking one
//! in, and passing on what comes for a VM that is no longer here.
//!
//! The order keeps every command on track: the giving core puts the VM in
//! the taker's arrivals first, then points the placement at the taker, then
//! wakes it. So a command that reaches the taker because the placement
//! names it finds the VM in the arrivals, and one that reached the giver
//! before is passed on.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Which core runs each VM, by VM id: read by the front ends' handle to
/// route commands, written by the core that hands a VM over.
pub(crate) struct Placement(Vec<AtomicUsize>);

impl Placement {
    pub(super) fn new(cores: Vec<usize>) -> Self {
        Self(cores.into_iter().map(AtomicUsize::new).collect())
    }

    /// The core that runs `vm` (0 for a VM the run did not start with).
    pub(crate) fn core_of(&self, vm: VmId) -> usize {
        self.0.get(vm).map_or(0, |core| core.load(Ordering::Acquire))
    }

    fn set(&self, vm: VmId, core: usize) {
        if let Some(slot) = self.0.get(vm) {
            slot.store(core, Ordering::Release);
        }
    }
}

/// Whether VMs may move, how many are between cores, and how many of the
/// run's have not finished (a core without VMs waits while any has not: one
/// may come to it).
#[derive(Default)]
pub(super) struct MoveGate {
    closed: std::sync::atomic::AtomicBool,
    in_flight: AtomicUsize,
    pub(super) unfinished: AtomicUsize,
    /// Cores that have reached the run's end.
    finishing: AtomicUsize,
}

impl MoveGate {
    /// A VM of the run finished (one that came in by migration is not
    /// counted: never below zero). Returns the count before.
    pub(super) fn finished_one(&self) -> usize {
        self.unfinished.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1))).unwrap_or(0)
    }

    /// Whether any VM of the run has not finished.
    pub(super) fn any_unfinished(&self) -> bool {
        self.unfinished.load(Ordering::SeqCst) > 0
    }

    /// No move starts from now on (the run ends).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Counts a move in, unless the gate is closed.
    fn enter(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// Another core, as this one reaches it.
pub(super) struct Peer {
    pub(super) commands: Sender<Message>,
    pub(super) kick: Arc<KickTarget>,
    pub(super) arrivals: Sender<(VmId, Box<Slot>)>,
    /// Its lane inbox (gang windows).
    pub(super) lanes: Sender<super::gang::LaneCall>,
}

impl Core {
    /// Hands `vm` to core `to`, unless something ties it here now (a
    /// debugger, a save, a move to another host, steps asked for): the
    /// balancer asks again later.
    pub(super) fn move_vm(&mut self, vm: VmId, to: usize) {
        if !self.slots.owns(vm) || to == self.index || to >= self.peers.len() {
            return;
        }
        if self.tied(vm) || !self.move_gate.enter() {
            return;
        }
        // Its state changes so far go out before it leaves.
        self.deliver_outbox();
        let slot = self.slots.take(vm).expect("owned: checked above");
        if matches!(slot.state, VmState::Sleeping { .. } | VmState::Throttled { .. }) {
            self.sleeping -= 1;
        }
        self.planner.set_candidate(vm, Candidate { weight: 1.0, runnable: false, keeps_lag: false });
        self.moves += 1;
        let peer = &self.peers[to];
        if let Err(returned) = peer.arrivals.send((vm, Box::new(slot))) {
            // That core has ended (the run is ending): keep the VM.
            let (vm, slot) = returned.into_inner();
            self.take_in(vm, *slot);
            self.move_gate.done();
            return;
        }
        self.placement.set(vm, to);
        let _ = peer.commands.send(Message::Internal(Internal::VmArrived));
        peer.kick.request();
        if let Some((trace, _)) = &mut self.trace {
            let t_ns = monotonic_ns().saturating_sub(self.epoch_ns);
            trace.push(TraceRecord::Moved { vm, t_ns, from: self.index as u16, to: to as u16 });
        }
    }

    /// Whether something ties `vm` to this core and its one thread now: a
    /// debugger, a save, a move to or from another host, steps asked for.
    pub(super) fn tied(&self, vm: VmId) -> bool {
        let slot = &self.slots[vm];
        slot.debug.is_some()
            || slot.outgoing.is_some()
            || slot.saving.is_some()
            || slot.incoming.is_some()
            || self.step_requests.iter().any(|&(stepped, _)| stepped == vm)
    }

    /// Keeps `vm` on `cores` (empty: any): one it may not run on now moves
    /// at once to the first it may (the balancer may move it on later).
    pub(super) fn pin(&mut self, vm: VmId, cores: Vec<usize>) {
        if let Some(&core) = cores.iter().find(|&&core| core >= self.cores) {
            let have = if self.cores == 1 { "core 0".to_string() } else { format!("cores 0 to {}", self.cores - 1) };
            self.note(vm, format_args!("pin refused: no core {core} (the run has {have})"));
            return;
        }
        self.slots[vm].config.pin = cores;
        let pin = &self.slots[vm].config.pin;
        if let Some(&to) = pin.first().filter(|_| !pin.contains(&self.index)) {
            self.move_vm(vm, to);
        }
    }

    /// Takes in the VMs other cores handed over.
    pub(super) fn take_arrivals(&mut self) {
        while let Ok((vm, slot)) = self.arrivals.try_recv() {
            self.arrived(vm, *slot);
        }
    }

    /// `vm` arrived from another core: it is this core's now, and its move is done.
    fn arrived(&mut self, vm: VmId, slot: Slot) {
        self.moves += 1;
        self.take_in(vm, slot);
        self.move_gate.done();
    }

    /// At the run's end: waits (a second at most) until every core has
    /// reached it and no move is under way, taking in the VMs that come here
    /// and applying what other cores passed on (a command sent before the
    /// quit still applies). The gate is closed, so no move starts.
    pub(super) fn take_last_arrivals(&mut self) {
        self.move_gate.close();
        if self.peers.len() < 2 {
            return;
        }
        self.move_gate.finishing.fetch_add(1, Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            self.take_arrivals();
            while let Ok(message) = self.commands.try_recv() {
                self.apply(message);
            }
            let all_here = self.move_gate.finishing.load(Ordering::SeqCst) >= self.peers.len();
            if (all_here && !self.move_gate.busy()) || Instant::now() > give_up {
                break;
            }
            if let Ok((vm, slot)) = self.arrivals.recv_timeout(Duration::from_millis(1)) {
                self.arrived(vm, *slot);
            }
        }
        while let Ok(message) = self.commands.try_recv() {
            self.apply(message);
        }
    }

    fn take_in(&mut self, vm: VmId, slot: Slot) {
        let wakes_at = match slot.state {
            VmState::Sleeping { until_ns } | VmState::Throttled { until_ns } => Some(until_ns),
            _ => None,
        };
        self.slots.put(vm, slot);
        if let Some(until_ns) = wakes_at {
            self.sleeping += 1;
            self.wakes.push(std::cmp::Reverse((until_ns, vm)));
        }
        // It starts here with no lag owed or forgiven: the planner places it
        // as it does a VM that wakes.
        self.planner.set_candidate(vm, self.slots[vm].candidate(self.planner.policy()));
    }

    /// Passes `message` about `vm`, which is not here, to the core that
    /// runs it now; the message back if it is here after all (or on its way
    /// here), or is no VM of this run, for this core to handle.
    pub(super) fn pass_on(&mut self, vm: VmId, message: Message) -> Result<(), Message> {
        if self.peers.len() < 2 || vm >= self.slots.len() {
            return Err(message);
        }
        // It may be on its way here.
        self.take_arrivals();
        if self.slots.owns(vm) {
            return Err(message);
        }
        let to = self.placement.core_of(vm);
        if to == self.index {
            // Its hand-over is in flight to us, arrivals first: nothing to do but keep it.
            return Err(message);
        }
        let peer = &self.peers[to];
        let _ = peer.commands.send(message);
        peer.kick.request();
        Ok(())
    }
}
