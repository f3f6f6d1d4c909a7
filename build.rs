//! Builds the built-in guests in `guest/` from source and embeds them.
//!
//! The guests are `#![no_std]` programs built with the host toolchain (the only
//! target a new machine has); `guest/.cargo/config.toml` and `guest/build.rs`
//! make them static images linked at 0x10000. This script runs a nested cargo in
//! `guest/` with its own target directory (the outer build holds the lock on
//! `target/`) and without the outer build's flags, then writes `builtin_guests.rs`
//! into OUT_DIR: one entry per guest with its name, summary and bytes.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in guests: the binary's name in guest/src/bin and a line about it.
const GUESTS: &[(&str, &str)] = &[
    ("part1", "the reference hypercall sequence of HYPERCALLS.md, byte for byte, then halts"),
    ("neo", "classroom demo: CPU-bound work, a themed progress line a few times a second"),
    ("morpheus", "classroom demo: like neo, with Morpheus's lines"),
    ("ticker", "fixed units of busy work (about 1 ms each), prints the count after each unit"),
    ("spin", "a loop that never exits to the host: only a timer can preempt it"),
    ("chatty", "prints lines as fast as it can, forever"),
    ("evil", "breaks every rule of the guest ABI once, with a marker line each, then halts"),
    ("crash", "triple-faults (ud2 with no IDT): the VM ends as crashed"),
    ("hammer", "issues one hypercall in a loop forever (arg 0 picks which), for measuring exits"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let guest_dir = manifest_dir.join("guest");
    let target_dir = out_dir.join("guest-target");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args(["build", "--release", "--bins", "--target-dir"])
        .arg(&target_dir)
        // The outer build's flags (coverage, sanitizers, -D warnings...) are for
        // the host; the guests get exactly the flags of guest/.cargo/config.toml.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("could not run cargo to build the guests in guest/");
    assert!(status.success(), "building the guests in guest/ failed (see the errors above)");

    let mut table = String::from("&[\n");
    for (name, summary) in GUESTS {
        let image = target_dir.join("release").join(name);
        assert!(image.is_file(), "guest image {} was not built", image.display());
        writeln!(
            table,
            "    BuiltinGuest {{ name: {name:?}, summary: {summary:?}, image: include_bytes!({:?}) }},",
            image.display().to_string()
        )
        .unwrap();
    }
    table.push_str("]\n");
    fs::write(out_dir.join("builtin_guests.rs"), table).expect("writing builtin_guests.rs");

    rerun_if_changed_under(&guest_dir);
}

/// Rebuilds when any guest source, manifest or linker script changes.
fn rerun_if_changed_under(dir: &Path) {
    for entry in fs::read_dir(dir).expect("reading guest/").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "examples" {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed_under(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
