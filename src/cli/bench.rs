//! `matrix-tui bench`: measuring this machine.

use std::process::ExitCode;

use clap::Args;

use super::{Failure, print_stdout};
use crate::bench;

/// Options of `matrix-tui bench`.
#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Shorter runs.
    #[arg(long)]
    quick: bool,
    /// Only these measurements (repeat; the possible values below).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bench::MEASUREMENTS))]
    only: Vec<String>,
}

pub(super) fn run_bench(args: BenchArgs) -> Result<ExitCode, Failure> {
    let options = bench::BenchOptions { quick: args.quick, only: args.only };
    let report = bench::run(&options, |step| eprintln!("bench: {step}...")).map_err(|error| match error {
        bench::BenchError::Kvm(_)
        | bench::BenchError::Setup(_)
        | bench::BenchError::Spawn(_)
        | bench::BenchError::Tool(_) => Failure::Host(error.into()),
    })?;
    if args.json {
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report).expect("JSON values serialize")))?;
    } else {
        print_stdout(&bench::table(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
