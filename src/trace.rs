//! The exit trace (`run --trace FILE`): every exit and every slice as JSON
//! Lines, written by a thread of its own (`matrix-trace`). The core only
//! hands over batches of records through a bounded channel and never waits:
//! when the writer falls behind (a slow disk), whole batches are dropped and
//! counted, and the count is the last line of the file and in the report.
//!
//! The lines (times are ns since the run started, the core's clock):
//!
//! ```text
//! {"type":"start","vms":["part1"],"clock":"ns since the run started"}
//! {"type":"exit","t_ns":..,"vm":"part1","n":1,"kind":"io_out","port":233,"size":1,"value":72,
//!  "hypercall":"HC_print8bit","text":"H","rip":..,"handling_ns":..,"decoded":"io_out 0xe9 HC_print8bit('H')"}
//! {"type":"slice","vm":"part1","start_ns":..,"end_ns":..,"charged_ns":..,"end":"halt","exits":29}
//! {"type":"round","vm":"t","t_ns":..,"round":0,"pages_sent":7,"pages_dirtied":1,"ms":1.9,...}
//! {"type":"end","records":31,"dropped":0}
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::os::files::{self, FileError};
use crate::os::line_file::LineFile;
use crate::os::stream::WriterThread;
use crate::record::{ExitKind, ExitRecord, SliceEnd, SliceRecord, Snippet};

/// Records per batch: big enough that a batch costs the core one channel
/// send per few milliseconds, small enough that a dropped one loses little.
const BATCH: usize = 2048;
/// Batches in flight: about 130,000 records, a second or more of the
/// busiest guest, before the writer's lag costs records.
const BATCHES_IN_FLIGHT: usize = 64;

/// One record of the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceRecord {
    /// A guest exit.
    Exit(ExitRecord),
    /// A slice.
    Slice(SliceRecord),
    /// A VM moved from one core to another (`--cpus` over 1).
    Moved {
        /// The VM.
        vm: usize,
        /// When (ns since the run started).
        t_ns: u64,
        /// The core it left.
        from: u16,
        /// The core it went to.
        to: u16,
    },
    /// A quantum ended on a vCPU whose lock record said it held a lock or
    /// waited for one (the guest shares its lock records).
    LockPreempted {
        /// The VM.
        vm: usize,
        /// The vCPU.
        vcpu: u16,
        /// When (ns since the run started).
        t_ns: u64,
        /// True for a holder, false for a waiter.
        holder: bool,
    },
    /// A pre-copy round of a VM moving out ended.
    Round {
        /// The VM.
        vm: usize,
        /// When (ns since the run started).
        t_ns: u64,
        /// The round.
        round: crate::report::RoundReport,
    },
}

enum Message {
    Records(Vec<TraceRecord>),
    End { records: u64, dropped: u64 },
}

/// How many records a trace got and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TraceCounts {
    /// Records handed to the writer.
    pub records: u64,
    /// Records dropped because the writer was behind.
    pub dropped: u64,
}

/// The core's end of a trace: collects records and sends them in batches.
pub struct TraceBuffer {
    batch: Vec<TraceRecord>,
    sender: Sender<Message>,
    counts: TraceCounts,
}

impl TraceBuffer {
    /// Another core's end of the same trace (the writer waits for each
    /// end's finish).
    pub fn sibling(&self) -> Self {
        Self { batch: Vec::with_capacity(BATCH), sender: self.sender.clone(), counts: TraceCounts::default() }
    }

    /// Adds a record; sends the batch when it is full.
    pub fn push(&mut self, record: TraceRecord) {
        self.batch.push(record);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Sends what is collected, or drops and counts it if the writer is behind.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let count = batch.len() as u64;
        match self.sender.try_send(Message::Records(batch)) {
            Ok(()) => self.counts.records += count,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.counts.dropped += count,
        }
    }

    /// Sends the rest and the final counts, waiting at most
    /// [`FINISH_LIMIT`] for room (a writer stuck on a reader that does not
    /// read must not hold up the run's end).
    pub fn finish(mut self) -> TraceCounts {
        let batch = std::mem::take(&mut self.batch);
        let count = batch.len() as u64;
        let deadline = Instant::now() + FINISH_LIMIT;
        match self.sender.send_deadline(Message::Records(batch), deadline) {
            Ok(()) => self.counts.records += count,
            Err(_) => self.counts.dropped += count,
        }
        let end = Message::End { records: self.counts.records, dropped: self.counts.dropped };
        let _ = self.sender.send_deadline(end, deadline);
        self.counts
    }
}

/// How long the end of a run waits for the trace: to hand over the last
/// batch, then for the writer to finish. A disk takes milliseconds; a
/// reader that stopped reading never finishes.
pub const FINISH_LIMIT: Duration = Duration::from_secs(1);

/// What the writer managed.
#[derive(Debug, Default)]
struct Progress {
    /// Records in the file.
    written: AtomicU64,
    /// The failed write, if one failed.
    error: Mutex<Option<String>>,
}

/// How the trace file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEnd {
    /// Records in the file.
    pub written: u64,
    /// Why the file is incomplete, if it is.
    pub error: Option<String>,
}

/// The writer thread, to wait for at the end.
pub struct TraceWriter {
    thread: WriterThread,
    progress: Arc<Progress>,
}

impl TraceWriter {
    /// Waits at most [`FINISH_LIMIT`] for the writer to finish; what it wrote.
    pub fn finish(self) -> TraceEnd {
        let finished = self.thread.finish_within(FINISH_LIMIT);
        let written = self.progress.written.load(Ordering::Relaxed);
        let mut error = self.progress.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if !finished && error.is_none() {
            error = Some(format!(
                "its reader did not take the rest within {} s (a FIFO or pipe that is not read)",
                FINISH_LIMIT.as_secs()
            ));
        }
        TraceEnd { written, error }
    }
}

/// Why a trace could not start.
#[derive(Debug)]
pub enum StartError {
    /// The file could not be opened.
    File(FileError),
    /// The writer thread could not be started.
    Thread(std::io::Error),
}

/// Opens `path` (a file, or an existing FIFO with its reader) and starts
/// the writer for a run of VMs called `names`.
/// With `cores` over 1, the trace has `cores` ends (one per core, made with
/// [`TraceBuffer::sibling`]): each core's records come in its own batches,
/// slices say their core, and the end line comes when every core has finished.
pub fn start(path: &Path, names: Vec<String>, cores: usize) -> Result<(TraceBuffer, TraceWriter), StartError> {
    let file = files::open_stream(path).map_err(StartError::File)?;
    let (sender, receiver) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT);
    let progress = Arc::new(Progress::default());
    let theirs = Arc::clone(&progress);
    let thread = WriterThread::spawn("matrix-trace", move || {
        if let Err(error) = write_all(LineFile::new(file), &names, cores.max(1), &receiver, &theirs.written) {
            *theirs.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
        }
    })
    .map_err(StartError::Thread)?;
    let buffer = TraceBuffer { batch: Vec::with_capacity(BATCH), sender, counts: TraceCounts::default() };
    Ok((buffer, TraceWriter { thread, progress }))
}

/// Writes the file; `written` follows the records in it (the start and end
/// lines are not records).
fn write_all(
    mut out: LineFile,
    names: &[String],
    cores: usize,
    receiver: &Receiver<Message>,
    written: &AtomicU64,
) -> std::io::Result<()> {
    out.line(|out| {
        let start =
            Start { kind: "start", vms: names, clock: "ns since the run started", cores: (cores > 1).then_some(cores) };
        serde_json::to_writer(out, &start).map_err(Into::into)
    })?;
    let (mut ends, mut all_records, mut all_dropped) = (0, 0, 0);
    for message in receiver {
        match message {
            Message::Records(records) => {
                for record in records {
                    out.line(|line| write_record(line, names, cores, &record))?;
                }
                // The start line is not a record.
                out.flush()?;
                written.store(out.written_lines().saturating_sub(1), Ordering::Relaxed);
            }
            Message::End { records, dropped } => {
                (ends, all_records, all_dropped) = (ends + 1, all_records + records, all_dropped + dropped);
                if ends < cores {
                    continue;
                }
                let end = End { kind: "end", records: all_records, dropped: all_dropped };
                out.line(|out| serde_json::to_writer(out, &end).map_err(Into::into))?;
                break;
            }
        }
    }
    out.flush()
}

/// Writes one record as JSON (without its newline).
/// One record as a JSON line; `cores` over 1 adds each slice's core.
pub fn write_record(out: &mut impl Write, names: &[String], cores: usize, record: &TraceRecord) -> std::io::Result<()> {
    let name = |vm: usize| names.get(vm).map_or("?", String::as_str);
    match record {
        TraceRecord::Exit(exit) => {
            let io = matches!(exit.kind, ExitKind::IoIn | ExitKind::IoOut);
            let call = &exit.call;
            serde_json::to_writer(
                &mut *out,
                &ExitLine {
                    kind: "exit",
                    t_ns: exit.t_ns,
                    vm: name(exit.vm),
                    vcpu: exit.vcpu,
                    n: exit.number,
                    exit: exit.kind,
                    port: io.then_some(exit.port),
                    size: io.then_some(exit.size),
                    value: (exit.kind == ExitKind::IoOut).then_some(exit.value),
                    address: (exit.kind == ExitKind::Mmio).then_some(exit.address),
                    hypercall: call.hypercall.map(|hypercall| hypercall.name()),
                    result: call.result,
                    text: (!call.text.is_empty()).then_some(call.text),
                    refused: call.refused,
                    rip: exit.rip,
                    handling_ns: exit.handling_ns,
                    decoded: exit.describe(),
                },
            )
            .map_err(std::io::Error::from)
        }
        TraceRecord::Moved { vm, t_ns, from, to } => serde_json::to_writer(
            &mut *out,
            &MovedLine { kind: "moved", vm: name(*vm), t_ns: *t_ns, from: *from, to: *to },
        )
        .map_err(std::io::Error::from),
        TraceRecord::LockPreempted { vm, vcpu, t_ns, holder } => serde_json::to_writer(
            &mut *out,
            &LockLine {
                kind: if *holder { "holder_preempted" } else { "waiter_preempted" },
                vm: name(*vm),
                vcpu: *vcpu,
                t_ns: *t_ns,
            },
        )
        .map_err(std::io::Error::from),
        TraceRecord::Round { vm, t_ns, round } => {
            serde_json::to_writer(&mut *out, &RoundLine { kind: "round", vm: name(*vm), t_ns: *t_ns, round: *round })
                .map_err(std::io::Error::from)
        }
        TraceRecord::Slice(slice) => serde_json::to_writer(
            &mut *out,
            &SliceLine {
                kind: "slice",
                vm: name(slice.vm),
                vcpu: slice.vcpu,
                start_ns: slice.start_ns,
                end_ns: slice.end_ns,
                charged_ns: slice.charged_ns,
                end: slice.end,
                exits: slice.exits,
                injected: slice.injected,
                core: (cores > 1).then_some(slice.core),
                spin_pct: slice.spin_pct,
            },
        )
        .map_err(std::io::Error::from),
    }
}

#[derive(Serialize)]
struct Start<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vms: &'a [String],
    clock: &'static str,
    /// Only with several cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    cores: Option<usize>,
}

#[derive(Serialize)]
struct End {
    #[serde(rename = "type")]
    kind: &'static str,
    records: u64,
    dropped: u64,
}

#[derive(Serialize)]
struct ExitLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    t_ns: u64,
    vm: &'a str,
    /// Only for vCPUs past the first: older traces stay as they were.
    #[serde(skip_serializing_if = "is_zero_u16")]
    vcpu: u16,
    n: u64,
    #[serde(rename = "kind")]
    exit: ExitKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hypercall: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Snippet>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    refused: bool,
    rip: u64,
    handling_ns: u32,
    decoded: String,
}

#[derive(Serialize)]
struct LockLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vm: &'a str,
    vcpu: u16,
    t_ns: u64,
}

#[derive(Serialize)]
struct RoundLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vm: &'a str,
    t_ns: u64,
    #[serde(flatten)]
    round: crate::report::RoundReport,
}

#[derive(Serialize)]
struct SliceLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vm: &'a str,
    #[serde(skip_serializing_if = "is_zero_u16")]
    vcpu: u16,
    start_ns: u64,
    end_ns: u64,
    charged_ns: u64,
    end: SliceEnd,
    exits: u32,
    /// Only on slices that had a tick injected: older traces stay as they were.
    #[serde(skip_serializing_if = "is_zero")]
    injected: u32,
    /// Only with several cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    core: Option<u16>,
    /// Only for a guest that shares its lock records.
    #[serde(skip_serializing_if = "Option::is_none")]
    spin_pct: Option<u8>,
}

#[derive(Serialize)]
struct MovedLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vm: &'a str,
    t_ns: u64,
    from: u16,
    to: u16,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u16(value: &u16) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::Hypercall;
    use crate::record::CallRecord;

    fn exit(t_ns: u64) -> TraceRecord {
        TraceRecord::Exit(ExitRecord {
            t_ns,
            vm: 0,
            vcpu: 0,
            number: 1,
            kind: ExitKind::IoOut,
            port: 0xe9,
            size: 1,
            value: 0x48,
            address: 0,
            call: CallRecord { hypercall: Some(Hypercall::Print8), text: Snippet::new(b"H"), ..Default::default() },
            rip: 0x10012,
            handling_ns: 900,
        })
    }

    #[test]
    fn records_are_json_lines() {
        let mut out = Vec::new();
        let names = vec!["part1".to_string()];
        write_record(&mut out, &names, 1, &exit(5)).unwrap();
        out.push(b'\n');
        let slice = SliceRecord {
            vm: 0,
            vcpu: 0,
            start_ns: 1,
            end_ns: 9,
            charged_ns: 7,
            end: SliceEnd::IoSwitch,
            exits: 1,
            injected: 0,
            core: 0,
            spin_pct: None,
        };
        write_record(&mut out, &names, 1, &TraceRecord::Slice(slice)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines[0]["type"], "exit");
        assert_eq!(lines[0]["kind"], "io_out");
        assert_eq!(lines[0]["hypercall"], "HC_print8bit");
        assert_eq!(lines[0]["text"], "H");
        assert_eq!((lines[0]["port"].as_u64(), lines[0]["value"].as_u64()), (Some(0xe9), Some(0x48)));
        assert!(lines[0].get("refused").is_none() && lines[0].get("address").is_none());
        assert_eq!(lines[0]["decoded"], "io_out 0xe9 HC_print8bit('H')");
        assert_eq!(lines[1]["type"], "slice");
        assert_eq!(lines[1]["end"], "io_switch");
        assert_eq!(lines[1]["charged_ns"], 7);
    }

    #[test]
    fn a_writer_that_is_behind_costs_records_not_time() {
        // Nobody reads: the channel fills, then whole batches are dropped.
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let mut buffer = TraceBuffer { batch: Vec::new(), sender, counts: TraceCounts::default() };
        for t in 0..(3 * BATCH as u64) {
            buffer.push(exit(t));
        }
        assert_eq!(buffer.counts, TraceCounts { records: BATCH as u64, dropped: 2 * BATCH as u64 });
        drop(receiver);
        assert_eq!(buffer.finish().dropped, 2 * BATCH as u64);
    }

    #[test]
    fn the_file_starts_and_ends_with_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let (mut buffer, writer) = start(&path, vec!["a".into()], 1).unwrap();
        buffer.push(exit(1));
        buffer.flush();
        buffer.push(exit(2));
        assert_eq!(buffer.finish(), TraceCounts { records: 2, dropped: 0 });
        assert_eq!(writer.finish(), TraceEnd { written: 2, error: None });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with(r#"{"type":"start","vms":["a"]"#), "{}", lines[0]);
        assert_eq!(lines[3], r#"{"type":"end","records":2,"dropped":0}"#);
    }
}
