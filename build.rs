//! Builds the built-in guests in `guest/` from source and embeds them.
//!
//! The guests are `#![no_std]` programs built for `x86_64-unknown-none` (the
//! bare-metal target: soft-float, no SSE, no red zone) when that target is
//! installed, and otherwise for the host target with SSE turned off, with a
//! warning saying how to add the lasting one (rustc is phasing out SSE-less
//! host builds; rust-lang/rust#116344). `MATRIX_GUEST_TARGET=host` forces the
//! fallback (CI builds both ways). `guest/.cargo/config.toml` and
//! `guest/build.rs` make them static images linked at 0x10000. This script
//! runs a nested cargo in `guest/` with its own target directory (the outer
//! build holds the lock on `target/`) and without the outer build's flags, then
//! writes `builtin_guests.rs` into OUT_DIR: one entry per guest with its name,
//! summary and bytes, and `GUEST_TARGET`, the target they were built for.
//!
//! The course guests (`guest/examples/course`) are flat binaries built by
//! their own Makefile with the host's gcc, as a course's starter builds
//! them; they are embedded with the mode and load address they are built for.

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
    ("debugme", "a global, a function with a local and a write of 42 to 0x400: for learning gdb (--gdb)"),
    ("sleeper", "a 200 ms timer, each tick awaited in hlt and its count printed: an idle VM (args: ms, print every N)"),
    (
        "dirtier",
        "writes N pages per unit over a working set of M pages, prints every K units: for live migration (args: N, M, K)",
    ),
    (
        "pair",
        "its vCPUs take turns, woken by each other's IPIs, printing their turn counts (vcpus = 2; args: unit, turns)",
    ),
    (
        "locks",
        "its vCPUs contend on one spinlock; prints critical sections a second and the part spent spinning (args: \
         critical, outside, lock: 0 test-and-set, 1 ticket, 2 paravirtual)",
    ),
    ("tasks", "a tiny kernel: tasks A and B switched by its own timer interrupt every 50 ms, each saying when it runs"),
];

/// The built-in course guests: the file the course Makefile builds, a line
/// about it, and the layout it is built for (mode, load address).
const COURSE_GUESTS: &[(&str, &str, &str, &str)] = &[
    ("hello16", "course hello world (one C file, -m16): real mode at 0:0, halts with eax = 42", "Real", "0"),
    ("hello32", "the same C file, -m32: 32-bit protected mode (or paged32), linked and entered at 0", "Protected", "0"),
    ("hello64", "the same C file, -m64: long mode, linked and entered at 0", "Long", "0"),
    ("counter", "the Matrix starter's real-mode counter: out %ax to port 0x10 at 0x1000:0, forever", "Real", "0x10000"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let guest_dir = manifest_dir.join("guest");
    let target_dir = out_dir.join("guest-target");

    let target = guest_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args(["build", "--release", "--bins", "--target", &target, "--target-dir"])
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
        let image = target_dir.join(&target).join("release").join(name);
        assert!(image.is_file(), "guest image {} was not built", image.display());
        writeln!(
            table,
            "    BuiltinGuest {{ name: {name:?}, summary: {summary:?}, image: include_bytes!({:?}), \
             layout: crate::vm::GuestLayout {{ mode: crate::vm::CpuMode::Long, load: None, entry: None }} }},",
            image.display().to_string()
        )
        .unwrap();
    }
    let course_out = out_dir.join("course");
    let course_dir = guest_dir.join("examples").join("course");
    let make = Command::new(env::var("MAKE").unwrap_or_else(|_| "make".into()))
        .arg("-C")
        .arg(&course_dir)
        .arg(format!("OUT={}", course_out.display()))
        .status()
        .expect("could not run make to build the course guests in guest/examples/course (install make and gcc)");
    assert!(make.success(), "building the course guests in guest/examples/course failed (see the errors above)");
    for (name, summary, mode, load) in COURSE_GUESTS {
        let image = course_out.join(format!("{name}.bin"));
        writeln!(
            table,
            "    BuiltinGuest {{ name: {name:?}, summary: {summary:?}, image: include_bytes!({:?}), \
             layout: crate::vm::GuestLayout {{ mode: crate::vm::CpuMode::{mode}, load: Some({load}), entry: None }} }},",
            image.display().to_string()
        )
        .unwrap();
    }
    table.push_str("]\n");
    fs::write(out_dir.join("builtin_guests.rs"), table).expect("writing builtin_guests.rs");
    fs::write(out_dir.join("guest_target.rs"), format!("{target:?}\n")).expect("writing guest_target.rs");

    rerun_if_changed_under(&guest_dir);
    rerun_if_changed_under(&course_dir);
    println!("cargo:rerun-if-env-changed=MATRIX_GUEST_TARGET");
}

/// The bare-metal target if rustc has its standard library installed (and
/// the fallback is not forced), else the host target, with a warning.
fn guest_target() -> String {
    const BARE_METAL: &str = "x86_64-unknown-none";
    let host = env::var("HOST").expect("set by cargo");
    if env::var("MATRIX_GUEST_TARGET").is_ok_and(|target| target == "host") {
        return host;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", BARE_METAL])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if libdir.is_some_and(|dir| has_core(&dir)) {
        return BARE_METAL.into();
    }
    println!(
        "cargo:warning=the guests are built for the host target without SSE, which rustc is phasing out; \
         run `rustup target add {BARE_METAL}` to build them for the bare-metal target instead"
    );
    host
}

/// Whether `dir` holds a compiled `core` (its file name carries a hash).
fn has_core(dir: &Path) -> bool {
    fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("libcore-")))
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
