//! Where matrix-tui meets the operating system: stop signals in every mode,
//! inputs that are not regular files, readers that stop reading, disks that
//! fill up, control input that is not text, a debugger that asks for all of
//! memory, and limits on memory. The real binary, as a user runs it.

mod common;

use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::tmux::{PATIENCE, Tmux};

/// How long a run may take to end after a stop signal, a duration's end or
/// a `quit` (docs/safety.md promises it; ending takes milliseconds here).
const STOP_BOUND: Duration = Duration::from_secs(3);
/// How long a run may take past its duration when its readers stall: the
/// trace's handover and writer get 1 s each, stdout 2 s (docs/safety.md).
const STALLED_BOUND: Duration = Duration::from_secs(5);

fn binary() -> Command {
    common::kvm();
    common::binary()
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` holds `needle` (a condition, not a guess at a time).
fn wait_for(path: &Path, needle: &str, child: &mut Child) -> String {
    let start = Instant::now();
    loop {
        let text = text(path);
        if text.contains(needle) {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before {needle:?}:\n{text}");
        }
        assert!(start.elapsed() < PATIENCE, "no {needle:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to end within `bound`; its status and how long it took.
fn wait_exit(child: &mut Child, bound: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("the process was still running {bound:?} later");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` to end within `bound`; its status and what it wrote to
/// stderr (piped, and small enough for the pipe: these runs' errors are one
/// line each).
fn exit_and_stderr(child: &mut Child, bound: Duration) -> (ExitStatus, String) {
    let (status, _) = wait_exit(child, bound);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Starts a headless run of a spinner and a ticker, waits for the ticker's
/// third line, stops it with `sig` and checks it ended in time with status 0.
/// What to do once the run is going, before the signal.
type WhenReady<'a> = &'a dyn Fn(&Path, &mut Child);

fn stop_headless(dir: &Path, sig: libc::c_int, extra: &[&str], ready: Option<WhenReady>) {
    let out = dir.join(format!("out-{sig}"));
    let mut child = binary()
        .args(["run", "--headless", "--vm", "s=spin", "--vm", "t=ticker", "--duration", "60s"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&out, "t| 3\n", &mut child);
    if let Some(ready) = ready {
        ready(&out, &mut child);
    }
    signal(&child, sig);
    let (status, took) = wait_exit(&mut child, STOP_BOUND);
    assert_eq!(status.code(), Some(0), "signal {sig} after {took:?}");
}

#[test]
fn stop_signals_end_a_headless_run_every_time() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..4 {
        for sig in STOP_SIGNALS {
            stop_headless(dir.path(), sig, &[], None);
        }
    }
}

#[test]
fn stop_signals_end_a_controlled_run_and_one_with_a_debugger_attached() {
    let dir = tempfile::tempdir().unwrap();
    for sig in STOP_SIGNALS {
        // stdin stays open (piped, never closed) while the signal comes.
        stop_headless(dir.path(), sig, &["--control"], None);
    }
    for sig in STOP_SIGNALS {
        let socket = dir.path().join(format!("gdb-{sig}.sock"));
        let attach = |out: &Path, child: &mut Child| {
            let mut client = UnixStream::connect(&socket).unwrap();
            client.write_all(b"+$?#3f").unwrap();
            wait_for(out, "gdb: debugger connected", child);
            // Kept open (leaked) until the run is gone.
            std::mem::forget(client);
        };
        let gdb = format!("s={}", socket.display());
        stop_headless(dir.path(), sig, &["--gdb", &gdb], Some(&attach));
    }
}

/// A shell command that writes its pid to `pid`, runs the binary with
/// `args` (exec: same pid), then writes its status and the terminal's
/// mode to `after`.
fn tui_command(dir: &Path, args: &str, prefix: &str) -> (String, PathBuf, PathBuf) {
    let (pid, after) = (dir.join("pid"), dir.join("after"));
    let _ = std::fs::remove_file(&after);
    let _ = std::fs::remove_file(&pid);
    let command = format!(
        "{prefix} sh -c 'echo $$ > {pid}; exec {binary} {args} 2>{err}'; echo \"status=$? $(stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon') $(stty -a | tr ' ' '\\n' | grep -x -- '-\\?echo')\" > {after}; sleep 60",
        pid = pid.display(),
        binary = env!("CARGO_BIN_EXE_matrix-tui"),
        err = dir.join("err").display(),
        after = after.display(),
    );
    (command, pid, after)
}

/// Waits for `path` to hold a whole line.
fn wait_for_line(path: &Path, bound: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = text(path);
        if text.ends_with('\n') {
            return text;
        }
        assert!(start.elapsed() < bound, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stop_signals_end_the_terminal_ui_and_restore_the_terminal() {
    common::kvm();
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        for sig in STOP_SIGNALS {
            let (command, pid, after) = tui_command(dir.path(), "run --vm s=spin --vm t=ticker", "");
            let tmux = Tmux::start(&command, 100, 30);
            tmux.wait_for(&["t running"]);
            let pid: libc::pid_t = wait_for_line(&pid, PATIENCE).trim().parse().unwrap();
            // SAFETY: kill with the pid the run wrote and a valid signal.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
            let after = wait_for_line(&after, STOP_BOUND);
            assert_eq!(after.trim(), "status=0 icanon echo", "signal {sig}: the terminal is back in cooked mode");
            assert!(!tmux.screen().contains("t running"), "the alternate screen is gone:\n{}", tmux.screen());
        }
    }
}

#[test]
fn a_trace_fifo_needs_a_reader_and_one_that_stops_reading_costs_records_not_time() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("trace.fifo");
    mkfifo(&fifo);
    let output = binary().args(["run", "--vm", "part1", "--trace"]).arg(&fifo).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("a FIFO that no process is reading"), "{output:?}");

    // A reader that opens the FIFO and never reads.
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let started = Instant::now();
    let mut child = binary()
        .args(["run", "--headless", "--vm", "chatty", "--vm", "t=ticker", "--duration", "1s", "--trace"])
        .arg(&fifo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(1) + STALLED_BOUND);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("is incomplete: its reader did not take the rest"), "{stderr}");
    drop(reader);
}

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn stdout_that_is_not_read_costs_lines_not_time_and_a_lost_report_is_an_error() {
    // A pipe with the smallest buffer, never read.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are ours, open, and owned from here on.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    for (args, code, says) in [
        (&["--headless"][..], 0, "lines dropped because stdout was not read fast enough"),
        (&["--json"][..], 4, "the JSON report could not be written"),
    ] {
        let started = Instant::now();
        let mut child = binary()
            .args(["run", "--vm", "chatty", "--duration", "1s"])
            .args(args)
            .stdout(write_end.try_clone().unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(1) + STALLED_BOUND);
        assert_eq!(status.code(), Some(code), "{args:?} after {:?}: {stderr}", started.elapsed());
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    drop(read_end);
}

fn run_to(stdout: impl Into<Stdio>, args: &[&str]) -> (Option<i32>, String) {
    let output = binary().args(args).stdout(stdout).stderr(Stdio::piped()).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap()
}

#[test]
fn a_full_disk_is_an_error_for_the_report_the_listings_and_the_trace() {
    let (code, stderr) = run_to(dev_full(), &["run", "--vm", "part1", "--json"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("cannot write the JSON report to stdout: No space left on device"), "{stderr}");
    for listing in [&["guests"][..], &["lessons"]] {
        let (code, stderr) = run_to(dev_full(), listing);
        assert_eq!(code, Some(4), "{listing:?}: {stderr}");
        assert!(stderr.contains("cannot write to stdout: No space left on device"), "{stderr}");
    }
    let (code, stderr) = run_to(Stdio::null(), &["run", "--headless", "--vm", "part1", "--trace", "/dev/full"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("the trace /dev/full is incomplete: No space left on device"), "{stderr}");
}

/// Every line of `path` is a whole JSON value.
fn assert_whole_json_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "{} ends mid-line", path.display());
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    text.lines().count()
}

#[test]
fn a_file_size_limit_cuts_the_trace_and_the_recording_at_a_whole_line() {
    common::kvm();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let script = format!(
        "ulimit -f 64; exec {} run --headless --vm chatty --duration 1s --trace {}",
        env!("CARGO_BIN_EXE_matrix-tui"),
        trace.display()
    );
    let output = Command::new("bash").args(["-c", &script]).stdout(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("is incomplete: File too large"), "{stderr}");
    assert!(assert_whole_json_lines(&trace) > 10);

    let cast = dir.path().join("full.cast");
    let (command, _, after) =
        tui_command(dir.path(), &format!("run --vm chatty --duration 2s --record {}", cast.display()), "ulimit -f 8;");
    let _tmux = Tmux::start(&command, 100, 30);
    let after = wait_for_line(&after, PATIENCE);
    let err = text(&dir.path().join("err"));
    assert!(after.starts_with("status=4 icanon echo"), "{after} {err}");
    assert!(err.contains("is incomplete: File too large"), "{err}");
    assert!(assert_whole_json_lines(&cast) > 1);
}

#[test]
fn the_recording_must_go_to_a_regular_file_and_its_errors_name_the_flag() {
    common::kvm();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cast.fifo");
    mkfifo(&fifo);
    for (path, says) in [
        ("/dev/full".into(), "--record /dev/full: cannot record there: it is a character device, not a regular file"),
        (fifo.display().to_string(), "it is a FIFO, not a regular file"),
        ("/no-such-dir/x.cast".into(), "--record /no-such-dir/x.cast: cannot record there: No such file"),
    ] {
        let (command, _, after) = tui_command(dir.path(), &format!("run --vm part1 --record {path}"), "");
        let _tmux = Tmux::start(&command, 100, 30);
        let after = wait_for_line(&after, PATIENCE);
        let err = text(&dir.path().join("err"));
        assert!(after.starts_with("status=2 icanon echo"), "{path}: {after} {err}");
        assert!(err.contains(says), "{path}: {err}");
    }
}

#[test]
fn devices_and_fifos_as_inputs_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("input.fifo");
    mkfifo(&fifo);
    let fifo = fifo.display().to_string();
    for path in ["/dev/zero", "/dev/urandom", fifo.as_str()] {
        let guest = format!("g={path}");
        for args in [&["run", "--vm", &guest][..], &["run", path], &["lesson", path]] {
            let mut child = binary().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
            let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(5));
            assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("not a regular file; give the path of a file"), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn each_bad_control_line_gets_its_own_error_and_a_later_quit_still_works() {
    let mut child = binary()
        .args(["run", "--control", "--vm", "s=spin", "--duration", "60s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"pause \xff\xfe\n").unwrap();
    stdin.write_all(b"resume \x1b]0;title\x07\n").unwrap();
    // 8 MiB on one line: refused without being kept.
    let long = vec![b'x'; 8 << 20];
    stdin.write_all(&long).unwrap();
    stdin.write_all(b"\nquit\n").unwrap();
    let (status, stderr) = exit_and_stderr(&mut child, PATIENCE);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| line.contains("control:")).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].contains("the line 'pause \\xff\\xfe' is not UTF-8"), "{stderr}");
    assert!(lines[1].contains("\\x1b]0;title\\x07"), "{stderr}");
    assert!(lines[2].contains(&format!("a line of {} bytes is too long", 8 << 20)), "{stderr}");
    assert!(stderr.len() < 2000, "the echo is bounded: {} bytes", stderr.len());
    assert!(!stderr.contains('\x1b'), "no escape reached the terminal");
}

fn gdb_packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |sum, byte| sum.wrapping_add(byte));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Expands gdb's run-length encoding (`X*N`: N - 29 more of X).
fn unrle(body: &str) -> String {
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '*' {
            let count = chars.next().unwrap() as usize - 29;
            let last = out.chars().last().unwrap();
            out.extend(std::iter::repeat_n(last, count));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads one reply packet's body (acks skipped, run-length encoding expanded).
fn gdb_reply(reader: &mut impl BufRead) -> String {
    let mut skipped = Vec::new();
    reader.read_until(b'$', &mut skipped).unwrap();
    let mut body = Vec::new();
    reader.read_until(b'#', &mut body).unwrap();
    let mut checksum = [0; 2];
    reader.read_exact(&mut checksum).unwrap();
    body.pop();
    unrle(&String::from_utf8(body).unwrap())
}

#[test]
fn a_huge_gdb_read_is_cut_to_a_packet_and_the_next_debugger_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gdb.sock");
    let out = dir.path().join("out");
    let mut child = binary()
        .args(["run", "--headless", "--mem", "1G", "--vm", "s=spin", "--vm", "t=ticker", "--gdb"])
        .arg(format!("s={}", socket.display()))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&out, "t| 1\n", &mut child);
    let client = UnixStream::connect(&socket).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
    let mut writer = client;
    let started = Instant::now();
    writer.write_all(&gdb_packet("m0,ffffffffffffffff")).unwrap();
    let reply = gdb_reply(&mut reader);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(reply.len(), 4096, "2048 bytes as hex");
    writer.write_all(b"+").unwrap();
    writer.write_all(&gdb_packet("m10000,2")).unwrap();
    assert_eq!(gdb_reply(&mut reader).len(), 4);
    // The debugger goes away; the next one is served.
    drop((reader, writer));
    wait_for(&out, "gdb: debugger left", &mut child);
    let mut next = UnixStream::connect(&socket).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    next.write_all(&gdb_packet("m10000,1")).unwrap();
    assert_eq!(gdb_reply(&mut std::io::BufReader::new(next)).len(), 2);
    signal(&child, libc::SIGTERM);
    let (status, _) = wait_exit(&mut child, STOP_BOUND);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_restart_note_is_stamped_when_the_restart_happened() {
    let mut child = binary()
        .args(["run", "--control", "--timestamps", "--vm", "p=part1", "--vm", "t=ticker", "--duration", "60s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut line = |seen: &mut Vec<String>| {
        let line = lines.next().unwrap().unwrap();
        seen.push(line.clone());
        line
    };
    while !line(&mut seen).ends_with("p| IO out: 20") {}
    // The ticker goes on for a while after part1 halted, then part1 restarts.
    while !line(&mut seen).ends_with("t| 100") {}
    stdin.write_all(b"restart p\n").unwrap();
    while !line(&mut seen).ends_with("p| [matrix] VM restarted") {}
    stdin.write_all(b"quit\n").unwrap();
    let _ = wait_exit(&mut child, STOP_BOUND);
    let stamp = |end: &str| -> f64 {
        let line = seen.iter().find(|line| line.ends_with(end)).unwrap();
        line.split_once(' ').unwrap().0.parse().unwrap()
    };
    // The restart was asked for after the ticker's 100th line was printed.
    assert!(stamp("p| [matrix] VM restarted") >= stamp("t| 100"), "the note is stamped before the restart: {seen:#?}");
}

#[test]
fn out_of_memory_is_a_host_error_that_names_the_limit_never_a_panic() {
    common::kvm();
    // Where the limit bites depends on the host: try a range of them.
    for limit_kib in (60_000..=200_000).step_by(20_000) {
        let script = format!(
            "ulimit -v {limit_kib}; exec {} run --vm part1 --vm s=spin --json --duration 1s --trace /dev/null",
            env!("CARGO_BIN_EXE_matrix-tui")
        );
        let output = Command::new("bash").args(["-c", &script]).stdout(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => {}
            Some(1) => assert!(stderr.contains("ulimit -v"), "{limit_kib} KiB: {stderr}"),
            other => panic!("{limit_kib} KiB: status {other:?}: {stderr}"),
        }
        assert!(!stderr.contains("panicked"), "{limit_kib} KiB: {stderr}");
    }
}

#[test]
fn under_control_the_process_ends_with_the_run_while_its_input_stays_open() {
    // A controller (a script, a teacher's panel) keeps the pipe open: the
    // run ends by its duration, by quit, or by its last VM's halt, and the
    // process with it.
    for (args, line) in [
        (&["--vm", "t=ticker", "--duration", "1s"][..], None),
        (&["--vm", "t=ticker"][..], Some("quit\n")),
        (&["--vm", "part1"][..], None),
    ] {
        let mut child = binary()
            .args(["run", "--control", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(line) = line {
            input.write_all(line.as_bytes()).unwrap();
        }
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        // Within the bound on ending (docs/safety.md), past the 1 s duration.
        let (status, took) = wait_exit(&mut child, PATIENCE);
        assert!(status.success(), "{args:?}: {status:?}");
        assert!(took < STOP_BOUND + Duration::from_secs(1), "{args:?}: the process took {took:?} to end");
        assert!(reader.join().unwrap().contains("\"vms\""), "{args:?}: the report came");
        drop(input);
    }
}

#[test]
fn a_panic_on_the_seccomped_core_thread_restores_the_terminal_and_exits_1() {
    common::kvm();
    let dir = tempfile::tempdir().unwrap();
    let (command, _, after) =
        tui_command(dir.path(), "run --vm s=spin --vm t=ticker", "MATRIX_TUI_TEST_CORE_PANIC_MS=1500");
    let tmux = Tmux::start(&command, 100, 30);
    let after = wait_for_line(&after, PATIENCE);
    assert_eq!(after.trim(), "status=1 icanon echo", "the terminal is back in cooked mode");
    assert!(!tmux.screen().contains("t running"), "the alternate screen is gone:\n{}", tmux.screen());
    let err = text(&dir.path().join("err"));
    assert!(err.contains("a panic injected into the core thread"), "{err}");
    assert!(err.contains("the core thread ended without a report"), "{err}");
    // Headless the same: status 1, the reason said.
    let output = binary()
        .args(["run", "--vm", "t=ticker", "--headless"])
        .env("MATRIX_TUI_TEST_CORE_PANIC_MS", "200")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_snapshot_the_ui_could_not_take_makes_the_status_4_and_says_why_as_headless() {
    common::kvm();
    let dir = tempfile::tempdir().unwrap();
    let (command, _, after) =
        tui_command(dir.path(), "run --vm part1 --vm t=ticker", &format!("cd {} &&", dir.path().display()));
    let tmux = Tmux::start(&command, 100, 30);
    tmux.wait_for(&["part1 halted"]);
    // part1 is selected: a halted VM has nothing to save.
    tmux.keys("S");
    tmux.wait_for(&["snapshot not taken"]);
    tmux.keys("q");
    let after = wait_for_line(&after, PATIENCE);
    let err = text(&dir.path().join("err"));
    assert!(after.starts_with("status=4 icanon echo"), "{after} {err}");
    assert!(err.contains("matrix-tui: VM 'part1': snapshot not taken"), "{err}");
    // Headless, the same status and line.
    let mut child = binary()
        .args(["run", "--vm", "part1", "--vm", "t=ticker", "--control", "--duration", "2s"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once part1 has said it halted, ask for its snapshot; read the rest meanwhile.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines.next().expect("part1 halts").unwrap().starts_with("part1| [matrix] halted") {}
    let drain = std::thread::spawn(move || lines.count());
    child.stdin.take().unwrap().write_all(b"snapshot part1 part1.snap\n").unwrap();
    let (status, stderr) = exit_and_stderr(&mut child, PATIENCE);
    drain.join().unwrap();
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("matrix-tui: VM 'part1': snapshot not taken"), "{stderr}");
}
