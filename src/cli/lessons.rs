//! `matrix-tui lessons` and `matrix-tui lesson NAME`: the built-in lessons,
//! and following one.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::run::{RunArgs, run};
use super::run_args::{VmArg, parse_vm_arg};
use super::{Failure, print_stdout};
use crate::console::escape_input;
use crate::debug::ListenAddress;
use crate::lesson;
use crate::units::parse_duration;

/// Options of `matrix-tui lesson`.
#[derive(Debug, Args)]
pub(super) struct LessonArgs {
    /// A built-in lesson (see `matrix-tui lessons`) or a path to a lesson file.
    #[arg(value_name = "NAME|LESSON.toml")]
    lesson: String,

    /// Add a VM to the lesson's scenario: NAME=GUEST[:WEIGHT] (your own guest,
    /// for `your-guest`), or replace the guest of its VM with that name.
    #[arg(long = "vm", value_name = "NAME=GUEST[:WEIGHT]", value_parser = parse_vm_arg)]
    vms: Vec<VmArg>,

    /// End after this long.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Plain text output instead of the terminal UI (no panel).
    #[arg(long)]
    headless: bool,

    /// Record the session as an asciicast v2 file.
    #[arg(long, value_name = "FILE.cast")]
    record: Option<PathBuf>,

    /// Run without the core thread's seccomp filter.
    #[arg(long)]
    no_seccomp: bool,

    /// Where `M` moves the selected VM, instead of the lesson's own address
    /// (two classes on one machine, each with its receiver).
    #[arg(long, value_name = "ADDR", value_parser = ListenAddress::parse)]
    migrate_to: Option<ListenAddress>,
}

pub(super) fn list_lessons() -> Result<ExitCode, Failure> {
    let mut out = String::new();
    for (name, title) in lesson::builtin_titles() {
        let _ = writeln!(out, "{name:<14} {title}");
    }
    let _ =
        writeln!(out, "\nmatrix-tui lesson NAME opens one; a lesson file of your own works too (see docs/lessons.md).");
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run_lesson(args: LessonArgs) -> Result<ExitCode, Failure> {
    let lesson = lesson::load(&args.lesson)?;
    if args.headless {
        eprintln!(
            "matrix-tui: lesson '{}': its panel needs the terminal UI; running its scenario",
            escape_input(&lesson.title)
        );
    }
    let migration = lesson.migration.clone();
    run(RunArgs {
        migrate_to: args.migrate_to.or_else(|| migration.as_ref().map(|migration| migration.to.clone())),
        migrate_bandwidth: migration.as_ref().and_then(|migration| migration.bandwidth),
        max_rounds: migration.as_ref().and_then(|migration| migration.max_rounds).unwrap_or(30),
        downtime_limit: migration.as_ref().and_then(|migration| migration.downtime_limit),
        vms: args.vms,
        duration: args.duration,
        headless: args.headless,
        record: args.record,
        no_seccomp: args.no_seccomp,
        lesson: Some(lesson),
        ..RunArgs::default()
    })
}
