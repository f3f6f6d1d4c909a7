//! A writer that never holds up the thread that uses it: chunks of whole
//! lines go through a bounded queue to a thread of their own, which writes
//! them to stdout (or any stream). A reader that stops reading fills the
//! queue; further chunks are dropped and their lines counted, and at the end
//! the writer gets a bounded time to finish before what is left is counted
//! as not written. A failed write (a closed pipe, a full disk) is kept and
//! reported; nothing more is written after it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::line_file::count_lines;

/// Chunks in flight: the headless front end sends one per event at most,
/// so this is a second or more of a busy run's console.
const QUEUE: usize = 256;

/// What a stream writer shares with its thread.
#[derive(Default)]
struct Shared {
    written_lines: AtomicU64,
    error: Mutex<Option<(io::ErrorKind, String)>>,
}

/// A thread that writes for the run, which the run's end waits for only so
/// long: a writer blocked on a reader that does not read is left to the
/// process's exit. Shared by stdout's writer and the trace's.
pub struct WriterThread {
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

impl WriterThread {
    /// Starts `work` on a thread called `name`.
    pub fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<Self> {
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            work();
            let _ = done_tx.send(());
        })?;
        Ok(Self { thread, done })
    }

    /// Waits at most `limit` for the work to end; whether it did.
    pub fn finish_within(self, limit: Duration) -> bool {
        let finished = self.done.recv_timeout(limit).is_ok();
        if finished {
            let _ = self.thread.join();
        }
        finished
    }
}

/// The writing end (see the module's doc).
pub struct StreamWriter {
    sender: Sender<Vec<u8>>,
    shared: Arc<Shared>,
    thread: WriterThread,
    sent_lines: u64,
    dropped_lines: u64,
}

/// How a stream ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// Lines written.
    pub written_lines: u64,
    /// Lines dropped because the reader was not reading, or not written
    /// before the end's time limit.
    pub dropped_lines: u64,
    /// The write that failed, if one did.
    pub error: Option<String>,
}

impl StreamEnd {
    /// Whether every line was written.
    pub fn complete(&self) -> bool {
        self.dropped_lines == 0 && self.error.is_none()
    }
}

impl StreamWriter {
    /// Starts a thread called `name` writing to `out`.
    pub fn spawn(name: &str, mut out: impl Write + Send + 'static) -> io::Result<Self> {
        let (sender, receiver) = crossbeam_channel::bounded::<Vec<u8>>(QUEUE);
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = WriterThread::spawn(name, move || {
            for chunk in receiver {
                if let Err(error) = out.write_all(&chunk).and_then(|()| out.flush()) {
                    *theirs.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some((error.kind(), error.to_string()));
                    break;
                }
                theirs.written_lines.fetch_add(count_lines(&chunk), Ordering::Relaxed);
            }
        })?;
        Ok(Self { sender, shared, thread, sent_lines: 0, dropped_lines: 0 })
    }

    /// Queues `chunk` (whole lines), or drops and counts it if the queue is
    /// full. Never waits.
    pub fn send(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        let lines = count_lines(&chunk);
        match self.sender.try_send(chunk) {
            Ok(()) => self.sent_lines += lines,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped_lines += lines,
        }
    }

    /// Queues `chunk`, waiting until `deadline` for room (for what must not
    /// be dropped lightly, such as the report); counts it as dropped then.
    pub fn send_by(&mut self, chunk: Vec<u8>, deadline: Instant) {
        let lines = count_lines(&chunk).max(1);
        match self.sender.send_deadline(chunk, deadline) {
            Ok(()) => self.sent_lines += lines,
            Err(_) => self.dropped_lines += lines,
        }
    }

    /// The error of a failed write, once one failed.
    pub fn error(&self) -> Option<io::Error> {
        let error = self.shared.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        error.as_ref().map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }

    /// Lets the writer finish for at most `limit`; what it has not written
    /// by then is counted as dropped (the thread is left to the process's
    /// exit).
    pub fn finish(self, limit: Duration) -> StreamEnd {
        let Self { sender, shared, thread, sent_lines, dropped_lines } = self;
        drop(sender);
        thread.finish_within(limit);
        let written_lines = shared.written_lines.load(Ordering::Relaxed);
        let error = shared.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take().map(|(_, text)| text);
        StreamEnd { written_lines, dropped_lines: dropped_lines + sent_lines.saturating_sub(written_lines), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until told to go on, as a pipe nobody reads.
    struct Stalled(Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_lines_never_time() {
        let (_never_go_on, stall) = crossbeam_channel::bounded(0);
        let mut stream = StreamWriter::spawn("test-stalled", Stalled(stall)).unwrap();
        let started = Instant::now();
        for n in 0..2 * QUEUE {
            stream.send(format!("line {n}\n").into_bytes());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "sending waited for the reader");
        let end = stream.finish(Duration::from_millis(50));
        assert_eq!(end.written_lines, 0);
        assert_eq!(end.dropped_lines, 2 * QUEUE as u64);
        assert!(!end.complete());
    }

    #[test]
    fn a_failed_write_is_kept_and_lines_after_it_are_not_written() {
        let mut stream = StreamWriter::spawn("test-full", std::fs::File::create("/dev/full").unwrap()).unwrap();
        stream.send(b"one\n".to_vec());
        let end = stream.finish(Duration::from_secs(5));
        assert!(end.error.as_deref().is_some_and(|e| e.contains("No space left")), "{end:?}");
        assert_eq!((end.written_lines, end.dropped_lines), (0, 1));
    }

    #[test]
    fn every_line_is_written_to_a_reader_that_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut stream = StreamWriter::spawn("test-file", std::fs::File::create(&path).unwrap()).unwrap();
        stream.send(b"a\nb\n".to_vec());
        stream.send_by(b"{\"report\":1}\n".to_vec(), Instant::now() + Duration::from_secs(1));
        let end = stream.finish(Duration::from_secs(5));
        assert_eq!(end, StreamEnd { written_lines: 3, dropped_lines: 0, error: None });
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n{\"report\":1}\n");
    }
}
