//! Snapshots through the real binary: a VM saved by `snapshot NAME FILE`
//! under --control and restored by `--vm NAME=snapshot:FILE` in another
//! process goes on exactly where it was; damaged files are refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::controlled::{Controlled, guest_lines, run};
use matrix_tui::snapshot::format::{FORMAT_MAJOR, FORMAT_MINOR};
use serde_json::Value;

fn show_json(path: &Path) -> Value {
    let (status, stdout, stderr) = run(&["snapshot", "show", "--json", path.to_str().unwrap()]);
    assert_eq!(status, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn part1_saved_after_its_fourth_line_prints_the_rest_byte_for_byte_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("part1.snap");
    let mut run1 = Controlled::start(&["--vm", "part1", "--paused", "part1"]);
    let mut printed = Vec::new();
    while printed.len() < 4 {
        run1.send("step part1");
        loop {
            let line = run1.next();
            if line.contains("[step]") {
                break;
            }
            if !line.starts_with("part1| [matrix]") {
                printed.push(line.trim_start_matches("part1| ").to_string());
            }
        }
    }
    run1.send(&format!("snapshot part1 {}", file.display()));
    let written = run1.until("snapshot");
    assert!(written.contains(&format!("[matrix] snapshot {} written: ", file.display())), "{written}");
    assert_eq!(run1.quit().0, 0);

    let (status, stdout, stderr) = run(&["run", "--headless", "--vm", &format!("p=snapshot:{}", file.display())]);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.starts_with("p| [matrix] restored from the snapshot"), "{stdout}");
    let rest = guest_lines(&stdout, "p");
    // Line 7 is the host address of 0x400: this process's own.
    let hva: u32 = rest[2].parse().unwrap();
    let expected = common::part1_expected(hva);
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(printed, expected[..4]);
    assert_eq!(rest, expected[4..], "HC_numExits and the IO counts go on from the snapshot's");
    assert!(stdout.contains("p| [matrix] halted: rax=4224"), "{stdout}");
}

#[test]
fn a_ticker_restored_counts_on_from_its_snapshot_with_no_gap_and_no_repeat_beside_a_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.snap");
    let mut run1 = Controlled::start(&["--vm", "t=ticker:3", "--vm", "s=spin", "--duration", "60s"]);
    for _ in 0..20 {
        run1.until("t| ");
    }
    run1.send(&format!("snapshot t {}", file.display()));
    run1.until(" written: ");
    // It keeps running after the snapshot (the lines before it came first).
    let after: u64 = run1.until("t| ").trim_start_matches("t| ").parse().unwrap();
    assert_eq!(run1.quit().0, 0);

    let saved = show_json(&file);
    assert_eq!((saved["vm"]["name"].as_str(), saved["vm"]["weight"].as_f64()), (Some("t"), Some(3.0)));
    let console = saved["runtime"]["console"].as_str().unwrap();
    let last: u64 = console.lines().filter_map(|line| line.parse().ok()).next_back().unwrap();
    assert!(after > last);

    let (status, stdout, stderr) = run(&[
        "run",
        "--headless",
        "--vm",
        &format!("t2=snapshot:{}", file.display()),
        "--vm",
        "n=ticker",
        "--duration",
        "1s",
    ]);
    assert_eq!(status, 0, "{stderr}");
    let counts: Vec<u64> = guest_lines(&stdout, "t2").iter().map(|line| line.parse().unwrap()).collect();
    assert!(counts.len() > 5, "{stdout}");
    let expected: Vec<u64> = (last + 1..last + 1 + counts.len() as u64).collect();
    assert_eq!(counts, expected);
    assert!(guest_lines(&stdout, "n").len() > 5, "its neighbour runs too");
}

/// Each vCPU's counts in lines `cpuN: COUNT` of a VM of several vCPUs, by vCPU.
fn counts_by_vcpu(lines: &[String]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut counts = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for line in lines {
        if let Some((vcpu, count)) = line.split_once(": ").filter(|(vcpu, _)| vcpu.starts_with("cpu")) {
            if let Ok(count) = count.parse() {
                counts.entry(vcpu.to_string()).or_default().push(count);
            }
        }
    }
    counts
}

#[test]
fn a_vm_of_two_vcpus_restored_goes_on_with_both_taking_turns_with_no_gap_and_no_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.snap");
    let mut run1 = Controlled::start(&["--vm", "p=pair", "--vcpus", "p=2", "--args", "p=2000", "--duration", "60s"]);
    run1.until("p| cpu1: 20");
    run1.send(&format!("snapshot p {}", file.display()));
    run1.until(" written: ");
    assert_eq!(run1.quit().0, 0);

    let saved = show_json(&file);
    assert_eq!(saved["machine"]["siblings"].as_array().map(Vec::len), Some(1), "vCPU 1 is kept beside vCPU 0");
    assert_eq!(saved["runtime"]["vcpus"].as_array().map(Vec::len), Some(2));
    let (_, shown, _) = run(&["snapshot", "show", file.to_str().unwrap()]);
    let version = format!("file format {FORMAT_MAJOR}.{FORMAT_MINOR}");
    assert!(shown.contains(&version) && shown.contains("vCPUs: 2 ("), "{shown}");
    let console: Vec<String> = saved["runtime"]["console"].as_str().unwrap().lines().map(str::to_string).collect();
    let before = counts_by_vcpu(&console);

    let guest = format!("q=snapshot:{}", file.display());
    let (status, stdout, stderr) = run(&["run", "--headless", "--vm", &guest, "--duration", "1s"]);
    assert_eq!(status, 0, "{stderr}");
    let after = counts_by_vcpu(&guest_lines(&stdout, "q"));
    for vcpu in ["cpu0", "cpu1"] {
        let last = *before[vcpu].last().unwrap();
        let counts = &after[vcpu];
        assert!(counts.len() > 2, "{vcpu} took turns after the restore: {stdout}");
        let expected: Vec<u64> = (last + 1..).take(counts.len()).collect();
        assert_eq!(counts, &expected, "{vcpu}: no gap, no repeat after {last}");
    }
    // They still alternate: the turn was handed over in the saved memory and IPIs.
    let order: Vec<String> =
        guest_lines(&stdout, "q").iter().filter(|line| line.starts_with("cpu")).take(6).cloned().collect();
    assert!(order.windows(2).all(|pair| pair[0][..4] != pair[1][..4]), "{order:?}");
    // Its vCPUs cannot be given again: the snapshot brings them.
    let (status, _, stderr) = run(&["run", "--headless", "--vm", &guest, "--vcpus", "q=4", "--duration", "1s"]);
    assert_eq!(status, 2, "{stderr}");
}

#[test]
fn a_sleeper_restored_keeps_its_timer_and_a_restart_restores_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("z.snap");
    let mut run1 = Controlled::start(&["--vm", "z=sleeper", "--args", "z=10,5", "--duration", "60s"]);
    // Its tenth tick has been injected.
    run1.until("z| 10");
    run1.send(&format!("snapshot z {}", file.display()));
    run1.until(" written: ");
    run1.quit();
    let saved = show_json(&file);
    assert_eq!(saved["runtime"]["timer"]["period_us"].as_u64(), Some(10_000));
    let injected = saved["runtime"]["counters"]["injected"].as_u64().unwrap();
    assert!(injected > 0);

    let mut run2 = Controlled::start(&["--vm", &format!("z=snapshot:{}", file.display()), "--json"]);
    std::thread::sleep(Duration::from_millis(500));
    run2.send("restart z");
    std::thread::sleep(Duration::from_millis(500));
    run2.send("quit");
    drop(run2.stdin.take());
    let mut json = String::new();
    while let Ok(line) = run2.lines.recv_timeout(Duration::from_secs(15)) {
        json.push_str(&line);
        json.push('\n');
    }
    let status = run2.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let report: Value = serde_json::from_str(&json).unwrap();
    let vm = &report["vms"][0];
    let console = vm["console"].as_str().unwrap();
    assert_eq!(console.matches("restored from the snapshot").count(), 1, "{console}");
    assert_eq!(console.matches("VM restarted from the snapshot").count(), 1, "{console}");
    // Both lives start from the snapshot's last line.
    let first_after = |note: &str| console.split(note).nth(1).and_then(|rest| rest.lines().nth(1)).map(str::to_string);
    assert_eq!(first_after("restored from the snapshot"), first_after("VM restarted from the snapshot"));
    // Ticks injected went on from the snapshot's count (10 ms ticks for half a second).
    assert!(vm["injected"].as_u64().unwrap() > injected + 10, "{vm}");
}

#[test]
fn a_real_mode_guest_comes_back_in_real_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.snap");
    let mut run1 = Controlled::start(&["--vm", "c=counter", "--ports", "c=0x10:print32bit", "--duration", "60s"]);
    for _ in 0..5 {
        run1.until("c| ");
    }
    run1.send(&format!("snapshot c {}", file.display()));
    run1.until(" written: ");
    run1.quit();
    let saved = show_json(&file);
    assert_eq!(saved["machine"]["mode"].as_str(), Some("real"));
    assert_eq!(saved["machine"]["vcpu"]["sregs"]["cs"]["selector"].as_u64(), Some(0x1000));
    assert_eq!(saved["vm"]["ports"], serde_json::json!([[16, "print32bit"]]), "its port map goes with it");
    let console = saved["runtime"]["console"].as_str().unwrap();
    let last: u64 = console.lines().filter_map(|line| line.parse().ok()).next_back().unwrap();
    let (status, stdout, stderr) =
        run(&["run", "--headless", "--vm", &format!("c=snapshot:{}", file.display()), "--duration", "1s"]);
    assert_eq!(status, 0, "{stderr}");
    let lines = guest_lines(&stdout, "c");
    assert!(lines.len() > 3, "{stdout}");
    assert_eq!(lines[0], (last + 1).to_string(), "it goes on from its last line, in real mode");
}

#[test]
fn damaged_snapshots_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.snap");
    let mut run1 = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
    run1.until("t| ");
    run1.send(&format!("snapshot t {}", good.display()));
    run1.until(" written: ");
    run1.quit();
    let bytes = std::fs::read(&good).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"\x7fELF".to_vec(), "not a matrix-tui snapshot"),
        ("truncated", bytes[..bytes.len() - 100].to_vec(), "cut short"),
        ("empty", Vec::new(), "not a matrix-tui snapshot"),
    ];
    let mut version = bytes.clone();
    version[8] = 9;
    cases.push(("version", version, "format version 9"));
    let mut flagged = bytes.clone();
    flagged[12] = 1;
    cases.push(("flags", flagged, "header flags 0x1"));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    cases.push(("corrupted", flipped, "corrupted"));
    for (name, contents, says) in cases {
        let path = dir.path().join(format!("{name}.snap"));
        std::fs::write(&path, contents).unwrap();
        let (status, stdout, stderr) =
            run(&["run", "--headless", "--vm", &format!("t=snapshot:{}", path.display()), "--duration", "1s"]);
        assert_eq!(status, 2, "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}: nothing runs");
        assert!(stderr.contains(says), "{name}: {stderr}");
        let (status, _, stderr) = run(&["snapshot", "show", path.to_str().unwrap()]);
        assert_eq!(status, 2, "{name}: {stderr}");
    }
    // Options that set up a guest from its image do not apply to a restored one.
    for option in [["--mode", "t=real"], ["--load", "t=0x1000"], ["--entry", "t=0x1000"], ["--args", "t=5"]] {
        let guest = format!("t=snapshot:{}", good.display());
        let (status, _, stderr) = run(&["run", "--headless", "--vm", &guest, option[0], option[1], "--duration", "1s"]);
        assert_eq!(status, 2, "{option:?}: {stderr}");
        assert!(stderr.contains("is restored from a snapshot") && stderr.contains(option[0]), "{stderr}");
    }
    // A hostile path and name never reach the terminal as escapes.
    let odd = dir.path().join("a\x1b]0;title\x07\x1b[2J.snap");
    std::fs::copy(&good, &odd).unwrap();
    let (status, stdout, _) = run(&["snapshot", "show", odd.to_str().unwrap()]);
    assert_eq!(status, 0);
    assert!(!stdout.contains('\x1b') && !stdout.contains('\x07') && stdout.contains("\\x1b]0;title"), "{stdout:?}");
    let missing = dir.path().join("missing.snap");
    let (status, _, stderr) = run(&["run", "--headless", "--vm", &format!("t=snapshot:{}", missing.display())]);
    assert_eq!(status, 2);
    assert!(stderr.contains("cannot read the snapshot"), "{stderr}");
}

#[test]
fn a_snapshot_that_cannot_be_written_is_an_error_and_the_vm_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut run1 = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
    run1.until("t| ");
    run1.send(&format!("snapshot t {}", dir.path().join("no/such/dir/t.snap").display()));
    let line = run1.until("t| [matrix] snapshot");
    assert!(line.contains("snapshot not taken: cannot write the snapshot"), "{line}");
    run1.until("t| ");
    let (status, stderr) = run1.quit();
    assert_eq!(status, 4, "a lost snapshot is lost output");
    assert!(stderr.contains("VM 't': snapshot not taken"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no partial file left");
}

#[test]
fn every_golden_file_of_every_format_version_restores_and_counts_on() {
    // tests/golden keeps, byte for byte (as base64 text), a file of every
    // format version this project wrote: each is `snapshot t FILE` of a
    // ticker with a unit of 20,000 iterations (`--args t=20000`), written on
    // 2026-12-07 by the build of its day (2.1's with `--vcpus t=2`: that
    // version added the vCPUs past the first). Every later build must read them.
    use base64::Engine as _;
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = tempfile::tempdir().unwrap();
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&golden_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().trim_end_matches(".b64").to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.split_whitespace().collect::<String>())
            .unwrap_or_else(|error| panic!("{name} is not base64: {error}"));
        let golden = dir.path().join(&name);
        std::fs::write(&golden, bytes).unwrap();
        let (status, shown, stderr) = run(&["snapshot", "show", golden.to_str().unwrap()]);
        assert_eq!(status, 0, "{name}: {stderr}");
        let version = shown.split("file format ").nth(1).and_then(|rest| rest.lines().next()).unwrap().to_string();
        versions.push(version);
        let state = show_json(&golden);
        let saved = state["runtime"]["console"].as_str().expect("the console is kept");
        let guest = format!("t=snapshot:{}", golden.display());
        let (status, stdout, stderr) = run(&["run", "--headless", "--vm", &guest, "--duration", "1s"]);
        assert_eq!(status, 0, "{name}: {stderr}");
        // A ticker of one vCPU prints bare counts; of several, each vCPU's
        // own as `cpuN: COUNT`: each counts on from its last.
        let label = |lines: Vec<String>| {
            lines.into_iter().map(|line| if line.starts_with("cpu") { line } else { format!("cpu0: {line}") }).collect()
        };
        let saved_lines: Vec<String> = label(saved.lines().map(str::to_string).collect());
        let (before, after) = (counts_by_vcpu(&saved_lines), counts_by_vcpu(&label(guest_lines(&stdout, "t"))));
        assert!(!before.is_empty() && before.keys().eq(after.keys()), "{name}: {before:?} then {after:?}");
        for (vcpu, counts) in &after {
            let last = *before[vcpu].last().unwrap();
            assert!(counts.len() > 3, "{name} {vcpu} counted on: {stdout}");
            let expected: Vec<u64> = (last + 1..).take(counts.len()).collect();
            assert_eq!(counts, &expected, "{name} {vcpu}: no gap, no repeat after {last}");
        }
    }
    versions.sort();
    let current = format!("{FORMAT_MAJOR}.{FORMAT_MINOR}");
    assert!(versions.contains(&"1.0".to_string()), "{versions:?}");
    assert!(versions.contains(&current), "a golden file of this build's version {current}: {versions:?}");
}

#[test]
fn a_large_vm_is_saved_in_steps_while_its_neighbour_runs_and_restores_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.snap");
    // 16 MiB of its 64 MiB written (8 pages a unit over 4,000 pages), more
    // than one step of 8 MiB; a ticker beside it.
    let mut run1 =
        Controlled::start(&["--vm", "d=dirtier", "--args", "d=8,4000,100,10", "--mem", "64M", "--vm", "t=ticker"]);
    run1.until("d| 600");
    run1.send(&format!("snapshot d {}", file.display()));
    let line = run1.until("d| [matrix] snapshot");
    let steps: u32 = line
        .split(" steps)")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("a save in steps: {line}"));
    assert!(steps >= 2, "{line}");
    // Both go on: the saved VM was let go again, its neighbour never stopped.
    run1.until("d| ");
    run1.until("t| ");
    let saved = show_json(&file);
    let last: u64 = saved["runtime"]["console"].as_str().unwrap().lines().rev().find_map(|l| l.parse().ok()).unwrap();
    run1.quit();
    // Whole: restored elsewhere, it counts on from where it was saved.
    let guest = format!("d=snapshot:{}", file.display());
    let (status, stdout, stderr) = run(&["run", "--headless", "--vm", &guest, "--duration", "1s"]);
    assert_eq!(status, 0, "{stderr}");
    let counts: Vec<u64> = guest_lines(&stdout, "d").iter().filter_map(|line| line.parse().ok()).collect();
    assert_eq!(counts.first(), Some(&(last + 100)), "{stdout}");
}
