//! `matrix-tui snapshot show FILE`: what a snapshot holds, for people.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::{Failure, print_stdout};
use crate::snapshot::{file, state};

/// Options of `matrix-tui snapshot`.
#[derive(Debug, Args)]
pub(super) struct SnapshotArgs {
    #[command(subcommand)]
    action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Check a snapshot file and print what it holds: the VM, its registers,
    /// counters and timer, and how much of its memory was stored.
    Show {
        /// The snapshot file (written by `snapshot NAME FILE` under --control,
        /// or the `S` key).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print its whole state as JSON (every register, MSR and counter).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `matrix-tui snapshot ...`.
pub(super) fn run_snapshot(args: SnapshotArgs) -> Result<ExitCode, Failure> {
    let SnapshotAction::Show { file, json } = args.action;
    let snapshot = file::read(&file).map_err(|error| Failure::Usage(anyhow!("{error}")))?;
    let text = if json {
        let whole = state::SnapshotState {
            vm: snapshot.vm.clone(),
            machine: snapshot.machine.state.clone(),
            runtime: snapshot.runtime.clone(),
        };
        format!("{}\n", state::state_json(&whole))
    } else {
        let shown = crate::console::escape_input(file.as_os_str().as_encoded_bytes());
        format!("{shown}: {}", state::describe(&snapshot))
    };
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
