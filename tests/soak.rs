//! A long run under random control: the classroom scenario plus part1,
//! steered through `--control` by a random command every 10 ms. At the end
//! part1, restarted, still prints its reference output exactly, and the
//! process's resident memory stayed flat. `MATRIX_SOAK_SECS` sets how long
//! (20 s by default, in CI); the long form is
//! `MATRIX_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`.

mod common;

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How much the resident memory may grow from the end of the warm-up
/// (a quarter of the run) to the end: histories and buffers are capped, so
/// only noise is allowed.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_classroom_under_random_control_stays_exact_and_flat() {
    common::kvm();
    let seconds: u64 = std::env::var("MATRIX_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/classroom.toml");
    let mut child = common::binary()
        .args(["run", scenario, "--vm", "p=part1", "--control", "--headless"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.starts_with("p| ") && lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<String>>()
    });

    let names = ["neo", "morpheus", "ticker-a", "ticker-b", "evil", "crash", "sleeper", "p"];
    let mut random = common::Rng(0x5eed);
    let started = Instant::now();
    let warm_up = Duration::from_secs(seconds) / 4;
    let mut warm_rss = None;
    let mut commands = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let name = names[random.next() as usize % names.len()];
        let command = match random.next() % 8 {
            0 => format!("weight {name} {}", 1 + random.next() % 100),
            1 => format!("pause {name}"),
            2 | 3 => format!("resume {name}"),
            4 => format!("restart {name}"),
            5 => format!("step {name}"),
            6 => ["policy io", "policy rr", "policy fair"][random.next() as usize % 3].to_string(),
            _ => ["quantum 100us", "quantum 1ms", "quantum 5ms"][random.next() as usize % 3].to_string(),
        };
        writeln!(stdin, "{command}").unwrap();
        commands += 1;
        if warm_rss.is_none() && started.elapsed() >= warm_up {
            warm_rss = Some(rss_kib(pid));
        }
        std::thread::sleep(Duration::from_millis(10));
        while lines.try_recv().is_ok() {}
    }
    let end_rss = rss_kib(pid);
    let warm_rss = warm_rss.unwrap();
    eprintln!(
        "soak: {commands} commands in {seconds} s; RSS {warm_rss} KiB after the warm-up, {end_rss} KiB at the end"
    );
    assert!(end_rss <= warm_rss + RSS_GROWTH_LIMIT_KIB, "memory grew from {warm_rss} to {end_rss} KiB");

    // part1 once more, from the start, and nothing in its way.
    while lines.try_recv().is_ok() {}
    writeln!(stdin, "policy fair\nquantum 1ms\nresume p\nrestart p").unwrap();
    let mut console = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines.recv_deadline(give_up).expect("part1 finished its reference output");
        let text = line.strip_prefix("p| ").unwrap();
        if text == "[matrix] VM restarted" {
            console.clear();
            continue;
        }
        console.push(format!("{text}\n"));
        if text == "IO out: 20" {
            break;
        }
    }
    common::assert_part1_console(&console.concat());
    writeln!(stdin, "quit").unwrap();
    let status = child.wait().unwrap();
    let _ = reader.join();
    let errors = errors.join().unwrap();
    let control_errors: Vec<&String> = errors.iter().filter(|line| line.contains("control:")).collect();
    assert!(control_errors.is_empty(), "{control_errors:?}");
    assert!(matches!(status.code(), Some(0 | 3)), "{status}: {errors:?}");
}
