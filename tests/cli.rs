//! The `matrix-tui` binary as a user runs it: images, errors and exit statuses.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    common::binary().args(args).output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {output:?}"))
}

#[test]
fn guests_lists_every_builtin() {
    let output = run(&["guests"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for name in ["part1", "neo", "morpheus", "ticker", "spin", "chatty", "evil", "crash"] {
        assert!(text.lines().any(|line| line.starts_with(name)), "{name} missing from:\n{text}");
    }
}

#[test]
fn part1_headless_prints_prefixed_lines() {
    let output = run(&["run", "--vm", "part1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (console, halted) = stdout.rsplit_once("part1| [matrix] halted: ").expect("a halt line ends it");
    let console: String = console.lines().map(|line| format!("{}\n", line.strip_prefix("part1| ").unwrap())).collect();
    common::assert_part1_console(&console);
    // The registers at the halt: rax holds what part1 last read (its mailbox text's address).
    assert!(halted.starts_with("rax=4224 (0x1080) rip=0x100b1 rsp=0x1ffff8"), "{halted}");
}

#[test]
fn timestamps_prefix_seconds_with_six_decimals() {
    let output = run(&["run", "--vm", "p=part1", "--timestamps"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    let (seconds, rest) = first.split_once(' ').unwrap();
    assert_eq!(rest, "p| Hello 695!");
    assert_eq!(seconds.split_once('.').unwrap().1.len(), 6, "{first}");
}

#[test]
fn a_crash_beside_part1_exits_3_and_the_report_says_why() {
    let output = run(&["run", "--vm", "c=crash", "--vm", "p=part1", "--json"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report = json(&output);
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms[0]["state"], "crashed");
    assert_eq!(vms[0]["crash_reason"], "triple fault (KVM_EXIT_SHUTDOWN)");
    assert_eq!(vms[1]["state"], "halted");
    common::assert_part1_console(vms[1]["console"].as_str().unwrap());
    assert!(stderr(&output).contains("VM 'c' crashed: triple fault"), "{}", stderr(&output));
}

#[test]
fn the_json_report_has_every_field() {
    let output = run(&["run", "--vm", "part1:3", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    for key in [
        "wall_ns",
        "policy",
        "quantum_us",
        "timer",
        "vms",
        "outside_kvm_run_pct",
        "preempt_overrun_us",
        "preempt_early_us",
        "deadlines_armed_ahead_pct",
        "kick_lead_us",
    ] {
        assert!(report.get(key).is_some(), "no {key}");
    }
    assert_eq!(report["policy"], "fair");
    assert_eq!(report["quantum_us"], 1000);
    assert_eq!(report["timer"], "posix");
    let vm = &report["vms"][0];
    for key in [
        "name",
        "guest",
        "state",
        "crash_reason",
        "weight",
        "target_share",
        "share",
        "cpu_ns",
        "exits",
        "preemptions",
        "faults",
        "console",
        "console_cut_bytes",
    ] {
        assert!(vm.get(key).is_some(), "no vms[0].{key}");
    }
    for key in ["total", "io_in", "io_out", "hlt", "mmio", "unknown_port", "shutdown", "other"] {
        assert!(vm["exits"].get(key).is_some(), "no exits.{key}");
    }
    assert_eq!(vm["weight"], 3.0);
    assert_eq!(vm["target_share"], 1.0);
    assert_eq!(vm["exits"]["total"], 29);
}

#[test]
fn duration_ends_a_run_whose_guest_never_exits() {
    let started = Instant::now();
    let output = run(&["run", "--vm", "spin", "--duration", "1s", "--json"]);
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let report = json(&output);
    assert_eq!(report["vms"][0]["state"], "running");
    assert!(report["wall_ns"].as_u64().unwrap() >= 1_000_000_000);
}

#[test]
fn flat_images_load_at_0x10000() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("flat.bin");
    // mov al, 'F'; out 0xe9, al; mov al, '\n'; out 0xe9, al; hlt
    std::fs::write(&image, [0xb0, b'F', 0xe6, 0xe9, 0xb0, b'\n', 0xe6, 0xe9, 0xf4]).unwrap();
    let output = run(&["run", "--vm", &format!("flat={}", image.display())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "flat| F\nflat| [matrix] halted: rax=10 (0xa) rip=0x10009 rsp=0x200000 rbx=0x0 rcx=0x0 rdx=0x0 rsi=0x0 rdi=0x0\n"
    );
}

fn assert_usage_error(args: &[&str], message: &str) {
    let output = run(args);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    let text = stderr(&output);
    assert!(text.contains(message), "{args:?}: expected {message:?} in {text:?}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn bad_images_and_flags_are_one_line_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, []).unwrap();
    assert_usage_error(&["run", "--vm", &format!("e={}", empty.display())], "the image is empty");

    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0x90; 3 << 20]).unwrap();
    assert_usage_error(&["run", "--vm", &format!("b={}", big.display())], "give the VM more memory (--mem)");

    let elf = std::fs::read(matrix_elf("part1")).unwrap();
    let mut pie = elf.clone();
    pie[16] = 3; // e_type = ET_DYN
    let pie_path = dir.path().join("pie.elf");
    std::fs::write(&pie_path, pie).unwrap();
    assert_usage_error(&["run", "--vm", &format!("p={}", pie_path.display())], "position-independent");

    assert_usage_error(&["run", "--vm", "x=no-such-guest"], "unknown guest 'no-such-guest'");
    assert_usage_error(&["run", "--vm", "x=no-such-guest"], "part1, neo, morpheus");
    assert_usage_error(&["run", "--vm", "a=spin", "--vm", "a=spin"], "two VMs are called 'a'");
    assert_usage_error(&["run", "--vm", "part1", "--mem", "3M"], "multiple of 2 MiB");
    assert_usage_error(&["run", "--vm", "part1", "--mem", "2G"], "between 2 MiB and 1 GiB");
    assert_usage_error(&["run", "--policy", "nope"], "invalid value 'nope'");
    assert_usage_error(&["run", "--duration", "soon"], "not a duration");
    assert_usage_error(&["run", "--vm", "a=spin:-1"], "from 1 to 10000");
    assert_usage_error(&["run", "--vm", "part1", "--args", "other=1"], "not in this run");
    assert_usage_error(&["run", "--vm", "a=spin:1e308"], "from 1 to 10000");
    assert_usage_error(
        &["run", "--vm", "part1", "--paused", "other"],
        "--paused names VM 'other', which is not in this run",
    );
    assert_usage_error(
        &["run", "--vm", "part1", "--trace", "/nonexistent-dir/trace.jsonl"],
        "--trace /nonexistent-dir/trace.jsonl: cannot write the trace there",
    );
    assert_usage_error(
        &["run", "--vm", "a=spin", "--vm", "b=spin", "--mem", "512M", "--max-total-mem", "768M"],
        "the VMs need 1024 MiB of guest memory in all, more than --max-total-mem (768 MiB)",
    );
    let many: Vec<String> = (0..1025).flat_map(|i| ["--vm".to_string(), format!("v{i}=spin")]).collect();
    let mut args = vec!["run"];
    args.extend(many.iter().map(String::as_str));
    assert_usage_error(&args, "1025 VMs; a run has at most 1024");
}

#[test]
fn an_elf_segment_outside_memory_is_refused_with_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut elf = std::fs::read(matrix_elf("part1")).unwrap();
    // Move the first program header's physical address to 4 MiB.
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    elf[phoff + 24..phoff + 32].copy_from_slice(&(4u64 << 20).to_le_bytes());
    let path = dir.path().join("far.elf");
    std::fs::write(&path, elf).unwrap();
    assert_usage_error(&["run", "--vm", &format!("far={}", path.display())], "ELF segment 0 spans 0x400000");
}

/// Writes a built-in guest's image to a file (via the library's embedded copy).
fn matrix_elf(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("matrix-tui-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.elf"));
    std::fs::write(&path, matrix_tui::guests::builtin(name).unwrap().image).unwrap();
    path
}

#[test]
fn the_example_c_guest_builds_with_gcc_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    common::make_example("c", dir.path());
    let image = dir.path().join("hello.elf");
    let output = run(&["run", "--vm", &format!("c={}", image.display()), "--args", "c=7,0x10"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (console, halted) = stdout.rsplit_once("c| [matrix] halted: ").expect("a halt line ends it");
    assert_eq!(
        console,
        "c| Hello from C!\nc| args:2\nc| 7\nc| 16\nc| 19\nc| exit counts:\nc| IO in: 2\nc| IO out: 20\n"
    );
    assert!(halted.starts_with("rax="), "{halted}");
}

#[test]
fn help_explains_the_cli() {
    let output = run(&["run", "--help"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for flag in ["--vm", "--policy", "--duration", "--json", "--timestamps", "--raw", "--mem", "--args"] {
        assert!(text.contains(flag), "{flag} missing from help");
    }
}

fn asset(name: &str) -> String {
    format!("{}/assets/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_default_run_is_neo_70_morpheus_30_under_fair() {
    let output = run(&["run", "--duration", "1s", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!((report["policy"].as_str(), report["quantum_us"].as_u64()), (Some("fair"), Some(1000)));
    let vms = report["vms"].as_array().unwrap();
    assert_eq!((vms[0]["name"].as_str(), vms[0]["target_share"].as_f64()), (Some("neo"), Some(0.7)));
    assert_eq!((vms[1]["name"].as_str(), vms[1]["target_share"].as_f64()), (Some("morpheus"), Some(0.3)));
    // The charged share is what fair steers (KVM_RUN time also holds the
    // host's descheduling of the core thread on a busy machine).
    assert!((vms[0]["charged_share"].as_f64().unwrap() - 0.7).abs() < 0.03, "{report}");
}

#[test]
fn shipped_scenarios_run() {
    let output = run(&["run", &asset("preempt.toml"), "--duration", "1s", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!((report["policy"].as_str(), report["quantum_us"].as_u64()), (Some("rr"), Some(5000)));
    for vm in report["vms"].as_array().unwrap() {
        assert_eq!(vm["state"], "running");
        assert!(vm["preemptions"].as_u64().unwrap() > 10, "{vm}");
    }

    let output = run(&["run", &asset("one-at-a-time.toml"), "--duration", "1s", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["policy"], "io");

    // Seven VMs; crash crashes (status 3), evil halts, the sleeper sleeps
    // (or has just woken), the rest run.
    let output = run(&["run", &asset("classroom.toml"), "--duration", "2s", "--json"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let report = json(&output);
    let states: Vec<&str> = report["vms"].as_array().unwrap().iter().map(|vm| vm["state"].as_str().unwrap()).collect();
    assert_eq!(states[..6], ["running", "running", "running", "running", "halted", "crashed"]);
    assert!(["sleeping", "running"].contains(&states[6]), "{states:?}");
    let sleeper = &report["vms"][6];
    assert!(sleeper["injected"].as_u64().unwrap() >= 8 && sleeper["share"].as_f64().unwrap() < 0.01, "{sleeper}");
}

#[test]
fn the_command_line_overrides_a_scenario() {
    let output = run(&[
        "run",
        &asset("matrix.toml"),
        "--policy",
        "rr",
        "--quantum",
        "2ms",
        "--timer",
        "timerfd",
        "--vm",
        "extra=spin",
        "--duration",
        "500ms",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!((report["policy"].as_str(), report["quantum_us"].as_u64()), (Some("rr"), Some(2000)));
    assert_eq!(report["timer"], "timerfd");
    assert_eq!(report["vms"].as_array().unwrap().len(), 3);
}

#[test]
fn scenario_mistakes_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "policy = \"fair\"\n\n[[vm]]\nname = \"a\"\nguest = \"spin\"\nweight = 0\n").unwrap();
    let message = format!("{}:6: weight: 0 is out of range: give a number from 1 to 10000", path.display());
    assert_usage_error(&["run", path.to_str().unwrap()], &message);

    std::fs::write(&path, "[[vm]]\nname = \"a\"\nguest = \"spin\"\nspeed = 11\n").unwrap();
    assert_usage_error(&["run", path.to_str().unwrap()], &format!("{}:4: speed: unknown field", path.display()));

    std::fs::write(&path, "[[vm]]\nname = \"a\"\nguest = \"spin\"\n[[vm]]\nname = \"a\"\nguest = \"spin\"\n").unwrap();
    assert_usage_error(
        &["run", path.to_str().unwrap()],
        &format!("{}:5: name: a second VM is called 'a'", path.display()),
    );

    std::fs::write(&path, "[[vm]]\nname = \"a\"\nguest = \"missing.elf\"\n").unwrap();
    assert_usage_error(&["run", path.to_str().unwrap()], "unknown guest");

    assert_usage_error(&["run", "/no/such/scenario.toml"], "cannot read it");
}

#[test]
fn control_commands_on_stdin_steer_a_headless_run() {
    use std::io::Write as _;
    let mut child = common::binary()
        .args(["run", "--control", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "weight neo 25\nweight morpheus 75\npolicy rr\nquantum 2ms\nnonsense\npause neo\nquit").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("control: cannot read 'nonsense'"), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!((report["policy"].as_str(), report["quantum_us"].as_u64()), (Some("rr"), Some(2000)));
    let vms = report["vms"].as_array().unwrap();
    assert_eq!((vms[0]["weight"].as_f64(), vms[0]["state"].as_str()), (Some(25.0), Some("paused")));
    assert_eq!(vms[1]["target_share"], 0.75);
}

#[test]
fn guests_export_writes_the_images_with_debug_info() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("guests");
    let output = common::binary().args(["guests", "--export"]).arg(&out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for guest in ["part1", "neo", "morpheus", "ticker", "spin", "chatty", "evil", "crash", "hammer"] {
        let image = std::fs::read(out.join(guest)).unwrap_or_else(|e| panic!("{guest}: {e}"));
        assert_eq!(&image[..4], b"\x7fELF", "{guest}");
        assert!(image.windows(11).any(|w| w == b".debug_info"), "{guest} has no debug info");
    }
    let refused = common::binary().args(["guests", "--export", "/proc/no-such-dir"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("give --export a writable directory"));
}

/// Runs `vms` tickers for a moment with the open-file limit at `soft` and `hard`.
fn run_with_file_limit(vms: usize, soft: u64, hard: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = common::binary();
    command.args(["run", "--duration", "300ms", "--headless"]);
    for vm in 0..vms {
        command.args(["--vm", &format!("t{vm}=ticker")]);
    }
    // SAFETY: between fork and exec the child only calls setrlimit, which is
    // async-signal-safe, on a struct it owns.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    command.output().expect("the binary runs")
}

#[test]
fn a_low_open_file_limit_is_raised_and_one_too_low_is_explained() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let hard = limit.rlim_max.min(4096);
    assert!(hard >= 256, "this test needs a hard limit of open files of 256 or more, not {hard}");
    // 60 VMs hold 120 files: a soft limit of 64 under a higher hard one is raised.
    let raised = run_with_file_limit(60, 64, hard);
    assert_eq!(raised.status.code(), Some(0), "{}", stderr(&raised));
    // Under a hard limit of 64 it cannot be: the error says what to do, once.
    let low = run_with_file_limit(60, 64, 64);
    assert_eq!(low.status.code(), Some(1), "{}", stderr(&low));
    let text = stderr(&low);
    assert!(text.contains("ulimit -n") && text.matches("may open no more files").count() == 1, "{text}");
}

#[test]
fn the_reports_console_keeps_whole_lines_and_says_how_much_it_left_out() {
    let output = run(&["run", "--vm", "chatty", "--duration", "1s", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    let vm = &report["vms"][0];
    let console = vm["console"].as_str().unwrap();
    let cut = vm["console_cut_bytes"].as_u64().unwrap();
    assert!(cut > 0 && console.len() <= 64 * 1024, "chatty prints more than the report keeps: {cut}");
    // Every kept line is whole: chatty's lines all start alike.
    assert!(console.lines().all(|line| line.starts_with("chatty ")), "{:.200}", console);
}
