//! The headless front end: console lines as `NAME| text` (or a JSON report) on
//! stdout, for scripts, CI and anyone without a terminal UI.

use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::console::{ConsolePiece, LineBuffer, NOTE_PREFIX, escape};
use crate::event::{Command, Event, VmId, VmState};
use crate::os::stream::{StreamEnd, StreamWriter};
use crate::record::format_seconds;
use crate::report::RunReport;
use crate::sched::CoreHandle;

/// How the headless front end writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadlessOptions {
    /// Prefix lines with seconds since the start of the run.
    pub timestamps: bool,
    /// Print only the JSON report at the end.
    pub json: bool,
    /// Write guest bytes as they are, control bytes included.
    pub raw: bool,
    /// End the run after this long.
    pub duration: Option<Duration>,
}

/// Writes console lines as they arrive, one prefix per line, stamped (with
/// `--timestamps`) with the time the core saw the exit that completed them.
pub struct LinePrinter<W: Write> {
    out: W,
    names: Vec<String>,
    buffers: Vec<LineBuffer>,
    /// Per VM, when the last byte of its unfinished line was written.
    partial_ns: Vec<u64>,
    options: HeadlessOptions,
}

impl<W: Write> LinePrinter<W> {
    /// A printer for VMs called `names`.
    pub fn new(out: W, names: Vec<String>, options: HeadlessOptions) -> Self {
        let buffers = names.iter().map(|_| LineBuffer::default()).collect();
        let partial_ns = vec![0; names.len()];
        Self { out, names, buffers, partial_ns, options }
    }

    /// Prints the complete lines in `piece`; keeps the rest for later.
    pub fn console(&mut self, piece: ConsolePiece<'_>) -> std::io::Result<()> {
        let ConsolePiece { vm, bytes, line_ns, written_ns, dropped } = piece;
        // Nothing is printed but the report: the lines need not be cut.
        if self.options.json {
            return Ok(());
        }
        if dropped > 0 {
            let at = line_ns.first().copied().unwrap_or(written_ns);
            self.line(vm, at, format!("... {dropped} bytes dropped").as_bytes())?;
        }
        // Lent out while it calls back into `line`.
        let mut buffer = std::mem::take(&mut self.buffers[vm]);
        let mut stamps = line_ns.iter().copied();
        let mut written = Ok(());
        buffer.push(bytes, |line| {
            let at = stamps.next().unwrap_or(written_ns);
            if written.is_ok() {
                written = self.line(vm, at, line);
            }
        });
        self.buffers[vm] = buffer;
        self.partial_ns[vm] = written_ns;
        written
    }

    /// Prints `vm`'s unfinished line, if it has one (when it ends).
    pub fn flush_partial(&mut self, vm: VmId) -> std::io::Result<()> {
        match self.buffers[vm].take_partial() {
            Some(partial) => self.line(vm, self.partial_ns[vm], &partial),
            None => Ok(()),
        }
    }

    /// Prints a line from the hypervisor about `vm` (a step), as it is.
    pub fn note(&mut self, vm: VmId, at_ns: u64, text: &str) -> std::io::Result<()> {
        self.line(vm, at_ns, text.as_bytes())
    }

    fn line(&mut self, vm: VmId, at_ns: u64, text: &[u8]) -> std::io::Result<()> {
        if self.options.json {
            return Ok(());
        }
        if self.options.timestamps {
            write!(self.out, "{} ", format_seconds(at_ns))?;
        }
        write!(self.out, "{}| ", self.names[vm])?;
        if self.options.raw {
            self.out.write_all(text)?;
        } else {
            self.out.write_all(escape(text).as_bytes())?;
        }
        self.out.write_all(b"\n")
    }

    /// Takes a VM that came in (its id is the next one).
    pub fn add_vm(&mut self, name: String) {
        self.names.push(name);
        self.buffers.push(LineBuffer::default());
        self.partial_ns.push(0);
    }

    /// Prints a line that belongs to no VM: `[matrix] text`.
    pub fn notice(&mut self, t_ns: u64, text: &str) -> std::io::Result<()> {
        if self.options.json {
            return Ok(());
        }
        if self.options.timestamps {
            write!(self.out, "{} ", format_seconds(t_ns))?;
        }
        writeln!(self.out, "{NOTE_PREFIX}{}", escape(text.as_bytes()))
    }

    /// Pushes what was written to the terminal or pipe.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// The writer, to take what was printed so far.
    pub fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// How long the output gets to finish writing after the run ended, before
/// what is left is counted as lost: a reader that keeps up takes
/// milliseconds; one that stopped reading never finishes.
pub const OUTPUT_FINISH_LIMIT: Duration = Duration::from_secs(2);

/// What a headless run produced.
pub struct HeadlessEnd {
    /// The core's report.
    pub report: RunReport,
    /// How stdout fared: lines written, dropped, and a failed write.
    pub output: StreamEnd,
    /// Whether the JSON report (with `--json`) was written whole.
    pub report_written: bool,
    /// Snapshots asked for that were not written, and why.
    pub failed_snapshots: Vec<String>,
}

/// The core thread ended without its report: it panicked (its message is
/// on stderr above).
#[derive(Debug, thiserror::Error)]
#[error("the core thread ended without a report: it failed (see the message above); please report it as a bug")]
pub struct CoreLost;

/// Runs the front end until the core finishes. `stop` delivers a signal's
/// number when the user asks to stop (SIGINT, SIGTERM, SIGHUP); `control`
/// carries commands to pass on (`run --control`). Lines go to `out`, a
/// writer thread, so a reader that stops reading costs lines, never the
/// run's end; a failed write (a closed pipe) ends the run early; the report
/// is still returned.
pub fn run(
    core: CoreHandle,
    names: Vec<String>,
    options: HeadlessOptions,
    mut out: StreamWriter,
    stop: &Receiver<libc::c_int>,
    control: &Receiver<Command>,
) -> Result<HeadlessEnd, CoreLost> {
    let mut printer = LinePrinter::new(Vec::new(), names, options);
    let deadline = options.duration.map(|duration| core.started() + duration);
    let never = crossbeam_channel::never();
    let mut quitting = false;
    let mut control_closed = false;
    let mut failed_snapshots = Vec::new();
    let report = loop {
        let timeout = match (deadline, quitting) {
            (Some(deadline), false) => crossbeam_channel::at(deadline),
            _ => never.clone(),
        };
        let never_commands = crossbeam_channel::never();
        let control = if control_closed { &never_commands } else { control };
        let event = select! {
            recv(core.events()) -> event => match event {
                Ok(event) => event,
                Err(_) => return Err(CoreLost),
            },
            recv(timeout) -> _ => {
                core.send(Command::Quit);
                quitting = true;
                continue;
            }
            recv(stop) -> _ => {
                core.send(Command::Quit);
                quitting = true;
                continue;
            }
            recv(control) -> command => {
                match command {
                    Ok(command) => core.send(command),
                    // End of input: nothing more will come.
                    Err(_) => control_closed = true,
                }
                continue;
            }
        };
        // Writing into a Vec cannot fail.
        let _ = match event {
            Event::Console(batch) => batch.pieces().try_for_each(|piece| printer.console(piece)),
            Event::State { vm, state: VmState::Halted { registers, t_ns } } => printer
                .flush_partial(vm)
                .and_then(|()| printer.note(vm, t_ns, &format!("{NOTE_PREFIX}halted: {}", registers.describe()))),
            Event::State { vm, state } if state.is_finished() => printer.flush_partial(vm),
            Event::Added { name, .. } => {
                printer.add_vm(name);
                Ok(())
            }
            Event::Notice { t_ns, text } => printer.notice(t_ns, &text),
            Event::Stepped { vm, t_ns, result, vcpu, .. } => printer.note(vm, t_ns, &result.describe_on(vcpu)),
            Event::Snapshot { vm, t_ns, path, result } => {
                let written = result.and_then(|taken| taken.write(&path));
                let line = written.unwrap_or_else(|error| {
                    let why = format!("snapshot not taken: {error}");
                    failed_snapshots.push(format!("VM '{}': {why}", crate::console::escape_input(&printer.names[vm])));
                    why
                });
                printer.note(vm, t_ns, &format!("{NOTE_PREFIX}{line}"))
            }
            Event::Debugger { vm, t_ns, status } => {
                printer.note(vm, t_ns, &format!("{NOTE_PREFIX}{}", status.describe()))
            }
            Event::State { .. }
            | Event::Round { .. }
            | Event::Sample { .. }
            | Event::Settings(_)
            | Event::Exits { .. }
            | Event::Slices { .. }
            | Event::Setup { .. } => Ok(()),
            Event::Finished(report) => break *report,
        };
        out.send(std::mem::take(printer.out_mut()));
        if out.error().is_some() && !quitting {
            // Nobody reads our output any more: stop the VMs.
            core.send(Command::Quit);
            quitting = true;
        }
    };
    for vm in 0..report.vms.len() {
        let _ = printer.flush_partial(vm);
    }
    out.send(std::mem::take(printer.out_mut()));
    let mut report = report;
    core.finish(&mut report);
    if options.json {
        let mut json = serde_json::to_vec_pretty(&report).expect("a report serializes");
        json.push(b'\n');
        out.send_by(json, Instant::now() + OUTPUT_FINISH_LIMIT);
    }
    let output = out.finish(OUTPUT_FINISH_LIMIT);
    let report_written = !options.json || output.complete();
    Ok(HeadlessEnd { report, output, report_written, failed_snapshots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleBatch;

    fn printer(options: HeadlessOptions) -> LinePrinter<Vec<u8>> {
        LinePrinter::new(Vec::new(), vec!["neo".into(), "morpheus".into()], options)
    }

    /// Prints `bytes` of VM `vm`, their lines all ended at `at_ns`.
    fn print_at(p: &mut LinePrinter<Vec<u8>>, vm: usize, bytes: &[u8], at_ns: u64, dropped: u64) {
        let batch = ConsoleBatch::of(vm, bytes, at_ns, dropped);
        batch.pieces().try_for_each(|piece| p.console(piece)).unwrap();
    }

    fn print(p: &mut LinePrinter<Vec<u8>>, vm: usize, bytes: &[u8], dropped: u64) {
        print_at(p, vm, bytes, 0, dropped);
    }

    #[test]
    fn lines_are_prefixed_and_interleaved_as_they_complete() {
        let mut p = printer(HeadlessOptions::default());
        print(&mut p, 0, b"wake ", 0);
        print(&mut p, 1, b"red pill\n", 0);
        print(&mut p, 0, b"up\n\x1b[2J\n", 0);
        print(&mut p, 1, b"no newline", 0);
        p.flush_partial(1).unwrap();
        print(&mut p, 0, b"x", 7);
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(
            text,
            "morpheus| red pill\nneo| wake up\nneo| \\x1b[2J\nmorpheus| no newline\nneo| ... 7 bytes dropped\n"
        );
    }

    #[test]
    fn raw_mode_passes_bytes_through() {
        let mut p = printer(HeadlessOptions { raw: true, ..Default::default() });
        print(&mut p, 0, b"\x1b[31mred\n", 0);
        assert_eq!(p.into_inner(), b"neo| \x1b[31mred\n");
    }

    #[test]
    fn lines_are_stamped_with_the_time_of_the_exit_that_ended_them() {
        let mut p = printer(HeadlessOptions { timestamps: true, ..Default::default() });
        let two_lines = ConsolePiece {
            vm: 1,
            bytes: b"one\ntwo\nthr",
            line_ns: &[10_166_000, 12_500_999],
            written_ns: 13_000_000,
            dropped: 0,
        };
        p.console(two_lines).unwrap();
        print_at(&mut p, 1, b"ee", 2_000_000_001, 0);
        p.flush_partial(1).unwrap();
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(text, "0.010166 morpheus| one\n0.012500 morpheus| two\n2.000000 morpheus| three\n");
    }
}
