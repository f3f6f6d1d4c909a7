//! `matrix-tui guests`: the built-in guests, their work units here, and
//! `--export` of their ELF images.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;

use super::{Failure, print_stdout};
use crate::{calibration, guests, vm};

/// Options of `matrix-tui guests`.
#[derive(Debug, Args)]
pub(super) struct GuestsArgs {
    /// Write the built-in guests' ELF images (with debug info, for gdb) into
    /// this directory, one file per guest named after it.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
}

/// Lists the built-in guests, or exports them with `--export DIR`.
pub(super) fn run_guests(args: GuestsArgs) -> Result<ExitCode, Failure> {
    match args.export {
        Some(dir) => export_guests(&dir),
        None => list_guests(),
    }
}

fn list_guests() -> Result<ExitCode, Failure> {
    let mut out = String::new();
    for guest in guests::BUILTIN {
        let _ = writeln!(out, "{:<10} {}", guest.name, guest.summary);
    }
    let _ = writeln!(
        out,
        "\n(built for {}; hello16, hello32, hello64 and counter are flat binaries built by gcc from \
         guest/examples/course, each run in its own mode and at its own load address unless told otherwise)",
        guests::GUEST_TARGET
    );
    let measured = vm::open_kvm()
        .map_err(|error| error.to_string())
        .and_then(|kvm| calibration::measure(&kvm).map_err(|error| error.to_string()));
    match measured {
        Ok(measured) => {
            let _ = writeln!(
                out,
                "\nWork units on this machine ({} loop iterations per ms of guest CPU, measured in {:.1} ms):",
                measured.loop_iterations_per_ms, measured.measured_ms
            );
            for timed in calibration::TIMED_UNITS {
                let when = if timed.when_missing { "" } else { " when it is 0" };
                let _ = writeln!(
                    out,
                    "  {:<9} a unit is {} ms of guest CPU: {} iterations (argument {}{when}; another value overrides it)",
                    timed.guest,
                    timed.time.as_secs_f64() * 1000.0,
                    measured.iterations_for(timed.time),
                    timed.arg,
                );
            }
        }
        Err(error) => {
            let _ = writeln!(out, "\nWork units are sized in time when KVM is usable; here: {error}");
        }
    }
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn export_guests(dir: &std::path::Path) -> Result<ExitCode, Failure> {
    let failed = |error: std::io::Error| {
        Failure::Usage(anyhow!(
            "cannot write the guests to {}: {error}; give --export a writable directory",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    for guest in guests::BUILTIN {
        std::fs::write(dir.join(guest.name), guest.image).map_err(failed)?;
    }
    print_stdout(&format!(
        "wrote {} guests to {} (the ELF ones with debug info: gdb {}/neo shows their symbols; the course's are \
         flat binaries)\n",
        guests::BUILTIN.len(),
        dir.display(),
        dir.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}
