//! The sockets of a migration, each on a thread of its own (the core thread
//! may not touch sockets): the sender's link is a pipe between the core and
//! the receiver, paced to the bandwidth cap; the receiver's listener serves
//! each incoming VM on a thread of its own, has the core make the VM blank
//! at its Hello, writes the pages straight into its memory, checks every
//! frame, and gives the core the VM's state once all of it has arrived.

use crate::console::escape_input;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::handover::{self, Arriving, ReceiverEvent};
use super::protocol::{Frame, MAX_PAGES_PER_FRAME, ProtocolError, VERSION, read_frame, write_frame};
use super::secret::{self, Secret};
use crate::debug::ListenAddress;
use crate::event::{Internal, Reply, VmId};
use crate::sched::Commander;
use crate::snapshot::Snapshot;
use crate::snapshot::format::PAGE_SIZE;
use crate::vm::memory::GuestMemory;
use vm_memory::{Bytes as _, GuestAddress};

/// How long a peer may say nothing in the middle of a migration.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn connect(address: &ListenAddress) -> std::io::Result<Halves> {
    match address {
        ListenAddress::Tcp(address) => {
            let stream = TcpStream::connect(address)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(PEER_TIMEOUT))?;
            Ok((Box::new(stream.try_clone()?), Box::new(stream)))
        }
        ListenAddress::Unix(path) => {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(PEER_TIMEOUT))?;
            Ok((Box::new(stream.try_clone()?), Box::new(stream)))
        }
    }
}

/// Starts the sender's side of moving `vm` to `address`: a thread that
/// connects, writes the frames the core sends on the returned channel (Pages
/// no faster than `bandwidth` bytes a second, if set) and hands the
/// receiver's frames to the core. Every failure reaches the core, which
/// alone decides what becomes of the VM: the writer's (nothing from the
/// failed frame on went out whole) apart from the reader's (what was
/// written may have arrived, a Go among it).
pub(crate) fn start_outgoing(
    vm: VmId,
    attempt: u64,
    address: ListenAddress,
    bandwidth: Option<u64>,
    secret: Option<Arc<Secret>>,
    core: Commander,
) -> std::io::Result<Sender<Frame>> {
    let (frames_tx, frames_rx) = crossbeam_channel::bounded::<Frame>(4);
    std::thread::Builder::new().name("matrix-migrate-out".into()).spawn(move || {
        // A failure before the link works waits for the core's first frame
        // (its Hello), so that the move it starts ends with this reason, not
        // with a link already gone.
        let give_up_early = |why: String| {
            let _ = frames_rx.recv_timeout(Duration::from_secs(5));
            core.send(Internal::MigrationFailed { vm, attempt, why, sending: true });
        };
        let (reader, mut writer) = match connect(&address) {
            Ok(halves) => halves,
            Err(error) => return give_up_early(format!("cannot connect to {address}: {error}")),
        };
        let mut reader = BufReader::new(reader);
        // The receiver's challenge, answered with the secret (never sent).
        match read_frame(&mut reader) {
            Ok(Frame::Challenge(challenge)) => {
                let proof = Frame::Proof(secret::answer(secret.as_deref(), &challenge));
                if let Err(error) = write_frame(&mut writer, &proof) {
                    return give_up_early(format!("cannot send to {address}: {error}"));
                }
            }
            Ok(other) => {
                return give_up_early(format!("the receiver began with {} instead of a challenge", other.name()));
            }
            Err(error) => {
                return give_up_early(format!(
                    "the receiver did not open the handshake ({error}): run the same matrix-tui on both sides"
                ));
            }
        }
        let give_up = |why: String| core.send(Internal::MigrationFailed { vm, attempt, why, sending: true });
        let reading = core.clone();
        let reader_thread = std::thread::Builder::new().name("matrix-migrate-in".into()).spawn(move || {
            loop {
                match read_frame(&mut reader) {
                    Ok(frame) => reading.send(Internal::Migration { vm, attempt, frame }),
                    Err(error) => {
                        let why = format!("the receiver's side: {error}");
                        return reading.send(Internal::MigrationFailed { vm, attempt, why, sending: false });
                    }
                }
            }
        });
        if let Err(error) = reader_thread {
            return give_up(format!("no thread to read the receiver: {error}"));
        }
        let mut writer = BufWriter::new(writer);
        let started = Instant::now();
        let mut allowed_at = Duration::ZERO;
        for frame in frames_rx {
            if let (Some(rate), Frame::Pages { .. }) = (bandwidth, &frame) {
                // Paced: a frame goes out once its own bytes have had their
                // time, the first one too, so that a move of one frame cannot
                // outrun the cap (nor measure the link as faster than it is).
                let bytes = frame.encode().len() as u64;
                allowed_at = allowed_at.max(started.elapsed()) + Duration::from_nanos(bytes * 1_000_000_000 / rate);
                std::thread::sleep(allowed_at.saturating_sub(started.elapsed()));
            }
            let last = matches!(frame, Frame::Go { .. } | Frame::Abandon(_));
            if let Err(error) = write_frame(&mut writer, &frame) {
                return give_up(format!("cannot send to {address}: {error}"));
            }
            if let Frame::Go { .. } = frame {
                core.send(Internal::MigrationGoSent { vm, attempt });
            }
            if last {
                return;
            }
        }
    })?;
    Ok(frames_tx)
}

/// A listening socket for incoming VMs.
pub enum IncomingListener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener),
}

impl IncomingListener {
    /// Binds `address` (a Unix socket left by an earlier run is replaced).
    pub fn bind(address: &ListenAddress) -> std::io::Result<Self> {
        match address {
            ListenAddress::Tcp(address) => Ok(Self::Tcp(TcpListener::bind(address)?)),
            ListenAddress::Unix(path) => {
                crate::os::files::remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)?;
                // Only this user may hand this run a VM.
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok(Self::Unix(listener))
            }
        }
    }

    fn accept(&self) -> std::io::Result<(Halves, String)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(PEER_TIMEOUT))?;
                stream.set_write_timeout(Some(PEER_TIMEOUT))?;
                Ok(((Box::new(stream.try_clone()?), Box::new(stream)), peer.to_string()))
            }
            Self::Unix(listener) => {
                let (stream, _) = listener.accept()?;
                stream.set_read_timeout(Some(PEER_TIMEOUT))?;
                stream.set_write_timeout(Some(PEER_TIMEOUT))?;
                Ok(((Box::new(stream.try_clone()?), Box::new(stream)), "a local socket".to_string()))
            }
        }
    }
}

/// Serves `listener` on a thread of its own: one incoming VM at a time,
/// named as on the sender; `names` are the run's VM names (a clash is
/// refused before anything moves). `max_memory` bounds what a sender may
/// announce. Whatever goes wrong ends that migration only, with a notice.
pub(crate) fn start_incoming(
    listener: IncomingListener,
    names: Arc<Mutex<Vec<String>>>,
    max_memory: u64,
    secret: Option<Arc<Secret>>,
    core: Commander,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("matrix-incoming".into()).spawn(move || {
        let mut backoff = crate::os::backoff::AcceptBackoff::default();
        let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            let Ok(((reader, writer), peer)) = listener.accept() else {
                backoff.wait_after_failure();
                continue;
            };
            backoff.succeeded();
            let mut writer = BufWriter::new(writer);
            // Each session on a thread of its own: a slow or hostile peer
            // holds one of them, never the others.
            if sessions.load(std::sync::atomic::Ordering::Acquire) >= MAX_INCOMING_SESSIONS {
                let why = format!("{MAX_INCOMING_SESSIONS} migrations are coming in already; try again later");
                core.send(Internal::Notice(format!("incoming migration from {peer} refused: {why}")));
                let _ = write_frame(&mut writer, &Frame::Refuse(why));
                continue;
            }
            let mut session = Incoming {
                reader: BufReader::new(SessionReader { inner: reader, give_up: Instant::now() + SESSION_LIMIT }),
                writer,
                core: core.clone(),
                names: Arc::clone(&names),
                max_memory,
                peer: peer.clone(),
                secret: secret.clone(),
            };
            let (core, active) = (core.clone(), Arc::clone(&sessions));
            active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let spawned = std::thread::Builder::new().name("matrix-incoming-vm".into()).spawn(move || {
                if let Err(why) = session.serve() {
                    core.send(Internal::Notice(format!("incoming migration from {peer} ended: {why}")));
                    let _ = write_frame(&mut session.writer, &Frame::Abandon(why));
                }
                active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            });
            if spawned.is_err() {
                sessions.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
    })?;
    Ok(())
}

/// Incoming migrations served at once; more are refused until one ends.
pub const MAX_INCOMING_SESSIONS: usize = 4;

/// The longest one incoming migration may take, however its peer paces its
/// bytes (each read has [`PEER_TIMEOUT`] on top).
pub const SESSION_LIMIT: Duration = Duration::from_secs(600);

/// A session's reads, cut off at its deadline.
struct SessionReader {
    inner: Box<dyn Read + Send>,
    give_up: Instant,
}

impl Read for SessionReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.give_up {
            let minutes = SESSION_LIMIT.as_secs() / 60;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the migration took longer than {minutes} minutes"),
            ));
        }
        self.inner.read(buffer)
    }
}

struct Incoming {
    reader: BufReader<SessionReader>,
    writer: BufWriter<Box<dyn Write + Send>>,
    core: Commander,
    names: Arc<Mutex<Vec<String>>>,
    max_memory: u64,
    peer: String,
    /// The secret a sender must prove it knows, if any.
    secret: Option<Arc<Secret>>,
}

impl Incoming {
    fn read(&mut self) -> Result<Frame, String> {
        match read_frame(&mut self.reader) {
            Ok(Frame::Abandon(why)) => Err(format!(
                "the sender gave up: {}",
                crate::console::escape_bounded(&why, crate::console::REASON_LIMIT)
            )),
            Ok(frame) => Ok(frame),
            Err(error) => Err(error.to_string()),
        }
    }

    fn send(&mut self, frame: &Frame) -> Result<(), String> {
        write_frame(&mut self.writer, frame).map_err(|error: ProtocolError| error.to_string())
    }

    fn serve(&mut self) -> Result<(), String> {
        // First the sender proves it knows the secret (a fresh challenge
        // each time: an answer overheard is worth nothing next time).
        let challenge = secret::challenge().map_err(|error| format!("no random numbers for a challenge: {error}"))?;
        self.send(&Frame::Challenge(challenge))?;
        match self.read()? {
            Frame::Proof(proof) if secret::accepts(self.secret.as_deref(), &challenge, &proof) => {}
            Frame::Proof(_) => {
                let why = "the sender does not know this receiver's secret: give both the same --migrate-secret FILE";
                self.send(&Frame::Refuse(why.into()))?;
                return Err(why.into());
            }
            other => return Err(format!("it began with {} instead of a Proof", other.name())),
        }
        let (name, memory_size) = match self.read()? {
            Frame::Hello { version, .. } if version != VERSION => {
                let why = format!(
                    "the sender speaks migration protocol version {version}, this receiver version {VERSION}: \
                     run the same matrix-tui on both sides"
                );
                self.send(&Frame::Refuse(why.clone()))?;
                return Err(why);
            }
            Frame::Hello { name, memory_size, .. } => (name, memory_size),
            other => return Err(format!("it began with {} instead of Hello", other.name())),
        };
        let refusal = crate::scenario::check_vm_name(&name)
            .err()
            .or_else(|| crate::vm::memory::check_size(memory_size).err().map(|error| error.to_string()))
            .or_else(|| {
                (memory_size > self.max_memory)
                    .then(|| format!("{} MiB is more memory than this run takes", memory_size >> 20))
            });
        // The core knows the VMs here (their names, number and memory) and
        // makes the VM now, blank, so that making it costs the sender's
        // final pause nothing.
        let arrival = match refusal {
            Some(why) => Err(why),
            None => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                let from = self.peer.clone();
                self.core.send(Internal::PrepareArrival { name: name.clone(), memory_size, from, reply: Reply(reply) });
                answer.recv_timeout(PEER_TIMEOUT).unwrap_or_else(|_| Err("this run did not answer in time".into()))
            }
        };
        let (vm, memory) = match arrival {
            Ok(made) => made,
            Err(why) => {
                let why = crate::console::escape_input(&why);
                self.send(&Frame::Refuse(why.clone()))?;
                return Err(why);
            }
        };
        {
            // Ids are places in the run: the name goes at the VM's own.
            let mut names = self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if names.len() <= vm {
                names.resize(vm + 1, String::new());
            }
            names[vm] = name.clone();
        }
        // The hand-over's table says what an end means here: before Ready
        // the sender has no Go to send and runs the VM on (this copy goes);
        // after, an Abandon says the same, while silence or a broken link may
        // mean either, so the VM is held as an orphan.
        let mut phase = Arriving::Blank;
        let received = self.receive(vm, &name, memory_size, &memory.0);
        drop(memory);
        if let Err(why) = received {
            return Err(self.ended(vm, phase, ReceiverEvent::Failed, why));
        }
        phase = handover::receiver_on(phase, ReceiverEvent::StateTaken);
        if let Err(why) = self.send(&Frame::Ready) {
            return Err(self.ended(vm, phase, ReceiverEvent::Failed, why));
        }
        phase = handover::receiver_on(phase, ReceiverEvent::ReadyWritten);
        let (last_slice_ns, paused) = match read_frame(&mut self.reader) {
            Ok(Frame::Go { last_slice_ns, paused }) => (last_slice_ns, paused),
            Ok(Frame::Abandon(why)) => {
                let why = format!("the sender called the move off after Ready: {}", escape_input(&why));
                return Err(self.ended(vm, phase, ReceiverEvent::SenderGaveUp, why));
            }
            Ok(other) => {
                let why = format!("a {} frame instead of Go", other.name());
                return Err(self.ended(vm, phase, ReceiverEvent::Failed, why));
            }
            Err(error) => return Err(self.ended(vm, phase, ReceiverEvent::Failed, error.to_string())),
        };
        debug_assert_eq!(handover::receiver_on(phase, ReceiverEvent::Go), Arriving::HandedOver);
        let (report, started) = crossbeam_channel::bounded(1);
        self.core.send(Internal::StartIncoming { vm, last_slice_ns, paused, report: Reply(report) });
        if let Ok(downtime_ns) = started.recv_timeout(PEER_TIMEOUT) {
            let _ = self.send(&Frame::Started { downtime_ns });
        }
        Ok(())
    }

    /// Accepts the pages, written straight into the arriving VM's `memory`
    /// (it runs nowhere here, so nothing else touches it), then its state,
    /// checked as a snapshot file's, which the core gives the VM.
    fn receive(&mut self, vm: VmId, name: &str, memory_size: u64, memory: &GuestMemory) -> Result<(), String> {
        self.send(&Frame::Accept)?;
        self.core.send(Internal::Notice(format!(
            "incoming migration from {}: VM '{name}', {} MiB",
            self.peer,
            memory_size >> 20
        )));
        let page_count = memory_size / PAGE_SIZE as u64;
        let (mut rounds, mut received) = (0u32, 0u64);
        let json = loop {
            match self.read()? {
                Frame::Pages { round, pages } => {
                    if pages.len() > MAX_PAGES_PER_FRAME {
                        return Err("a Pages frame with too many pages".into());
                    }
                    for (index, page) in &pages {
                        if *index >= page_count {
                            return Err(format!("page {index} is past the end of its {page_count} pages"));
                        }
                        memory
                            .write_slice(page, GuestAddress(index * PAGE_SIZE as u64))
                            .map_err(|error| format!("page {index} could not be written: {error}"))?;
                    }
                    rounds = rounds.max(round + 1);
                    received += pages.len() as u64;
                    self.send(&Frame::Ack { bytes: (pages.len() * PAGE_SIZE) as u64 })?;
                }
                Frame::State(json) => break json,
                other => return Err(format!("a {} frame in the middle of the pages", other.name())),
            }
        };
        let state = Snapshot::checked_state(&json, memory_size).map_err(|error| error.to_string())?;
        let (reply, taken) = crossbeam_channel::bounded(1);
        self.core.send(Internal::ArrivalState {
            vm,
            state: Box::new(state),
            rounds,
            pages: received,
            reply: Reply(reply),
        });
        taken.recv_timeout(PEER_TIMEOUT).unwrap_or_else(|_| Err("this run did not take the VM's state in time".into()))
    }

    /// The move ended in `phase` on `event`: the core drops the VM or holds
    /// it as an orphan, as the hand-over's table says; the reason, for the
    /// notice and the sender.
    fn ended(&self, vm: VmId, phase: Arriving, event: ReceiverEvent, why: String) -> String {
        let dropped = handover::receiver_on(phase, event) == Arriving::Dropped;
        self.core.send(Internal::IncomingOrphaned { vm, why: why.clone(), dropped });
        if dropped {
            format!("{why}; its copy here is dropped")
        } else {
            format!("no Go after Ready ({why}); it is held here as an orphan (adopt NAME takes it)")
        }
    }
}
