//! The front ends' side of the core: starting a run (every VM set up on the
//! calling thread, so that errors come back at once; the gdb servers; the
//! trace), the handle that sends commands and receives events, and the
//! errors of starting.

use super::*;
use crate::debug::layout::RegisterLayout;

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

/// Starting a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A VM could not be set up.
    #[error(transparent)]
    Vm(#[from] VmSetupError),
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A gdb server could not listen where it was asked to.
    #[error("cannot serve gdb for VM '{name}' on {address}: {source}; give --gdb another port or socket path")]
    Gdb {
        /// The VM.
        name: String,
        /// Where.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The guest-debug probe could not run.
    #[error("cannot find out what this host's KVM honours of guest debugging: {0}")]
    DebugProbe(SetupError),
    /// The trace file could not be created.
    #[error("--trace {path}: cannot write the trace there: {source}{advice}", advice = trace_advice(.source))]
    Trace {
        /// The file asked for.
        path: String,
        /// Why.
        source: crate::os::files::FileError,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}; the process is out of memory or threads (see ulimit -v and -u)")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// /dev/kvm could not be opened again for another core.
    #[error("cannot open /dev/kvm for core {core}: {source}; run with fewer --cpus")]
    Kvm {
        /// Which core.
        core: usize,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// A core thread ended before it was ready.
    #[error("core {core} ended while starting; see the error above, or run with --cpus 1")]
    CoreEnded {
        /// Which core.
        core: usize,
    },
    /// The quantum timer could not be created.
    #[error("cannot create the {kind} quantum timer: {source}; try --timer {other}", kind = .kind.name(), other = .other.name())]
    Timer {
        /// The backend asked for.
        kind: TimerKind,
        /// The other backend, to suggest.
        other: TimerKind,
        /// Why.
        source: std::io::Error,
    },
}

/// What to do about a trace file that cannot be opened, where its error
/// does not say already.
fn trace_advice(error: &crate::os::files::FileError) -> &'static str {
    match error {
        crate::os::files::FileError::Io(_) => "; give --trace a path in a writable directory",
        _ => "",
    }
}

/// One core thread as the front ends reach it.
struct CoreLink {
    commands: Sender<Message>,
    kick: Arc<KickTarget>,
    thread: JoinHandle<()>,
}

/// The front end's side of a running core (or of `--cpus N` cores, seen as
/// one run).
pub struct CoreHandle {
    cores: Vec<CoreLink>,
    /// The core each VM runs on, by VM id.
    placement: Arc<super::moving::Placement>,
    events: Receiver<Event>,
    /// The thread that merges the cores' events into one stream (`--cpus`
    /// over 1).
    merger: Option<JoinHandle<()>>,
    started: Instant,
    trace_writer: Option<TraceWriter>,
    /// gdb servers' Unix sockets, removed when the run ends.
    socket_paths: Vec<std::path::PathBuf>,
    /// The cap on a migration's sending rate (bytes a second).
    migration_bandwidth: Option<u64>,
    migrate_secret: Option<Arc<crate::migration::secret::Secret>>,
}

/// Sends the core's helper threads' messages (a migration's link, the
/// listener for incoming VMs), kicking it to read them. The crate's own:
/// front ends send [`Command`]s through [`CoreHandle::send`].
#[derive(Clone)]
pub(crate) struct Commander {
    commands: Sender<Message>,
    kick: Arc<KickTarget>,
}

impl Commander {
    /// Sends a message and kicks the core out of KVM_RUN to read it.
    pub(crate) fn send(&self, internal: Internal) {
        let _ = self.commands.send(Message::Internal(internal));
        self.kick.request();
    }
}

impl CoreHandle {
    /// A sender of helper threads' messages to the first core (the one that
    /// takes VMs in).
    pub(crate) fn commander(&self) -> Commander {
        self.commander_of(0)
    }

    fn commander_of(&self, core: usize) -> Commander {
        let link = &self.cores[core];
        Commander { commands: link.commands.clone(), kick: Arc::clone(&link.kick) }
    }

    /// When the run started: the zero of timestamps, durations and `wall_ns`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How many cores run the VMs.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Sends a command and kicks the core out of KVM_RUN to read it: a VM's
    /// command to the core that runs it, the others to every core. A
    /// [`Command::MigrateTo`] starts its link thread here (the core thread
    /// may not touch sockets) and reaches the core as its internal `Migrate`.
    pub fn send(&self, command: Command) {
        // A core holds its receiver until it finishes; after that there is
        // nobody to tell, so a failed send needs no handling.
        let Some(vm) = command.vm() else {
            for link in &self.cores {
                let _ = link.commands.send(Message::Command(command.clone()));
                link.kick.request();
            }
            return;
        };
        let core = self.placement.core_of(vm).min(self.cores.len() - 1);
        let message = match command {
            Command::MigrateTo { vm, address } => {
                static NEXT_ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                let attempt = NEXT_ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let to = address.to_string();
                let bandwidth = self.migration_bandwidth;
                let secret = self.migrate_secret.clone();
                let commander = self.commander_of(core);
                match crate::migration::link::start_outgoing(vm, attempt, address, bandwidth, secret, commander) {
                    Ok(link) => {
                        Message::Internal(Internal::Migrate { vm, attempt, to, link: crate::event::Reply(link) })
                    }
                    Err(error) => {
                        Message::Internal(Internal::Notice(format!("cannot start the migration to {to}: {error}")))
                    }
                }
            }
            command => Message::Command(command),
        };
        let link = &self.cores[core];
        let _ = link.commands.send(message);
        link.kick.request();
    }

    /// The events the core sends, ending with [`Event::Finished`].
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Kernel thread id of the (first) core thread (for /proc lookups).
    pub fn core_tid(&self) -> libc::pid_t {
        self.cores[0].kick.tid()
    }

    /// Passes every event to `on_event` until the run finishes, asking it to
    /// quit at `deadline` (if any); then waits for the thread and returns the
    /// final report.
    pub fn run_until(self, deadline: Option<Instant>, mut on_event: impl FnMut(Event)) -> RunReport {
        let mut deadline = deadline;
        loop {
            let received = match deadline {
                Some(at) => self.events.recv_deadline(at).map_err(|_| ()),
                None => self.events.recv().map_err(|_| ()),
            };
            match received {
                Ok(Event::Finished(mut report)) => {
                    self.finish(&mut report);
                    return *report;
                }
                Ok(event) => on_event(event),
                Err(()) if deadline.is_some() => {
                    self.send(Command::Quit);
                    deadline = None;
                }
                Err(()) => panic!("the core thread ended without a report"),
            }
        }
    }

    /// Waits for the core threads to end, and at most
    /// [`trace::FINISH_LIMIT`] for the trace writer; puts what the trace
    /// file got into `report` (which [`Event::Finished`] brought).
    pub fn finish(self, report: &mut RunReport) {
        for path in &self.socket_paths {
            let _ = std::fs::remove_file(path);
        }
        for link in self.cores {
            if let Err(panic) = link.thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        if let Some(merger) = self.merger {
            if let Err(panic) = merger.join() {
                std::panic::resume_unwind(panic);
            }
        }
        if let (Some(writer), Some(trace)) = (self.trace_writer, &mut report.trace) {
            let end = writer.finish();
            trace.written = end.written;
            trace.lost = trace.records.saturating_sub(end.written);
            trace.error = end.error;
        }
    }
}

/// Sets up every VM of `config` (on the calling thread, so that errors come
/// back at once) and starts the core threads running them: one, or one per
/// `config.cpus`, each VM on the core [`shares::place`] gives it.
pub fn spawn(kvm: Kvm, config: RunConfig) -> Result<CoreHandle, SpawnError> {
    // Asked here: the core thread may not open files.
    crate::vm::restore::host_may_swap();
    let cores = config.cpus.max(1);
    let migration_bandwidth = config.migration.bandwidth;
    let migrate_secret = config.migrate_secret.clone();
    let mut slots = Vec::with_capacity(config.vms.len());
    for vm in &config.vms {
        let mut slot = Slot::new(&kvm, vm.clone())?;
        slot.timings = config.timings.then(VmTimings::default);
        slots.push(slot);
    }
    let placed = placement(&config.vms, cores);
    let gang = Arc::new(super::gang::GangBoard::new(config.vms.iter().map(|vm| vm.vcpus as usize).collect(), cores));
    if config.policy == Policy::Gang {
        let weights: Vec<f64> = slots
            .iter()
            .map(|slot| slot.candidate(Policy::Fair))
            .map(|c| if c.runnable { c.weight } else { 0.0 })
            .collect();
        gang.replan(&weights, cores, config.quantum.clamp(MIN_QUANTUM, MAX_QUANTUM).as_nanos() as u64);
    }
    let (trace, trace_writer) = match &config.trace {
        Some(path) => {
            let names = slots.iter().map(|slot| slot.config.name.clone()).collect();
            let (buffer, writer) = trace::start(path, names, cores).map_err(|error| match error {
                trace::StartError::File(source) => SpawnError::Trace { path: path.display().to_string(), source },
                trace::StartError::Thread(source) => SpawnError::Thread { what: "trace writer", source },
            })?;
            (Some((buffer, path.display().to_string())), Some(writer))
        }
        None => (None, None),
    };
    let channels: Vec<_> = (0..cores).map(|_| (crossbeam_channel::unbounded(), KickTarget::new())).collect();
    let reach: Vec<_> = channels.iter().map(|((commands, _), kick)| (commands.clone(), Arc::clone(kick))).collect();
    let socket_paths = serve_debuggers(&kvm, &mut slots, &placed, &reach)?;
    let (arrival_senders, arrival_receivers): (Vec<_>, Vec<_>) =
        (0..cores).map(|_| crossbeam_channel::unbounded()).unzip();
    let (lane_senders, lane_receivers): (Vec<_>, Vec<_>) = (0..cores).map(|_| crossbeam_channel::unbounded()).unzip();
    let peers = || -> Vec<super::moving::Peer> {
        (reach.iter().zip(&arrival_senders).zip(&lane_senders))
            .map(|(((commands, kick), arrivals), lanes)| super::moving::Peer {
                commands: commands.clone(),
                kick: Arc::clone(kick),
                arrivals: arrivals.clone(),
                lanes: lanes.clone(),
            })
            .collect()
    };
    // One core sends straight to the front end; several through a merger.
    let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
    let (core_events, merger) = if cores == 1 {
        (vec![event_tx], None)
    } else {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| crossbeam_channel::bounded(EVENT_CAPACITY)).unzip();
        let merge = super::merge::Merger::new(placed.len(), reach.clone(), config.policy).with_gang(Arc::clone(&gang));
        let thread = std::thread::Builder::new()
            .name("matrix-merge".into())
            .spawn(move || merge.run(receivers, event_tx))
            .map_err(|source| SpawnError::Thread { what: "event merger", source })?;
        (senders, Some(thread))
    };
    let started = Instant::now();
    let epoch_ns = monotonic_ns();
    let quantum = config.quantum.clamp(MIN_QUANTUM, MAX_QUANTUM);
    let host_cpus = if cores > 1 { crate::os::affinity::allowed_cpus() } else { Vec::new() };
    // Each core's VMs, by id; the others' are holes.
    let mut per_core: Vec<Vec<Option<Slot>>> = (0..cores).map(|_| Vec::with_capacity(slots.len())).collect();
    for (vm, slot) in slots.into_iter().enumerate() {
        for own in &mut per_core {
            own.push(None);
        }
        per_core[placed[vm]][vm] = Some(slot);
    }
    let placement = Arc::new(super::moving::Placement::new(placed));
    let move_gate = Arc::new(super::moving::MoveGate::default());
    let unfinished = per_core.iter().flatten().flatten().filter(|slot| !slot.state.is_finished()).count();
    move_gate.unfinished.store(unfinished, std::sync::atomic::Ordering::SeqCst);
    let mut links = Vec::with_capacity(cores);
    let mut ready = Vec::with_capacity(cores);
    let mut kvm = Some(kvm);
    let links_in = per_core.into_iter().zip(channels).zip(core_events).zip(arrival_receivers).zip(lane_receivers);
    for (core, ((((own, ((command_tx, command_rx), kick)), events), arrivals), lane_calls)) in links_in.enumerate() {
        let slots = Slots::of(own);
        let kvm = match kvm.take() {
            Some(kvm) => kvm,
            None => Kvm::new().map_err(|source| SpawnError::Kvm { core, source })?,
        };
        let state = Core {
            planner: Planner::new(config.policy, quantum.as_nanos() as u64, &candidates(&slots, config.policy)),
            kvm,
            slots,
            timer_kind: config.timer,
            kick: Arc::clone(&kick),
            commands: command_rx,
            events,
            outbox: VecDeque::new(),
            started,
            epoch_ns,
            live_records: config.live_records,
            live_slices: Vec::new(),
            live_slices_dropped: 0,
            // Each core its own end of the one trace.
            trace: trace.as_ref().map(|(buffer, path): &(TraceBuffer, String)| (buffer.sibling(), path.clone())),
            calibration: config.calibration,
            step_requests: VecDeque::new(),
            gdb_steps: VecDeque::new(),
            last_sample_ns: epoch_ns,
            last_console_flush_ns: epoch_ns,
            last_records_flush_ns: epoch_ns,
            stay_open: config.stay_open,
            seccomp: config.seccomp,
            compensation: Compensation::new(config.compensate),
            quit: false,
            overruns: LatencyLog::default(),
            early_ends: LatencyLog::default(),
            preempted_at: None,
            // Started on the core thread: the CPU clock is the thread's.
            stolen: StolenWindow::default(),
            sleeping: 0,
            wakes: Default::default(),
            migration: config.migration,
            migrating: 0,
            saving: 0,
            next_save_step_ns: 0,
            host_cpu: host_cpus.get(core).copied(),
            index: core,
            cores,
            wake_preempt: config.wake_preempt,
            peers: if cores > 1 { peers() } else { Vec::new() },
            placement: Arc::clone(&placement),
            arrivals,
            moves: 0,
            move_gate: Arc::clone(&move_gate),
            kvm_run_ns: 0,
            gang: Arc::clone(&gang),
            lane_calls,
            gang_skipped: None,
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let name = if cores == 1 { "matrix-core".to_string() } else { format!("matrix-core-{core}") };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || state.run(ready_tx))
            .map_err(|source| SpawnError::Thread { what: "core", source })?;
        links.push(CoreLink { commands: command_tx, kick, thread });
        ready.push(ready_rx);
    }
    let mut failure = None;
    for (core, ready_rx) in ready.into_iter().enumerate() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = failure.or(Some(error)),
            Err(_) => failure = failure.or(Some(SpawnError::CoreEnded { core })),
        }
    }
    if let Some(error) = failure {
        // The cores that started stop with the run they cannot have.
        for link in links {
            let _ = link.commands.send(Message::Command(Command::Quit));
            link.kick.request();
            if let Err(panic) = link.thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        return Err(error);
    }
    Ok(CoreHandle {
        cores: links,
        placement,
        events: event_rx,
        merger,
        started,
        trace_writer,
        socket_paths,
        migration_bandwidth,
        migrate_secret,
    })
}

/// The core each VM starts on: all on one, or spread by their shares of
/// the machine.
fn placement(vms: &[VmConfig], cores: usize) -> Vec<usize> {
    if cores == 1 {
        return vec![0; vms.len()];
    }
    let weights: Vec<f64> = vms.iter().map(|vm| vm.weight).collect();
    let pins: Vec<Vec<usize>> = vms.iter().map(|vm| vm.pin.clone()).collect();
    crate::sched::shares::place(&crate::sched::shares::machine_shares(&weights, cores), cores, &pins)
}

/// Starts a gdb server for each VM that asked for one (after probing what
/// this host honours, once); those VMs wait at their entry point. Returns
/// the Unix sockets to remove when the run ends.
fn serve_debuggers(
    kvm: &Kvm,
    slots: &mut [Slot],
    placement: &[usize],
    cores: &[(Sender<Message>, Arc<KickTarget>)],
) -> Result<Vec<std::path::PathBuf>, SpawnError> {
    let mut strategy = None;
    let mut socket_paths = Vec::new();
    for (vm, slot) in slots.iter_mut().enumerate() {
        let Some(address) = slot.config.gdb.clone() else { continue };
        let strategy = match strategy {
            Some(strategy) => strategy,
            None => *strategy.insert(debug_probe::probe(kvm).map_err(SpawnError::DebugProbe)?.strategy()),
        };
        let failed = |source| SpawnError::Gdb { name: slot.config.name.clone(), address: address.to_string(), source };
        let listener = Listener::bind(&address).map_err(failed)?;
        let listening = listener.address();
        socket_paths.extend(listener.socket_path());
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let (commands, kick) = &cores[placement[vm]];
        let send = server::request_sender(vm, commands.clone(), Arc::clone(kick));
        let layout = RegisterLayout::for_mode(slot.config.layout.mode);
        server::start(listener, send, reply_rx, layout, slot.config.vcpus as usize)
            .map_err(|source| SpawnError::Thread { what: "gdb server", source })?;
        slot.debug = Some(Debugged::new(listening, reply_tx, strategy));
        slot.state = VmState::Gdb { stop: DebugStop::Waiting };
    }
    Ok(socket_paths)
}
