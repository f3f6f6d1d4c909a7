//! The command line: what `matrix-tui` accepts, and turning it into a run.
//!
//! Exit status: 0 when every VM halted or the duration ended (or a stop
//! signal ended the run), 3 when a VM crashed, 4 when output was lost (a
//! write failed: stdout, the report, the trace or the recording), 2 for
//! usage and configuration errors, 1 for host errors, and 128 + the
//! signal's number when a stop signal had to end the process without the
//! run's end (see `os::signals`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Parser, Subcommand};

use crate::console::escape;
use crate::os::signals;
use crate::scenario::ScenarioError;
use crate::sched::{SpawnError, VmSetupError};
use crate::vm::SetupError;

mod bench;
mod guests;
mod lessons;
mod run;
mod run_args;
mod snapshots;

use self::bench::{BenchArgs, run_bench};
use self::guests::GuestsArgs;
use self::lessons::{LessonArgs, list_lessons, run_lesson};
use self::run::{RunArgs, run};
use self::snapshots::{SnapshotArgs, run_snapshot};

/// Run several small VMs on one host thread with a scheduler of its own, and watch them.
#[derive(Debug, Parser)]
#[command(name = "matrix-tui", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

const AFTER_HELP: &str = "With no command, runs the Neo 70 / Morpheus 30 demo.\n\
Examples:\n  matrix-tui run --vm part1 --json\n  matrix-tui run --vm a=ticker:70 --vm b=ticker:30 --duration 5s\n  matrix-tui lesson preemption\n  matrix-tui guests";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run VMs (the Neo/Morpheus demo when no --vm is given).
    Run(Box<RunArgs>),
    /// List the built-in guests (and their work units in time here).
    Guests(GuestsArgs),
    /// List the built-in lessons.
    Lessons,
    /// Follow a lesson: its scenario in the terminal UI with the lesson's
    /// panel (`l` hides it). NAME is a built-in lesson or a lesson file.
    Lesson(LessonArgs),
    /// Look into a snapshot file (`snapshot show FILE`).
    Snapshot(SnapshotArgs),
    /// Measure exit costs, preemption, fairness, overhead, scale and floods on
    /// this machine (about 3 minutes; --quick about 1).
    Bench(BenchArgs),
}

/// A failure, with the exit status it deserves.
#[derive(Debug)]
enum Failure {
    /// The user asked for something that cannot work (status 2).
    Usage(anyhow::Error),
    /// The host could not do it (status 1).
    Host(anyhow::Error),
    /// Output could not be written (status 4).
    Output(anyhow::Error),
}

impl From<SpawnError> for Failure {
    fn from(error: SpawnError) -> Self {
        match error {
            SpawnError::Vm(VmSetupError {
                source: SetupError::Kvm { .. } | SetupError::OutOfFiles { .. } | SetupError::Memory(_),
                ..
            })
            | SpawnError::Timer { .. }
            | SpawnError::Thread { .. }
            | SpawnError::Seccomp(_)
            | SpawnError::DebugProbe(_)
            | SpawnError::Kvm { .. }
            | SpawnError::CoreEnded { .. } => Failure::Host(error.into()),
            SpawnError::Trace { .. } | SpawnError::Gdb { .. } => Failure::Usage(error.into()),
            SpawnError::Vm(_) => Failure::Usage(error.into()),
        }
    }
}

impl From<ScenarioError> for Failure {
    fn from(error: ScenarioError) -> Self {
        Failure::Usage(error.into())
    }
}

/// A thread that starts without the memory for its signal stack panics in
/// std ("failed to allocate an alternative stack"): the process is out of
/// memory, not at fault, so it says that, as a host error (status 1), and
/// names the limit. Other panics go on to the usual hook. The terminal UI's
/// hook, installed later, restores the terminal before this one runs.
fn install_out_of_memory_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|message| message.starts_with("failed to allocate an alternative stack")) {
            // No formatting: there may be no memory for it.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"matrix-tui: cannot start a thread: the process is out of memory (see ulimit -v)\n",
            );
            std::process::exit(1);
        }
        previous(info);
    }));
}

/// Runs the program with these arguments; returns the exit status.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    // First, before any other thread exists: every thread inherits the mask.
    if let Err(error) = signals::install() {
        eprintln!("matrix-tui: {error}");
        return ExitCode::from(1);
    }
    raise_open_file_limit();
    install_out_of_memory_hook();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and version go to stdout as clap writes them; an error
        // echoes the user's words, so it is escaped and bounded.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let text = error.render().to_string();
            let lines: Vec<String> = text.lines().map(|line| bounded(&escape(line.as_bytes()))).collect();
            eprintln!("{}", lines.join("\n"));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Guests(args)) => guests::run_guests(args),
        Some(Command::Lessons) => list_lessons(),
        Some(Command::Lesson(args)) => run_lesson(args),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Bench(args)) => run_bench(args),
        Some(Command::Snapshot(args)) => run_snapshot(args),
        None => run(RunArgs::default()),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(error)) => {
            eprintln!("matrix-tui: {}", describe(&error));
            ExitCode::from(2)
        }
        Err(Failure::Host(error)) => {
            eprintln!("matrix-tui: {}", describe(&error));
            ExitCode::from(1)
        }
        Err(Failure::Output(error)) => {
            eprintln!("matrix-tui: {}", describe(&error));
            ExitCode::from(OUTPUT_LOST)
        }
    }
}

/// The exit status when output was lost.
const OUTPUT_LOST: u8 = 4;

/// Writes `text` to stdout; a failure (a full disk, a closed pipe) is an error.
fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|error| Failure::Output(anyhow!("cannot write to stdout: {error}")))
}

/// The most characters of one line of an error message.
const ERROR_LINE_LIMIT: usize = 400;

/// `line`, cut at [`ERROR_LINE_LIMIT`] characters.
fn bounded(line: &str) -> String {
    match line.char_indices().nth(ERROR_LINE_LIMIT) {
        Some((at, _)) => format!("{}... ({} bytes in all)", &line[..at], line.len()),
        None => line.to_string(),
    }
}

/// The error and its causes, leaving out each cause the text before it
/// already says (most of our errors name their source in their message).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    // A message may quote the user's input: no escape reaches the terminal.
    bounded(&escape(text.as_bytes()).replace('\n', "\\n"))
}

/// Raises the soft limit of open files to the hard one: every VM holds two,
/// and the usual soft limit of 1,024 would stop a run at about 500 VMs.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own, setrlimit only reads
    // it; a failure leaves the limit as it was, which a VM that cannot be
    // created then reports.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The error of a thread that could not be started, with what to do.
fn out_of_threads(what: &str, error: &std::io::Error) -> anyhow::Error {
    anyhow!("cannot start the {what} thread: {error}; the process is out of memory or threads (see ulimit -v and -u)")
}
