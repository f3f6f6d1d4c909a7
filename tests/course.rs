//! The course's own guests, run as a student runs them: the hello guest of
//! `guest/examples/course` in every CPU mode (built in, and built from source
//! by its Makefile), the Matrix starter's real-mode counters at 70/30,
//! pointers in each mode, port maps, and the bad layouts a student can give.

mod common;

use common::{matrix, report, vm};

use std::path::{Path, PathBuf};

use matrix_tui::guests;
use matrix_tui::sched::{Step, VmRuntime};
use matrix_tui::vm::{self, CpuMode, GuestLayout, KickTarget, MachineSpec, SetupError};
use serde_json::Value;
use vm_memory::{Bytes, GuestAddress};

/// Builds the course guests with their own Makefile into `dir`.
fn build_course(dir: &Path) -> PathBuf {
    common::make_example("course", dir);
    dir.to_path_buf()
}

/// Whether this host's KVM refused `vm` its mode (a host without legacy paging).
fn refused_by_host(vm: &Value) -> bool {
    vm["crash_reason"].as_str().is_some_and(|reason| reason.starts_with("this host's KVM does not run"))
}

#[test]
fn the_hello_guest_halts_with_42_in_eax_and_at_0x400_in_every_mode() {
    let kvm = common::kvm();
    let kick = KickTarget::new();
    let _attached = kick.attach();
    for (guest, mode) in [
        ("hello16", CpuMode::Real),
        ("hello32", CpuMode::Protected),
        ("hello32", CpuMode::Paged32),
        ("hello64", CpuMode::Long),
    ] {
        let builtin = guests::builtin(guest).unwrap();
        let spec = MachineSpec {
            image: std::sync::Arc::from(builtin.image),
            memory_size: 2 << 20,
            args: Vec::new(),
            layout: GuestLayout { mode, ..builtin.layout },
            restore: None,
            vcpus: 1,
        };
        let mut runtime = match VmRuntime::new(&kvm, &spec, Default::default()) {
            Err(SetupError::ModeUnsupported { mode: "paged32", asked_cr0, kept_cr0 }) => {
                assert_eq!((asked_cr0 & (1 << 31), kept_cr0 & (1 << 31)), (1 << 31, 0), "the host dropped CR0.PG");
                continue;
            }
            other => other.unwrap_or_else(|error| panic!("{guest} in {mode:?}: {error}")),
        };
        let registers = loop {
            match runtime.step(&kick, 0, false, u64::MAX).0 {
                Step::Halted { registers } => break registers,
                Step::Io | Step::Interrupted => {}
                other => panic!("{guest} in {mode:?} ended with {other:?}"),
            }
        };
        assert_eq!(registers.rax, 42, "{guest} in {mode:?}");
        let at_0x400: u32 = runtime.machine.memory.read_obj(GuestAddress(0x400)).unwrap();
        assert_eq!(at_0x400, 42, "{guest} in {mode:?}");
        assert_eq!(runtime.console.history(), b"Hello, world!\n", "{guest} in {mode:?}");
    }
}

#[test]
fn the_hello_guest_built_from_source_runs_from_the_command_line_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_course(dir.path());
    let image = |bits: u32| out.join(format!("hello{bits}.bin")).display().to_string();
    let (h16, h32, h64) = (format!("r={}", image(16)), format!("p={}", image(32)), format!("l={}", image(64)));
    let g32 = format!("g={}", image(32));
    let output = matrix(&[
        "run",
        "--json",
        "--vm",
        &h16,
        "--vm",
        &h32,
        "--vm",
        &g32,
        "--vm",
        &h64,
        "--mode",
        "r=real",
        "--mode",
        "p=protected",
        "--mode",
        "g=paged32",
        "--load",
        "r=0",
        "--load",
        "p=0",
        "--load",
        "g=0",
        "--load",
        "l=0",
    ]);
    let report = report(&output);
    for name in ["r", "p", "g", "l"] {
        let vm = vm(&report, name);
        if name == "g" && refused_by_host(vm) {
            continue;
        }
        assert_eq!(vm["state"], "halted", "{name}: {vm}");
        assert_eq!(vm["registers"]["rax"], 42, "{name}");
        assert_eq!(vm["console"], "Hello, world!\n", "{name}");
    }
    // The same guests without --load would run wrong: said, not silent.
    let headless = matrix(&["run", "--headless", "--vm", &h16, "--mode", "r=real", "--load", "r=0"]);
    let text = String::from_utf8_lossy(&headless.stdout);
    assert!(text.contains("r| [matrix] halted: eax=42 (0x2a)"), "{text}");
}

#[test]
fn the_matrix_starters_counters_climb_and_share_by_work_70_30() {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/course-matrix.toml");
    let output = matrix(&["run", scenario.to_str().unwrap(), "--duration", "5s", "--json"]);
    let report = report(&output);
    let outs = |name: &str| vm(&report, name)["exits"]["io_out"].as_f64().unwrap();
    let (a, b) = (outs("counter-a"), outs("counter-b"));
    let share = a / (a + b);
    // The charged share is what the policy steers; the work follows it
    // loosely on a busy host (time off the CPU is estimated there).
    let charged = vm(&report, "counter-a")["charged_share"].as_f64().unwrap();
    assert!((charged - 0.70).abs() <= 0.02, "counter-a was charged {charged:.3}");
    assert!((share - 0.70).abs() <= 0.05, "counter-a did {share:.3} of the work ({a} and {b} outs)");
    for name in ["counter-a", "counter-b"] {
        let console = vm(&report, name)["console"].as_str().unwrap().to_string();
        let values: Vec<u32> = console.lines().rev().skip(1).take(50).filter_map(|line| line.parse().ok()).collect();
        assert_eq!(values.len(), 50, "{name}: {console:.200}");
        for pair in values.windows(2) {
            assert_eq!(pair[1], (pair[0] + 65_535) % 65_536, "{name} counts up by one: {values:?}");
        }
        assert_eq!(vm(&report, name)["exits"]["unknown_port"], 0);
    }
}

#[test]
fn pointers_are_read_as_each_mode_sees_them_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_course(dir.path());
    for (bits, mode, refusal) in [
        (16, "real", "0x80000000 is not a 16-bit offset (a real-mode pointer is DS:offset)"),
        (32, "protected", "0x80000000 maps to 0x80000000, past the end of guest memory"),
        (32, "paged32", "0x80000000 maps to 0x80000000, past the end of guest memory"),
        (64, "long", "0x80000000 is not mapped by the guest's page tables"),
    ] {
        let image = format!("p={}", out.join(format!("pointers{bits}.bin")).display());
        let mode_arg = format!("p={mode}");
        let report = report(&matrix(&["run", "--json", "--vm", &image, "--mode", &mode_arg, "--load", "p=0"]));
        let vm = vm(&report, "p");
        if mode == "paged32" && refused_by_host(vm) {
            continue;
        }
        let expected = format!(
            "printed through a pointer\n[matrix] HC_printStr(0x80000000) refused: {refusal}; nothing printed\n"
        );
        assert_eq!(vm["console"], expected.as_str(), "{mode}");
        assert_eq!((vm["faults"].as_u64(), vm["registers"]["rax"].as_u64()), (Some(1), Some(42)), "{mode}");
    }
}

#[test]
fn shown_ports_are_plain_lines_and_unmapped_ones_stay_errors() {
    let shown = matrix(&["run", "--headless", "--vm", "c=counter", "--show-ports", "c", "--duration", "300ms"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.starts_with("c| out 0x10 \u{2190} 0\nc| out 0x10 \u{2190} 1\n"), "{text:.300}");
    assert!(!text.contains("[matrix] unknown port"), "{text:.300}");
    let plain = matrix(&["run", "--headless", "--vm", "c=counter", "--duration", "200ms"]);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.starts_with("c| [matrix] unknown port 0x10: a 2-byte out; value 0x0 ignored\n"), "{text:.300}");
}

#[test]
fn an_image_over_the_hypervisors_structures_moves_them_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let mut image = guests::builtin("hello64").unwrap().image.to_vec();
    image.resize(0x3000, 0);
    let path = dir.path().join("long.bin");
    std::fs::write(&path, &image).unwrap();
    let arg = format!("l={}", path.display());
    let report = report(&matrix(&["run", "--json", "--vm", &arg, "--load", "l=0"]));
    let vm = vm(&report, "l");
    assert_eq!((vm["state"].as_str(), vm["registers"]["rax"].as_u64()), (Some("halted"), Some(42)));
    let console = vm["console"].as_str().unwrap();
    assert!(
        console.starts_with(
            "[matrix] the image spans 0x0..0x3000, so the hypervisor's structures moved to 0x1ea500..0x1ef018 \
             (mailbox 0x1eb000)\nHello, world!\n"
        ),
        "{console}"
    );
}

#[test]
fn layouts_that_cannot_work_are_refused_with_status_2_and_nothing_started() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0xf4; 0x1f_8000]).unwrap();
    let mut elf32 = vec![0x7f, b'E', b'L', b'F', 1, 1, 1];
    elf32.resize(64, 0);
    let elf32_path = dir.path().join("guest32.elf");
    std::fs::write(&elf32_path, elf32).unwrap();
    let big_arg = format!("b={}", big.display());
    let elf_arg = format!("e={}", elf32_path.display());
    let cases: [(&[&str], &str); 6] = [
        (&["--vm", &big_arg, "--load", "b=0"], "leaves no room to move it below 0x1f0000"),
        (&["--vm", &big_arg, "--load", "b=0x10000"], "holds only 2031616; give the VM more memory"),
        (
            &["--vm", &elf_arg, "--mode", "e=protected"],
            "32-bit ELF files are not loaded: link the guest with --oformat binary",
        ),
        (&["--vm", "h=hello16", "--entry", "h=0x400000"], "the entry point 0x400000 is outside guest memory"),
        (&["--vm", "h=hello16", "--mode", "h=v86"], "unknown CPU mode 'v86': give real, protected, paged32 or long"),
        (&["--vm", "h=hello16", "--ports", "h=0x10:print64"], "unknown hypercall 'print64'"),
    ];
    for (args, message) in cases {
        let output = matrix(&[&["run", "--headless"], args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} started: {}", String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn a_guest_given_arguments_may_not_cover_them() {
    let kvm = common::kvm();
    let mut image = guests::builtin("hello64").unwrap().image.to_vec();
    image.resize(0x800, 0);
    let spec = MachineSpec {
        image: std::sync::Arc::from(image),
        memory_size: 2 << 20,
        args: vec![7],
        layout: GuestLayout { mode: CpuMode::Long, load: Some(0), entry: None },
        restore: None,
        vcpus: 1,
    };
    let error = vm::Machine::new(&kvm, &spec).err().expect("refused");
    assert!(error.to_string().contains("over the guest arguments' block (0x500..0x600)"), "{error}");
}

#[test]
fn the_setup_flowchart_matches_the_long_mode_code_and_the_table_every_mode() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    let flowchart = doc.split("```mermaid").nth(1).and_then(|rest| rest.split("```").next()).expect("a flowchart");
    let builtin = guests::builtin("part1").unwrap();
    let spec = MachineSpec {
        image: std::sync::Arc::from(builtin.image),
        memory_size: 2 << 20,
        args: Vec::new(),
        layout: builtin.layout,
        restore: None,
        vcpus: 1,
    };
    let machine = vm::Machine::new(&common::kvm(), &spec).unwrap();
    for step in &machine.setup {
        for ioctl in step.how.split(", ").filter(|how| how.starts_with("KVM_")) {
            assert!(flowchart.contains(ioctl), "the flowchart lacks {ioctl} ({})", step.what);
        }
    }
    use matrix_tui::vm::layout::{ARGS, GDT, IMAGE_BASE, PAGE_DIRECTORY, PDPT, PML4};
    for (name, value) in [("PML4", PML4), ("PDPT", PDPT), ("PD", PAGE_DIRECTORY)] {
        assert!(flowchart.contains(&format!("{name} 0x{value:x}")), "{name}");
    }
    for text in
        [format!("GDT at 0x{GDT:x}"), format!("arguments at 0x{ARGS:x}"), format!("0x{IMAGE_BASE:x} by default")]
    {
        assert!(flowchart.contains(&text), "{text}");
    }
    assert!(flowchart.contains(&format!("CR3 = 0x{PML4:x}")));
    let table = doc.split("### The four CPU modes").nth(1).expect("the modes table");
    for mode in CpuMode::ALL {
        assert!(table.contains(&format!("| `{}` |", mode.name())), "{mode:?}");
    }
    assert!(machine.summary().starts_with("long mode · image 0x10000.."), "{}", machine.summary());
}
