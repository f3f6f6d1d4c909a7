//! Live migration between two real processes: a receiver run with
//! `--incoming` and a sender told `migrate NAME ADDR` under --control.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::controlled::Controlled;
use matrix_tui::migration::protocol::{Frame, read_frame, write_frame};
use matrix_tui::migration::secret::answer;

/// A receiver listening on a Unix socket in `dir`, with a ticker of its own.
fn receiver(dir: &Path) -> (Controlled, String) {
    let socket = dir.join("in.sock").display().to_string();
    let mut run = Controlled::start(&["--incoming", &socket, "--vm", "own=ticker", "--duration", "60s"]);
    run.until("own| ");
    (run, socket)
}

/// A dirtier told to move to `socket` at 10 KB/s: round 0 alone takes many seconds.
fn slow_move(socket: &str) -> Controlled {
    let mut from = Controlled::start(&[
        "--vm",
        "d=dirtier",
        "--args",
        "d=1,64,20",
        "--migrate-bandwidth",
        "10K",
        "--duration",
        "60s",
    ]);
    from.until("d| ");
    from.send(&format!("migrate d {socket}"));
    from
}

fn count(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(&format!("{name}| "))?.parse().ok()
}

#[test]
fn a_ticker_moves_with_no_gap_and_no_repeat_and_both_sides_run_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = Controlled::start(&["--vm", "t=ticker", "--vm", "stay=ticker", "--duration", "60s"]);
    from.until("t| ");
    from.send(&format!("migrate t {socket}"));
    let moved = from.until("t| [matrix] migrated to");
    assert!(moved.contains("2 rounds") || moved.contains("rounds,"), "{moved}");
    let last_here = from.seen.iter().filter_map(|line| count(line, "t")).next_back().unwrap();
    // The sender's neighbour runs on.
    let stay_before = from.seen.iter().filter(|line| line.starts_with("stay| ")).count();
    for _ in 0..3 {
        from.until("stay| ");
    }
    assert!(from.seen.iter().filter(|line| line.starts_with("stay| ")).count() > stay_before);

    to.until("t| [matrix] running here;");
    let mut counts = Vec::new();
    while counts.len() < 20 {
        let line = to.next();
        if let Some(value) = count(&line, "t") {
            counts.push(value);
        }
    }
    let expected: Vec<u64> = (last_here + 1..=last_here + 20).collect();
    assert_eq!(counts, expected, "the receiver's counts go on from the sender's last");
    assert!(to.seen.iter().any(|line| line.contains("t| [matrix] came in by migration")));
    to.until("own| ");
    let (status, stderr) = from.quit();
    assert_eq!(status, 0, "a VM that moved is no failure: {stderr}");
    assert_eq!(to.quit().0, 0);
}

#[test]
fn a_vm_of_two_vcpus_moves_with_both_and_they_take_turns_on_from_where_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = Controlled::start(&["--vm", "p=pair", "--vcpus", "p=2", "--args", "p=2000", "--duration", "60s"]);
    from.until("p| cpu1: 5");
    from.send(&format!("migrate p {socket}"));
    from.until("p| [matrix] migrated to");
    // The last turn printed here, whichever vCPU took it.
    let turns = |lines: &[String]| -> Vec<(String, u64)> {
        lines
            .iter()
            .filter_map(|line| line.strip_prefix("p| ")?.split_once(": "))
            .filter_map(|(vcpu, count)| Some((vcpu.to_string(), count.parse().ok()?)))
            .collect()
    };
    let here = turns(&from.seen);
    let (last_vcpu, last_count) = here.last().cloned().unwrap();
    to.until("p| [matrix] running here;");
    let mut there = Vec::new();
    while there.len() < 6 {
        let line = to.next();
        there.extend(turns(&[line]));
    }
    // The next turn is the other vCPU's, then they alternate on.
    let mut expected = Vec::new();
    let (mut vcpu, mut count) = (last_vcpu, last_count);
    for _ in 0..6 {
        (vcpu, count) = if vcpu == "cpu0" { ("cpu1".to_string(), count) } else { ("cpu0".to_string(), count + 1) };
        expected.push((vcpu.clone(), count));
    }
    assert_eq!(there, expected, "after {here:?}");
    assert_eq!(from.quit().0, 0);
    assert_eq!(to.quit().0, 0);
}

#[test]
fn a_dirtier_that_cannot_converge_stops_at_the_round_cap_or_is_throttled_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    for (extra, says) in [(None, "the round or byte cap is reached"), (Some("--auto-converge"), "throttle 20%")] {
        let mut args = vec!["--vm", "d=dirtier", "--args", "d=8,200", "--migrate-bandwidth", "2M", "--max-rounds", "4"];
        args.extend(extra);
        args.extend(["--duration", "60s"]);
        let mut from = Controlled::start(&args);
        from.until("d| ");
        from.send(&format!("migrate d {socket}"));
        from.until("d| [matrix] migrated to");
        let rounds: Vec<&String> = from.seen.iter().filter(|line| line.contains("d| [matrix] round ")).collect();
        assert!(rounds.len() >= 3, "{rounds:?}");
        assert!(from.seen.iter().any(|line| line.contains(says)), "{:#?}", from.seen);
        if extra.is_some() {
            assert!(from.seen.iter().any(|line| line.contains("throttle 30%")), "{:#?}", from.seen);
        }
        assert_eq!(from.quit().0, 0);
        // The receiver runs it (and then has a VM of that name: quit and start afresh).
        to.until("d| [matrix] running here;");
        to.until("d| ");
        to.quit();
        let (fresh, _) = receiver(dir.path());
        to = fresh;
    }
    to.quit();
}

#[test]
fn a_receiver_killed_mid_move_leaves_the_vm_running_on_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = slow_move(&socket);
    to.until("[matrix] incoming migration from a local socket: VM 'd'");
    to.child.kill().unwrap();
    let _ = to.child.wait();
    let line = from.until("d| [matrix] migration to");
    assert!(line.contains("abandoned") && line.contains("runs on here"), "{line}");
    // It still runs here.
    for _ in 0..3 {
        from.until("d| ");
    }
    assert_eq!(from.quit().0, 0);
}

#[test]
fn a_sender_killed_mid_move_leaves_the_receiver_running_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = slow_move(&socket);
    to.until("[matrix] incoming migration from a local socket: VM 'd'");
    from.child.kill().unwrap();
    let _ = from.child.wait();
    let notice = to.until("[matrix] incoming migration from");
    assert!(notice.contains("ended"), "{notice}");
    for _ in 0..3 {
        to.until("own| ");
    }
    // Its blank copy, made at the Hello, is dropped; it never ran.
    let d_lines: Vec<&String> = to.seen.iter().filter(|line| line.starts_with("d| ")).collect();
    assert!(d_lines.iter().all(|line| line.starts_with("d| [matrix]")), "no half VM ran: {d_lines:?}");
    assert!(d_lines.iter().any(|line| line.contains("this copy is dropped")), "{d_lines:?}");
    assert_eq!(to.quit().0, 0);
}

#[test]
fn strangers_other_versions_and_clashing_names_are_refused_and_the_receiver_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    // Only its user may connect to the receiver's socket.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // Not this protocol at all.
    let mut stranger = UnixStream::connect(&socket).unwrap();
    stranger.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let notice = to.until("[matrix] incoming migration from");
    assert!(notice.contains("ended"), "{notice}");
    drop(stranger);
    // Another version: a Hello of version 3, after the handshake.
    let mut other = UnixStream::connect(&socket).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = std::io::BufReader::new(other.try_clone().unwrap());
    let Ok(Frame::Challenge(challenge)) = read_frame(&mut reader) else { panic!("no challenge") };
    write_frame(&mut other, &Frame::Proof(answer(None, &challenge))).unwrap();
    let mut hello = vec![1u8];
    let mut payload = b"MTXMIGR\0".to_vec();
    payload.extend_from_slice(&3u32.to_le_bytes());
    payload.extend_from_slice(&(2u64 << 20).to_le_bytes());
    payload.extend_from_slice(b"x");
    hello.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    hello.extend_from_slice(&payload);
    other.write_all(&hello).unwrap();
    let mut refusal = Vec::new();
    let _ = reader.read_to_end(&mut refusal);
    let text = String::from_utf8_lossy(&refusal);
    assert!(text.contains("the sender speaks migration protocol version 3, this receiver version 2"), "{text}");
    // A VM of a name the receiver has.
    let mut from = Controlled::start(&["--vm", "own=ticker", "--duration", "60s"]);
    from.until("own| ");
    from.send(&format!("migrate own {socket}"));
    let line = from.until("own| [matrix] migration to");
    assert!(line.contains("a VM is already called 'own' here") && line.contains("runs on here"), "{line}");
    from.until("own| ");
    assert_eq!(from.quit().0, 0);
    to.until("own| ");
    assert_eq!(to.quit().0, 0);
}

#[test]
fn the_report_and_the_trace_carry_the_rounds_and_the_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let trace = dir.path().join("trace.jsonl");
    let mut from = std::process::Command::new(env!("CARGO_BIN_EXE_matrix-tui"))
        .args(["run", "--control", "--json", "--vm", "t=ticker", "--duration", "60s", "--trace"])
        .arg(&trace)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = from.stdin.take().unwrap();
    writeln!(stdin, "migrate t {socket}").unwrap();
    // Its only VM gone, the sender's run ends by itself.
    let output = from.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let vm = &report["vms"][0];
    assert_eq!(vm["state"], "moved");
    let migration = &vm["migration"];
    assert_eq!(migration["direction"], "out");
    assert!(migration["rounds"].as_array().is_some_and(|rounds| !rounds.is_empty()), "{migration}");
    assert!(migration["downtime_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{migration}");
    assert_eq!(migration["memory_pages"], 512);
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert!(lines.lines().any(|line| line.contains(r#""type":"round""#) && line.contains(r#""vm":"t""#)), "{lines}");
    to.until("t| [matrix] running here;");
    assert_eq!(to.quit().0, 0);
}

#[test]
fn a_move_to_nowhere_says_it_cannot_connect_and_the_vm_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nobody.sock").display().to_string();
    let mut from = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
    from.until("t| ");
    from.send(&format!("migrate t {nowhere}"));
    let line = from.until("abandoned");
    assert!(line.contains(&format!("cannot connect to {nowhere}")) && line.contains("the VM runs on here"), "{line}");
    from.until("t| ");
}

#[test]
fn a_second_migrate_is_refused_without_touching_the_first_which_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = slow_move(&socket);
    from.until("d| [matrix] migrating to");
    // A second move to nowhere: refused, and its link's failure is not the first move's.
    from.send("migrate d /nonexistent/x.sock");
    let line = from.until("d| [matrix] migration to /nonexistent/x.sock not started");
    assert!(line.contains("it is already moving"), "{line}");
    from.send("migrate cancel d");
    let line = from.until("abandoned");
    assert!(
        line.contains("migration to") && line.contains("cancelled here") && line.contains("runs on here"),
        "{line}"
    );
    // It runs on here; the receiver dropped what it had begun and runs on too.
    from.until("d| ");
    assert_eq!(from.quit().0, 0);
    to.until("own| ");
    assert_eq!(to.quit().0, 0);
}

#[test]
fn a_receiver_that_never_says_ready_costs_the_sender_a_bounded_pause() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stalled.sock");
    let fake = stalled_receiver(&socket);
    let mut from = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
    from.until("t| ");
    from.send(&format!("migrate t {}", socket.display()));
    from.until("t| [matrix] last round, the VM paused");
    let last_before = from.seen.iter().filter_map(|line| count(line, "t")).next_back().unwrap();
    // Nothing runs it in its final pause: its registers would be newer
    // than the memory the receiver got.
    for command in ["step t", "resume t", "restart t"] {
        from.send(command);
        let verb = command.split(' ').next().unwrap();
        let line = from.until(&format!("t| [matrix] {verb} refused"));
        assert!(line.contains("it is paused for its move"), "{line}");
    }
    let line = from.until("abandoned");
    assert!(line.contains("did not take it within 10 s of its final pause"), "{line}");
    // The sender runs it on from where it paused; the fake receiver was told.
    let next = loop {
        if let Some(value) = count(&from.next(), "t") {
            break value;
        }
    };
    assert_eq!(next, last_before + 1, "no count lost or repeated over the pause");
    assert!(fake.join().unwrap().contains("within 10 s"));
    assert_eq!(from.quit().0, 0);
}

#[test]
fn a_vm_that_moved_away_can_come_back_and_the_receivers_memory_cap_counts_its_own_vms() {
    let dir = tempfile::tempdir().unwrap();
    // Two runs that each receive: a ticker goes there and back.
    let (mut there, there_socket) = receiver(dir.path());
    let here_socket = dir.path().join("here.sock").display().to_string();
    let mut here = Controlled::start(&["--incoming", &here_socket, "--vm", "mv=ticker", "--duration", "60s"]);
    here.until("mv| ");
    here.send(&format!("migrate mv {there_socket}"));
    here.until("mv| [matrix] migrated to");
    there.until("mv| [matrix] came in by migration");
    there.send(&format!("migrate mv {here_socket}"));
    there.until("mv| [matrix] migrated to");
    let line = here.until("mv| [matrix] came in by migration");
    assert!(line.contains("rounds"), "{line}");
    // Back here it runs on, and its name is the one here now (the copy
    // that moved away would refuse a snapshot).
    here.until("mv| ");
    let snapshot = dir.path().join("back.snap");
    here.send(&format!("snapshot mv {}", snapshot.display()));
    let line = here.until("mv| [matrix] snapshot");
    assert!(line.contains("written"), "{line}");
    assert_eq!(here.quit().0, 0);
    assert_eq!(there.quit().0, 0);
    // A receiver of 4 MiB with a 2 MiB VM of its own takes no 4 MiB VM.
    let small_socket = dir.path().join("small.sock").display().to_string();
    let mut small = Controlled::start(&[
        "--incoming",
        &small_socket,
        "--vm",
        "own=ticker",
        "--max-total-mem",
        "4M",
        "--duration",
        "60s",
    ]);
    small.until("own| ");
    let mut big = Controlled::start(&["--vm", "big=ticker", "--mem", "4M", "--duration", "60s"]);
    big.until("big| ");
    big.send(&format!("migrate big {small_socket}"));
    let line = big.until("big| [matrix] migration to");
    assert!(line.contains("past its --max-total-mem of 4 MiB") && line.contains("runs on here"), "{line}");
    assert_eq!(big.quit().0, 0);
    assert_eq!(small.quit().0, 0);
}

#[test]
fn over_tcp_only_a_sender_that_knows_the_secret_hands_over_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::write(&ours, "0123456789abcdef-our-class\n").unwrap();
    std::fs::write(&theirs, "0123456789abcdef-not-ours\n").unwrap();
    // Another address than loopback needs a secret; a short one is refused.
    let (status, _, stderr) = common::controlled::run(&["run", "--incoming", "0.0.0.0:1", "--duration", "1s"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("give --migrate-secret FILE"), "{stderr}");
    std::fs::write(dir.path().join("short"), "abc").unwrap();
    let short = dir.path().join("short").display().to_string();
    let (status, _, stderr) = common::controlled::run(&["run", "--vm", "t=ticker", "--migrate-secret", &short]);
    assert!(status == 2 && stderr.contains("at least 16"), "{stderr}");
    // A free port on loopback, for a receiver that asks for the secret anyway.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let ours = ours.display().to_string();
    let mut to = Controlled::start(&[
        "--incoming",
        &address,
        "--migrate-secret",
        &ours,
        "--vm",
        "own=ticker",
        "--duration",
        "60s",
    ]);
    to.until("own| ");
    let theirs = theirs.display().to_string();
    let mut stranger = Controlled::start(&["--vm", "x=ticker", "--migrate-secret", &theirs, "--duration", "60s"]);
    stranger.until("x| ");
    stranger.send(&format!("migrate x {address}"));
    let line = stranger.until("x| [matrix] migration to");
    assert!(line.contains("does not know this receiver's secret") && line.contains("runs on here"), "{line}");
    assert_eq!(stranger.quit().0, 0);
    let mut friend =
        Controlled::start(&["--vm", "f=ticker", "--vm", "stay=ticker", "--migrate-secret", &ours, "--duration", "60s"]);
    friend.until("f| ");
    friend.send(&format!("migrate f {address}"));
    friend.until("f| [matrix] migrated to");
    to.until("f| [matrix] came in by migration");
    assert_eq!(friend.quit().0, 0);
    assert_eq!(to.quit().0, 0);
}

#[test]
fn a_vm_paused_on_the_sender_arrives_paused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    let mut from = Controlled::start(&["--vm", "p=ticker:40", "--vm", "stay=ticker", "--duration", "60s"]);
    from.until("p| ");
    from.send("pause p");
    from.send(&format!("migrate p {socket}"));
    from.until("p| [matrix] migrated to");
    let line = to.until("p| [matrix] it was paused on the sender");
    assert!(line.contains("stays paused here"), "{line}");
    // Resumed there, it counts on.
    to.send("resume p");
    to.until("p| ");
    assert_eq!(from.quit().0, 0);
    let (status, _) = to.quit();
    assert_eq!(status, 0);
}

/// A link between `listen` and `to` that delays every chunk by `lag` and is
/// cut `cut_after` after its first connection: what a slow network that
/// breaks at a bad moment does to a move.
fn lagging_link(listen: &Path, to: &Path, lag: Duration, cut_after: Duration) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(listen).unwrap();
    let to = to.to_path_buf();
    std::thread::spawn(move || {
        let Ok((near, _)) = listener.accept() else { return };
        let far = UnixStream::connect(&to).unwrap();
        let cut_at = std::time::Instant::now() + cut_after;
        let forward = |mut from: UnixStream, mut into: UnixStream| {
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
                let writer = std::thread::spawn(move || {
                    for (due, bytes) in rx {
                        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                        if into.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                });
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(read @ 1..) = from.read(&mut buffer) {
                    if tx.send((std::time::Instant::now() + lag, buffer[..read].to_vec())).is_err() {
                        break;
                    }
                }
                drop(tx);
                let _ = writer.join();
            })
        };
        let ends = [near.try_clone().unwrap(), far.try_clone().unwrap()];
        let one = forward(near.try_clone().unwrap(), far.try_clone().unwrap());
        let other = forward(far, near);
        std::thread::sleep(cut_at.saturating_duration_since(std::time::Instant::now()));
        for end in ends {
            let _ = end.shutdown(std::net::Shutdown::Both);
        }
        let _ = (one.join(), other.join());
    })
}

#[test]
fn a_link_that_lags_and_breaks_at_any_moment_never_leaves_the_vm_running_twice() {
    // Each try cuts a 100 ms link at another moment of the move (the whole
    // move takes some 1 s through it here: cut before the handshake, in the
    // rounds, between Ready and Go, after) while the receiver's operator keeps
    // typing `resume t`. Whatever happens, no count is printed twice: the
    // VM ran on one side at a time.
    for (try_number, cut_ms) in [50u64, 300, 450, 600, 700, 800, 900, 1_000, 1_500].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut to, socket) = receiver(dir.path());
        let proxy = dir.path().join("lagging.sock");
        let link = lagging_link(&proxy, Path::new(&socket), Duration::from_millis(100), Duration::from_millis(cut_ms));
        let mut from = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
        from.until("t| ");
        from.send(&format!("migrate t {}", proxy.display()));
        // Until the sender has said how the move ended and the receiver has
        // said what became of its copy (or never heard of it), and a while
        // after: every line of both, the receiver told to resume t meanwhile.
        let sender_done = |line: &str| line.contains("t| [matrix] migrated to") || line.contains("abandoned");
        let receiver_done = |line: &str| {
            ["t| [matrix] running here", "copy is dropped", "held here", "orphan"]
                .iter()
                .any(|text| line.contains(text))
        };
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        let (mut sender_ended, mut receiver_ended, mut settled_at) = (false, false, None);
        loop {
            assert!(
                std::time::Instant::now() < give_up,
                "try {try_number}: the move never ended ({sender_ended} {receiver_ended})\nsender:\n{}\nreceiver:\n{}",
                from.seen.iter().filter(|l| l.contains("[matrix]")).cloned().collect::<Vec<_>>().join("\n"),
                to.seen.iter().filter(|l| !l.starts_with("own|")).cloned().collect::<Vec<_>>().join("\n")
            );
            if writeln!(to.stdin.as_mut().unwrap(), "resume t").is_err() {
                let output = to.child.wait_with_output().unwrap();
                panic!(
                    "try {try_number}: the receiver ended: {:?}\n{}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr),
                    to.seen.iter().filter(|l| !l.starts_with("own|")).cloned().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
            while let Ok(line) = from.lines.try_recv() {
                sender_ended |= sender_done(&line);
                from.seen.push(line);
            }
            while let Ok(line) = to.lines.try_recv() {
                receiver_ended |= receiver_done(&line);
                to.seen.push(line);
            }
            let receiver_never_heard = !to.seen.iter().any(|line| line.starts_with("t| "));
            if sender_ended && (receiver_ended || receiver_never_heard) {
                // Some more of both, for a second run of the VM to show.
                let settled = *settled_at.get_or_insert_with(std::time::Instant::now);
                if settled.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
        }
        let mut counts: Vec<u64> = from.seen.iter().chain(&to.seen).filter_map(|line| count(line, "t")).collect();
        let printed = counts.len();
        counts.sort_unstable();
        counts.dedup();
        assert_eq!(
            counts.len(),
            printed,
            "try {try_number} (cut at {cut_ms} ms): a count was printed twice\nsender:\n{}\nreceiver:\n{}",
            from.seen.join("\n"),
            to.seen.join("\n")
        );
        let _ = (from.quit(), to.quit());
        let _ = link.join();
    }
}

#[test]
fn a_hung_peer_and_a_slow_one_beside_a_real_move_do_not_hold_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut to, socket) = receiver(dir.path());
    // One connects and says nothing; another dribbles a byte at a time.
    let hung = UnixStream::connect(&socket).unwrap();
    let mut slow = UnixStream::connect(&socket).unwrap();
    let dribble = std::thread::spawn(move || {
        for byte in b"MTXMIGR-slowly".iter().cycle().take(40) {
            if slow.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let mut from = Controlled::start(&["--vm", "t=ticker", "--duration", "60s"]);
    from.until("t| ");
    from.send(&format!("migrate t {socket}"));
    from.until("t| [matrix] migrated to");
    to.until("t| [matrix] running here");
    to.until("t| ");
    drop(hung);
    let _ = dribble.join();
    assert_eq!(to.quit().0, 0);
}

/// A fake receiver on `socket` that takes everything and never says Ready
/// (the sender's final pause lasts until its deadline); returns how it ended.
fn stalled_receiver(socket: &Path) -> std::thread::JoinHandle<String> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        write_frame(&mut stream, &Frame::Challenge([7; 32])).unwrap();
        loop {
            match read_frame(&mut reader) {
                Ok(Frame::Proof(_) | Frame::State(_)) => {}
                Ok(Frame::Hello { .. }) => write_frame(&mut stream, &Frame::Accept).unwrap(),
                Ok(Frame::Pages { pages, .. }) => {
                    write_frame(&mut stream, &Frame::Ack { bytes: (pages.len() * 4096) as u64 }).unwrap()
                }
                Ok(Frame::Abandon(why)) => return why,
                Ok(other) => panic!("an unexpected {}", other.name()),
                Err(error) => return error.to_string(),
            }
        }
    })
}

#[test]
fn gdb_cannot_run_a_vm_in_its_final_pause() {
    let dir = tempfile::tempdir().unwrap();
    let gdb_socket = dir.path().join("t.gdb.sock");
    let mut from =
        Controlled::start(&["--vm", "t=ticker", "--gdb", &format!("t={}", gdb_socket.display()), "--duration", "60s"]);
    from.until("t| [matrix] gdb: waiting at the entry point");
    let gdb = |commands: &[&str]| {
        let mut gdb = std::process::Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex", "set architecture i386:x86-64"]);
        gdb.args(["-ex", &format!("target remote {}", gdb_socket.display())]);
        for command in commands {
            gdb.args(["-ex", command]);
        }
        let output = gdb.output().expect("gdb runs (install it: apt-get install gdb; .ci/run does)");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    gdb(&["detach"]);
    from.until("t| 1");
    let socket = dir.path().join("stalled.sock");
    let fake = stalled_receiver(&socket);
    from.send(&format!("migrate t {}", socket.display()));
    from.until("t| [matrix] last round, the VM paused");
    let last_before = from.seen.iter().filter_map(|line| count(line, "t")).next_back().unwrap();
    // gdb may look, but its stepi and continue run nothing: each gets a stop where the VM is.
    let text = gdb(&["info registers rip", "stepi", "info registers rip", "continue", "detach"]);
    let rips: Vec<&str> = text.lines().filter(|line| line.starts_with("rip")).collect();
    assert_eq!(rips.len(), 2, "{text}");
    assert_eq!(rips[0], rips[1], "stepi did not move it: {text}");
    let refused = from.until("t| [matrix] gdb's request refused");
    assert!(refused.contains("it is paused for its move"), "{refused}");
    from.until("abandoned");
    assert!(fake.join().unwrap().contains("within 10 s"));
    let next = loop {
        if let Some(value) = count(&from.next(), "t") {
            break value;
        }
    };
    assert_eq!(next, last_before + 1, "no count lost or repeated over the pause");
    assert_eq!(from.quit().0, 0);
}
