//! The gdb remote protocol for one VM, served by gdbstub on threads of its
//! own: `matrix-gdb` accepts connections (one debugger at a time; a second
//! is refused) and runs each session; a reader thread per connection turns
//! the socket into a channel, so that a session waiting for its VM to stop
//! also hears gdb's Ctrl-C. Everything gdb asks goes to the core as a
//! [`DebugRequest`]; nothing here touches KVM. A VM of several vCPUs is a
//! multi-threaded target: vCPU k is gdb's thread k + 1 (`info threads`,
//! `thread N`), and a stop stops them all (all-stop); a VM of one is served
//! single-threaded, as it always was.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason, run_blocking};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps,
};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::{X86_64_SSE, X86_SSE};

use super::layout::{I8086, Layout, RegisterLayout};
use super::read_cap::{self, ReadCap};
use super::{BreakKind, DebugEnd, DebugReply, DebugRequest, DebugStop, ListenAddress, WatchKind};

/// How the server reaches the core: sends a request and kicks the core.
pub type SendRequest = Arc<dyn Fn(DebugRequest) + Send + Sync>;

/// The most memory one gdb read asks of the core at once.
const MAX_READ: usize = 64 * 1024;
/// How long a request waits for the core: it answers within a quantum, so
/// this passing means the run is stuck or over.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound gdb server socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket, removed when the run ends.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `address`. A Unix socket left by an earlier run is replaced;
    /// any other file in the way is an error.
    pub fn bind(address: &ListenAddress) -> std::io::Result<Self> {
        match address {
            ListenAddress::Tcp(address) => Ok(Self::Tcp(TcpListener::bind(address)?)),
            ListenAddress::Unix(path) => {
                crate::os::files::remove_stale_socket(path)?;
                Ok(Self::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The address gdb connects to (with the port chosen, for port 0).
    pub fn address(&self) -> String {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Self::Unix(_, path) => path.display().to_string(),
        }
    }

    /// The socket file to remove when the run ends, if it is one.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Self::Tcp(_) => None,
            Self::Unix(_, path) => Some(path.clone()),
        }
    }

    fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Self::Tcp(listener) => listener.accept().map(|(s, peer)| (Stream::Tcp(s), peer.to_string())),
            Self::Unix(listener, path) => {
                listener.accept().map(|(s, _)| (Stream::Unix(s), format!("{} (local)", path.display())))
            }
        }
    }
}

/// One connection's socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Self> {
        match self {
            Self::Tcp(s) => s.try_clone().map(Self::Tcp),
            Self::Unix(s) => s.try_clone().map(Self::Unix),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
            Self::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => Read::read(s, buf),
            Self::Unix(s) => Read::read(s, buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => Write::write_all(s, buf),
            Self::Unix(s) => Write::write_all(s, buf),
        }
    }
}

/// Starts serving `listener` for one VM of `vcpus` vCPUs, in register
/// layout `layout`: sessions send their requests with `send` and hear the
/// core on `replies`. The thread lives as long as the process (it waits in accept).
pub fn start(
    listener: Listener,
    send: SendRequest,
    replies: Receiver<DebugReply>,
    layout: RegisterLayout,
    vcpus: usize,
) -> std::io::Result<()> {
    let busy = Arc::new(AtomicBool::new(false));
    std::thread::Builder::new().name("matrix-gdb".into()).spawn(move || {
        let mut backoff = crate::os::backoff::AcceptBackoff::default();
        loop {
            let Ok((stream, peer)) = listener.accept() else {
                // Out of descriptors, say: try again a little later rather than spin.
                backoff.wait_after_failure();
                continue;
            };
            backoff.succeeded();
            if busy.swap(true, Ordering::AcqRel) {
                // One debugger at a time: the second hears nothing and is cut off.
                stream.shutdown();
                send(DebugRequest::Refused { peer });
                continue;
            }
            let (send, replies, done) = (Arc::clone(&send), replies.clone(), Arc::clone(&busy));
            let spawned = std::thread::Builder::new().name("matrix-gdb-session".into()).spawn(move || {
                let vm = ServedVm { send, replies, vcpus };
                match layout {
                    RegisterLayout::X86_64 => session::<X86_64_SSE>(stream, peer, vm, false),
                    RegisterLayout::I386 { real: true } => session::<I8086>(stream, peer, vm, true),
                    RegisterLayout::I386 { real: false } => session::<X86_SSE>(stream, peer, vm, false),
                }
                done.store(false, Ordering::Release);
            });
            if spawned.is_err() {
                // The stream went with the closure: it is closed.
                busy.store(false, Ordering::Release);
            }
        }
    })?;
    Ok(())
}

/// The VM a session serves: how to reach the core, and its vCPUs.
struct ServedVm {
    send: SendRequest,
    replies: Receiver<DebugReply>,
    vcpus: usize,
}

/// Serves one debugger until it detaches, kills the VM or goes away.
fn session<L: Layout>(stream: Stream, peer: String, vm: ServedVm, real: bool) {
    let ServedVm { send, replies, vcpus } = vm;
    // Answers meant for an earlier session are of no use to this one.
    while replies.try_recv().is_ok() {}
    let Ok(mut reading) = stream.try_clone() else { return stream.shutdown() };
    let (bytes_tx, bytes_rx) = crossbeam_channel::bounded(64);
    let reader = std::thread::Builder::new().name("matrix-gdb-read".into()).spawn(move || {
        let mut buf = [0u8; 4096];
        let mut cap = ReadCap::default();
        while let Ok(read @ 1..) = reading.read(&mut buf) {
            let mut passed = Vec::with_capacity(read);
            cap.filter(&buf[..read], &mut passed);
            if !passed.is_empty() && bytes_tx.send(passed).is_err() {
                break;
            }
        }
    });
    if reader.is_err() {
        return stream.shutdown();
    }
    let mut target = VmTarget::<L> { send: Arc::clone(&send), replies, real, vcpus, step: None, layout: PhantomData };
    if target.ask(DebugRequest::Attach { peer }).is_err() {
        return stream.shutdown();
    }
    let wire = Wire { out: stream, written: Vec::new(), incoming: bytes_rx, pending: VecDeque::new() };
    let mut closing = wire.out.try_clone();
    // The size the read cap assumes is the size advertised.
    let Ok(stub) = GdbStub::builder(wire).packet_buffer_size(read_cap::PACKET_SIZE).build() else {
        return closing.map_or((), |stream| stream.shutdown());
    };
    let ending = match stub.run_blocking::<Session<L>>(&mut target) {
        Ok(DisconnectReason::Kill) => {
            // gdb waits for an OK to its vKill, which gdbstub sends only in
            // extended mode: give it one, so that `kill` ends cleanly.
            if let Ok(stream) = &mut closing {
                let _ = stream.write_all(b"$OK#9a");
            }
            DebugRequest::Kill
        }
        Ok(DisconnectReason::Disconnect) => DebugRequest::Detach { reason: None },
        // gdb heard the VM end (a halt, a crash, a restart): it has nothing left to debug.
        Ok(_) => DebugRequest::Detach { reason: Some("the VM ended".into()) },
        Err(error) if error.is_connection_error() => {
            DebugRequest::Detach { reason: Some("the connection ended".into()) }
        }
        Err(error) => DebugRequest::Detach { reason: Some(format!("it broke the gdb protocol ({error})")) },
    };
    send(ending);
    if let Ok(stream) = closing {
        stream.shutdown();
    }
}

/// gdbstub's connection: writes are gathered and sent per packet; reads come
/// from the reader thread.
struct Wire {
    out: Stream,
    written: Vec<u8>,
    incoming: Receiver<Vec<u8>>,
    pending: VecDeque<u8>,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the debugger closed the connection")
}

impl Connection for Wire {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.written.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.written.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let written = std::mem::take(&mut self.written);
        self.out.write_all(&written)
    }
}

impl ConnectionExt for Wire {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if self.pending.is_empty() {
            self.pending.extend(self.incoming.recv().map_err(|_| gone())?);
        }
        self.pending.pop_front().ok_or_else(gone)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if self.pending.is_empty() {
            if let Ok(bytes) = self.incoming.try_recv() {
                self.pending.extend(bytes);
            }
        }
        Ok(self.pending.front().copied())
    }
}

/// One VM as gdb sees it, in layout `L`: every question goes to the core.
struct VmTarget<L> {
    send: SendRequest,
    replies: Receiver<DebugReply>,
    /// A real-mode VM: its program counter is shown as CS base + IP.
    real: bool,
    /// Its vCPUs: gdb's threads 1 to `vcpus` when there are several.
    vcpus: usize,
    /// The vCPU the next resume steps, if gdb asked for a step.
    step: Option<usize>,
    layout: PhantomData<fn() -> L>,
}

/// gdb's thread for vCPU `vcpu`.
fn thread_of(vcpu: usize) -> Tid {
    Tid::new(vcpu + 1).expect("one past an index is not zero")
}

/// The vCPU of gdb's thread `tid`.
fn vcpu_of(tid: Tid) -> usize {
    tid.get() - 1
}

/// Why a session cannot go on.
type Fatal = String;

impl<L: Layout> VmTarget<L> {
    fn ask(&mut self, request: DebugRequest) -> Result<DebugReply, Fatal> {
        (self.send)(request);
        self.replies.recv_timeout(REPLY_TIMEOUT).map_err(|_| "the run has ended".to_string())
    }

    fn done(&mut self, request: DebugRequest) -> TargetResult<bool, Self> {
        match self.ask(request).map_err(TargetError::Fatal)? {
            DebugReply::Done(Ok(done)) => Ok(done),
            DebugReply::Done(Err(_)) => Err(TargetError::NonFatal),
            other => Err(TargetError::Fatal(format!("the core answered {other:?}"))),
        }
    }
}

impl<L: Layout> VmTarget<L> {
    fn registers(&mut self, vcpu: usize, regs: &mut L::Registers) -> TargetResult<(), Self> {
        match self.ask(DebugRequest::ReadRegisters { vcpu }).map_err(TargetError::Fatal)? {
            DebugReply::Registers(Ok(state)) => {
                *regs = L::to_gdb(&state, self.real);
                Ok(())
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn set_registers(&mut self, vcpu: usize, regs: &L::Registers) -> TargetResult<(), Self> {
        let state = Box::new(L::from_gdb(regs, self.real));
        self.done(DebugRequest::WriteRegisters { vcpu, state }).map(|_| ())
    }

    fn read_memory(&mut self, vcpu: usize, start: L::Usize, data: &mut [u8]) -> TargetResult<usize, Self> {
        let length = data.len().min(MAX_READ);
        let address = L::widen(start);
        match self.ask(DebugRequest::ReadMemory { vcpu, address, length }).map_err(TargetError::Fatal)? {
            DebugReply::Memory(bytes) if !bytes.is_empty() => {
                data[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            // Unmapped: gdb says "Cannot access memory at address".
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_memory(&mut self, vcpu: usize, start: L::Usize, data: &[u8]) -> TargetResult<(), Self> {
        match self.done(DebugRequest::WriteMemory { vcpu, address: L::widen(start), bytes: data.to_vec() })? {
            true => Ok(()),
            false => Err(TargetError::NonFatal),
        }
    }
}

impl<L: Layout> Target for VmTarget<L> {
    type Arch = L;
    type Error = Fatal;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        if self.vcpus > 1 { BaseOps::MultiThread(self) } else { BaseOps::SingleThread(self) }
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> SingleThreadBase for VmTarget<L> {
    fn read_registers(&mut self, regs: &mut L::Registers) -> TargetResult<(), Self> {
        self.registers(0, regs)
    }

    fn write_registers(&mut self, regs: &L::Registers) -> TargetResult<(), Self> {
        self.set_registers(0, regs)
    }

    fn read_addrs(&mut self, start: L::Usize, data: &mut [u8]) -> TargetResult<usize, Self> {
        self.read_memory(0, start, data)
    }

    fn write_addrs(&mut self, start: L::Usize, data: &[u8]) -> TargetResult<(), Self> {
        self.write_memory(0, start, data)
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> MultiThreadBase for VmTarget<L> {
    fn read_registers(&mut self, regs: &mut L::Registers, tid: Tid) -> TargetResult<(), Self> {
        self.registers(vcpu_of(tid), regs)
    }

    fn write_registers(&mut self, regs: &L::Registers, tid: Tid) -> TargetResult<(), Self> {
        self.set_registers(vcpu_of(tid), regs)
    }

    fn read_addrs(&mut self, start: L::Usize, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        self.read_memory(vcpu_of(tid), start, data)
    }

    fn write_addrs(&mut self, start: L::Usize, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        self.write_memory(vcpu_of(tid), start, data)
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        (0..self.vcpus).for_each(|vcpu| thread_is_active(thread_of(vcpu)));
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> ThreadExtraInfo for VmTarget<L> {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let text = format!("vCPU {}", vcpu_of(tid));
        let length = text.len().min(buf.len());
        buf[..length].copy_from_slice(&text.as_bytes()[..length]);
        Ok(length)
    }
}

impl<L: Layout> MultiThreadResume for VmTarget<L> {
    // All-stop: a continue runs every vCPU; a step runs the stepped
    // thread's vCPU alone (its siblings stay stopped), whatever gdb asked
    // of the others.
    fn resume(&mut self) -> Result<(), Self::Error> {
        let request = match self.step.take() {
            Some(vcpu) => DebugRequest::Step { vcpu },
            None => DebugRequest::Continue,
        };
        (self.send)(request);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.step = None;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, _tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> MultiThreadSchedulerLocking for VmTarget<L> {
    // gdb steps a thread over a breakpoint with the others held: a step
    // here always holds them.
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl<L: Layout> MultiThreadSingleStep for VmTarget<L> {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.step = Some(vcpu_of(tid));
        Ok(())
    }
}

impl<L: Layout> SingleThreadResume for VmTarget<L> {
    // Signals mean nothing to a guest here; continuing with one is continuing.
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        (self.send)(DebugRequest::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> SingleThreadSingleStep for VmTarget<L> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        (self.send)(DebugRequest::Step { vcpu: 0 });
        Ok(())
    }
}

impl<L: Layout> Breakpoints for VmTarget<L> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> SwBreakpoint for VmTarget<L> {
    fn add_sw_breakpoint(&mut self, address: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        self.done(DebugRequest::Breakpoint { kind: BreakKind::Software, address: L::widen(address), insert: true })
    }

    fn remove_sw_breakpoint(&mut self, address: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        self.done(DebugRequest::Breakpoint { kind: BreakKind::Software, address: L::widen(address), insert: false })
    }
}

impl<L: Layout> HwBreakpoint for VmTarget<L> {
    fn add_hw_breakpoint(&mut self, address: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        self.done(DebugRequest::Breakpoint { kind: BreakKind::Hardware, address: L::widen(address), insert: true })
    }

    fn remove_hw_breakpoint(&mut self, address: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        self.done(DebugRequest::Breakpoint { kind: BreakKind::Hardware, address: L::widen(address), insert: false })
    }
}

fn watch_kind(kind: gdbstub::target::ext::breakpoints::WatchKind) -> WatchKind {
    use gdbstub::target::ext::breakpoints::WatchKind as Gdb;
    match kind {
        Gdb::Write => WatchKind::Write,
        Gdb::Read => WatchKind::Read,
        Gdb::ReadWrite => WatchKind::Access,
    }
}

impl<L: Layout> HwWatchpoint for VmTarget<L> {
    fn add_hw_watchpoint(
        &mut self,
        address: L::Usize,
        length: L::Usize,
        kind: gdbstub::target::ext::breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        let (address, length) = (L::widen(address), L::widen(length));
        self.done(DebugRequest::Watchpoint { kind: watch_kind(kind), address, length, insert: true })
    }

    fn remove_hw_watchpoint(
        &mut self,
        address: L::Usize,
        length: L::Usize,
        kind: gdbstub::target::ext::breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        let (address, length) = (L::widen(address), L::widen(length));
        self.done(DebugRequest::Watchpoint { kind: watch_kind(kind), address, length, insert: false })
    }
}

/// How a session waits while its VM runs: for the core's stop, or for gdb
/// (a Ctrl-C, or a packet).
struct Session<L>(PhantomData<fn() -> L>);

impl<L: Layout> run_blocking::BlockingEventLoop for Session<L> {
    type Target = VmTarget<L>;
    type Connection = Wire;
    type StopReason = MultiThreadStopReason<L::Usize>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        target: &mut VmTarget<L>,
        conn: &mut Wire,
    ) -> Result<run_blocking::Event<Self::StopReason>, run_blocking::WaitForStopReasonError<Fatal, std::io::Error>>
    {
        use run_blocking::{Event, WaitForStopReasonError as Failed};
        loop {
            if let Some(byte) = conn.pending.pop_front() {
                return Ok(Event::IncomingData(byte));
            }
            select! {
                recv(conn.incoming) -> bytes => conn.pending.extend(bytes.map_err(|_| Failed::Connection(gone()))?),
                recv(target.replies) -> reply => match reply {
                    Ok(DebugReply::Stopped { stop, vcpu }) => {
                        let on = (target.vcpus > 1).then(|| thread_of(vcpu));
                        return Ok(Event::TargetStopped(stop_reason::<L>(stop, on)));
                    }
                    Ok(DebugReply::Ended(end)) => return Ok(Event::TargetStopped(end_reason(end))),
                    // Late answers to something else: not what is waited for.
                    Ok(_) => {}
                    Err(_) => return Err(Failed::Target("the run has ended".into())),
                },
            }
        }
    }

    fn on_interrupt(target: &mut VmTarget<L>) -> Result<Option<Self::StopReason>, Fatal> {
        // The core stops the VM and answers with the stop, which the wait above hears.
        (target.send)(DebugRequest::Interrupt);
        Ok(None)
    }
}

/// What gdb hears of `stop`: on thread `on` for a VM of several vCPUs (the
/// one that stopped; gdb switches to it), else as a single-threaded target's.
fn stop_reason<L: Layout>(stop: DebugStop, on: Option<Tid>) -> MultiThreadStopReason<L::Usize> {
    let tid = on.unwrap_or(Tid::new(1).expect("not zero"));
    let signal = |signal| match on {
        Some(tid) => MultiThreadStopReason::SignalWithThread { tid, signal },
        None => MultiThreadStopReason::Signal(signal),
    };
    match stop {
        DebugStop::Breakpoint { .. } => MultiThreadStopReason::SwBreak(tid),
        // A step's stop names its thread where there are several (a T
        // packet): gdb would otherwise take the first thread for it.
        DebugStop::Step if on.is_some() => signal(Signal::SIGTRAP),
        DebugStop::Step => MultiThreadStopReason::DoneStep,
        DebugStop::Watchpoint { address, kind } => {
            use gdbstub::target::ext::breakpoints::WatchKind as Gdb;
            let kind = match kind {
                WatchKind::Write => Gdb::Write,
                WatchKind::Read => Gdb::Read,
                WatchKind::Access => Gdb::ReadWrite,
            };
            MultiThreadStopReason::Watch { tid, kind, addr: L::narrow(address) }
        }
        DebugStop::Interrupt => signal(Signal::SIGINT),
        DebugStop::Crashed => signal(Signal::SIGSEGV),
        // Stopped at the end, so that gdb can still look, or detach; the
        // next continue hears that it exited.
        DebugStop::Halted => signal(Signal::SIGTRAP),
        DebugStop::Waiting => signal(Signal::SIGTRAP),
    }
}

fn end_reason<U>(end: DebugEnd) -> MultiThreadStopReason<U> {
    match end {
        DebugEnd::Halted => MultiThreadStopReason::Exited(0),
        DebugEnd::Crashed => MultiThreadStopReason::Terminated(Signal::SIGSEGV),
        DebugEnd::Killed => MultiThreadStopReason::Terminated(Signal::SIGKILL),
    }
}

/// Sends each request on `commands` (as a message of the core's helper
/// threads) and kicks the core out of KVM_RUN to read it.
pub(crate) fn request_sender(
    vm: usize,
    commands: Sender<crate::event::Message>,
    kick: Arc<crate::vm::KickTarget>,
) -> SendRequest {
    Arc::new(move |request| {
        let _ = commands.send(crate::event::Message::Internal(crate::event::Internal::Debug { vm, request }));
        kick.request();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_are_told_to_gdb_as_signals_and_exits() {
        assert_eq!(
            stop_reason::<X86_64_SSE>(DebugStop::Interrupt, None),
            MultiThreadStopReason::Signal(Signal::SIGINT)
        );
        assert_eq!(stop_reason::<X86_SSE>(DebugStop::Step, None), MultiThreadStopReason::DoneStep);
        assert_eq!(end_reason::<u64>(DebugEnd::Halted), MultiThreadStopReason::Exited(0));
        assert_eq!(end_reason::<u32>(DebugEnd::Killed), MultiThreadStopReason::Terminated(Signal::SIGKILL));
    }

    #[test]
    fn a_vm_of_several_vcpus_says_which_thread_stopped() {
        let second = thread_of(1);
        assert_eq!(vcpu_of(second), 1);
        let at = DebugStop::Breakpoint { address: 0x1000 };
        assert_eq!(stop_reason::<X86_64_SSE>(at, Some(second)), MultiThreadStopReason::SwBreak(second));
        assert_eq!(
            stop_reason::<X86_64_SSE>(DebugStop::Interrupt, Some(second)),
            MultiThreadStopReason::SignalWithThread { tid: second, signal: Signal::SIGINT }
        );
        assert_eq!(
            stop_reason::<X86_64_SSE>(DebugStop::Step, Some(second)),
            MultiThreadStopReason::SignalWithThread { tid: second, signal: Signal::SIGTRAP }
        );
    }
}
