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

/// The front end's side of a running core.
pub struct CoreHandle {
    commands: Sender<Message>,
    events: Receiver<Event>,
    kick: Arc<KickTarget>,
    thread: JoinHandle<()>,
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
    /// A sender of helper threads' messages.
    pub(crate) fn commander(&self) -> Commander {
        Commander { commands: self.commands.clone(), kick: Arc::clone(&self.kick) }
    }

    /// When the run started: the zero of timestamps, durations and `wall_ns`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends a command and kicks the core out of KVM_RUN to read it. A
    /// [`Command::MigrateTo`] starts its link thread here (the core thread
    /// may not touch sockets) and reaches the core as its internal `Migrate`.
    pub fn send(&self, command: Command) {
        let message = match command {
            Command::MigrateTo { vm, address } => {
                static NEXT_ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                let attempt = NEXT_ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let to = address.to_string();
                let bandwidth = self.migration_bandwidth;
                let secret = self.migrate_secret.clone();
                match crate::migration::link::start_outgoing(vm, attempt, address, bandwidth, secret, self.commander())
                {
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
        // The core holds the receiver until it finishes; after that there is
        // nobody to tell, so a failed send needs no handling.
        let _ = self.commands.send(message);
        self.kick.request();
    }

    /// The events the core sends, ending with [`Event::Finished`].
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Kernel thread id of the core thread (for /proc lookups).
    pub fn core_tid(&self) -> libc::pid_t {
        self.kick.tid()
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

    /// Waits for the core thread to end, and at most
    /// [`trace::FINISH_LIMIT`] for the trace writer; puts what the trace
    /// file got into `report` (which [`Event::Finished`] brought).
    pub fn finish(self, report: &mut RunReport) {
        for path in &self.socket_paths {
            let _ = std::fs::remove_file(path);
        }
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        if let (Some(writer), Some(trace)) = (self.trace_writer, &mut report.trace) {
            let end = writer.finish();
            trace.written = end.written;
            trace.lost = trace.records.saturating_sub(end.written);
            trace.error = end.error;
        }
    }
}

/// Sets up every VM of `config` (on the calling thread, so that errors come back
/// at once) and starts the core thread running them.
pub fn spawn(kvm: Kvm, config: RunConfig) -> Result<CoreHandle, SpawnError> {
    // Asked here: the core thread may not open files.
    crate::vm::restore::host_may_swap();
    let migration_bandwidth = config.migration.bandwidth;
    let migrate_secret = config.migrate_secret.clone();
    let mut slots = Vec::with_capacity(config.vms.len());
    for vm in config.vms {
        let mut slot = Slot::new(&kvm, vm)?;
        slot.timings = config.timings.then(VmTimings::default);
        slots.push(slot);
    }
    let (trace, trace_writer) = match &config.trace {
        Some(path) => {
            let names = slots.iter().map(|slot| slot.config.name.clone()).collect();
            let (buffer, writer) = trace::start(path, names).map_err(|error| match error {
                trace::StartError::File(source) => SpawnError::Trace { path: path.display().to_string(), source },
                trace::StartError::Thread(source) => SpawnError::Thread { what: "trace writer", source },
            })?;
            (Some((buffer, path.display().to_string())), Some(writer))
        }
        None => (None, None),
    };
    let (command_tx, command_rx) = crossbeam_channel::unbounded();
    let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let kick = KickTarget::new();
    let socket_paths = serve_debuggers(&kvm, &mut slots, &command_tx, &kick)?;
    let started = Instant::now();
    let epoch_ns = monotonic_ns();
    let quantum = config.quantum.clamp(MIN_QUANTUM, MAX_QUANTUM);
    let core = Core {
        planner: Planner::new(config.policy, quantum.as_nanos() as u64, &candidates(&slots)),
        kvm,
        slots,
        timer_kind: config.timer,
        kick: Arc::clone(&kick),
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        started,
        epoch_ns,
        live_records: config.live_records,
        live_slices: Vec::new(),
        live_slices_dropped: 0,
        trace,
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
    };
    let thread = std::thread::Builder::new()
        .name("matrix-core".into())
        .spawn(move || core.run(ready_tx))
        .map_err(|source| SpawnError::Thread { what: "core", source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let _ = thread.join();
            return Err(error);
        }
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the core thread reports readiness before it returns"),
        },
    }
    Ok(CoreHandle {
        commands: command_tx,
        events: event_rx,
        kick,
        thread,
        started,
        trace_writer,
        socket_paths,
        migration_bandwidth,
        migrate_secret,
    })
}

/// Starts a gdb server for each VM that asked for one (after probing what
/// this host honours, once); those VMs wait at their entry point. Returns
/// the Unix sockets to remove when the run ends.
fn serve_debuggers(
    kvm: &Kvm,
    slots: &mut [Slot],
    commands: &Sender<Message>,
    kick: &Arc<KickTarget>,
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
        let send = server::request_sender(vm, commands.clone(), Arc::clone(kick));
        let layout = RegisterLayout::for_mode(slot.config.layout.mode);
        server::start(listener, send, reply_rx, layout, slot.config.vcpus as usize)
            .map_err(|source| SpawnError::Thread { what: "gdb server", source })?;
        slot.debug = Some(Debugged::new(listening, reply_tx, strategy));
        slot.state = VmState::Gdb { stop: DebugStop::Waiting };
    }
    Ok(socket_paths)
}
