//! The headless front end: console lines as `NAME| text` (or a JSON report) on
//! stdout, for scripts, CI and anyone without a terminal UI.

use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::console::{LineBuffer, escape};
use crate::event::{Command, Event, VmId};
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

/// Writes console lines as they arrive, one prefix per line.
pub struct LinePrinter<W: Write> {
    out: W,
    names: Vec<String>,
    buffers: Vec<LineBuffer>,
    options: HeadlessOptions,
    started: Instant,
}

impl<W: Write> LinePrinter<W> {
    /// A printer for VMs called `names`, timing lines from `started`.
    pub fn new(out: W, names: Vec<String>, options: HeadlessOptions, started: Instant) -> Self {
        let buffers = names.iter().map(|_| LineBuffer::default()).collect();
        Self { out, names, buffers, options, started }
    }

    /// Prints the complete lines in `bytes`; keeps the rest for later.
    pub fn console(&mut self, vm: VmId, bytes: &[u8], dropped: u64) -> std::io::Result<()> {
        if dropped > 0 {
            self.line(vm, format!("... {dropped} bytes dropped").as_bytes())?;
        }
        let mut lines = Vec::new();
        self.buffers[vm].push(bytes, |line| lines.push(line.to_vec()));
        for line in lines {
            self.line(vm, &line)?;
        }
        Ok(())
    }

    /// Prints `vm`'s unfinished line, if it has one (when it ends).
    pub fn flush_partial(&mut self, vm: VmId) -> std::io::Result<()> {
        match self.buffers[vm].take_partial() {
            Some(partial) => self.line(vm, &partial),
            None => Ok(()),
        }
    }

    fn line(&mut self, vm: VmId, text: &[u8]) -> std::io::Result<()> {
        if self.options.json {
            return Ok(());
        }
        if self.options.timestamps {
            write!(self.out, "{:.6} ", self.started.elapsed().as_secs_f64())?;
        }
        write!(self.out, "{}| ", self.names[vm])?;
        if self.options.raw {
            self.out.write_all(text)?;
        } else {
            self.out.write_all(escape(text).as_bytes())?;
        }
        self.out.write_all(b"\n")
    }

    /// Pushes what was written to the terminal or pipe.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Runs the front end until the core finishes. `stop` delivers a message when
/// the user asks to stop (SIGINT, SIGTERM); `control` carries commands to pass
/// on (`run --control`). Output errors (a closed pipe) end the run early; the
/// report is still returned.
pub fn run<W: Write>(
    core: CoreHandle,
    names: Vec<String>,
    options: HeadlessOptions,
    out: W,
    stop: &Receiver<()>,
    control: &Receiver<Command>,
) -> RunReport {
    let mut printer = LinePrinter::new(out, names, options, core.started());
    let deadline = options.duration.map(|duration| core.started() + duration);
    let never = crossbeam_channel::never();
    let mut quitting = false;
    let mut control_closed = false;
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
                Err(_) => panic!("the core thread ended without a report"),
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
        let written = match event {
            Event::Console { vm, bytes, dropped } => printer.console(vm, &bytes, dropped),
            Event::State { vm, state } if state.is_finished() => printer.flush_partial(vm),
            Event::State { .. } | Event::Sample { .. } | Event::Settings(_) => Ok(()),
            Event::Finished(report) => break *report,
        };
        if written.and_then(|()| printer.flush()).is_err() && !quitting {
            // Nobody reads our output any more: stop the VMs.
            core.send(Command::Quit);
            quitting = true;
        }
    };
    for vm in 0..report.vms.len() {
        let _ = printer.flush_partial(vm);
    }
    if options.json {
        let mut out = printer.into_inner();
        let _ = serde_json::to_writer_pretty(&mut out, &report);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    } else {
        let _ = printer.flush();
    }
    core.join();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printer(options: HeadlessOptions) -> LinePrinter<Vec<u8>> {
        LinePrinter::new(Vec::new(), vec!["neo".into(), "morpheus".into()], options, Instant::now())
    }

    #[test]
    fn lines_are_prefixed_and_interleaved_as_they_complete() {
        let mut p = printer(HeadlessOptions::default());
        p.console(0, b"wake ", 0).unwrap();
        p.console(1, b"red pill\n", 0).unwrap();
        p.console(0, b"up\n\x1b[2J\n", 0).unwrap();
        p.console(1, b"no newline", 0).unwrap();
        p.flush_partial(1).unwrap();
        p.console(0, b"x", 7).unwrap();
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(
            text,
            "morpheus| red pill\nneo| wake up\nneo| \\x1b[2J\nmorpheus| no newline\nneo| ... 7 bytes dropped\n"
        );
    }

    #[test]
    fn raw_mode_passes_bytes_through() {
        let mut p = printer(HeadlessOptions { raw: true, ..Default::default() });
        p.console(0, b"\x1b[31mred\n", 0).unwrap();
        assert_eq!(p.into_inner(), b"neo| \x1b[31mred\n");
    }

    #[test]
    fn timestamps_have_six_decimals() {
        let mut p = printer(HeadlessOptions { timestamps: true, ..Default::default() });
        p.console(1, b"hi\n", 0).unwrap();
        let text = String::from_utf8(p.into_inner()).unwrap();
        let (stamp, rest) = text.split_once(' ').unwrap();
        assert_eq!(rest, "morpheus| hi\n");
        assert_eq!(stamp.split_once('.').unwrap().1.len(), 6, "{stamp}");
        assert!(stamp.parse::<f64>().unwrap() < 5.0);
    }
}
