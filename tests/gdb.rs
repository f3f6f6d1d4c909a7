//! Real gdb against `run --gdb`: gdb in batch mode (`gdb -batch -x FILE`)
//! drives a VM of a headless run while another VM of the run keeps printing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long anything here may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// A headless run of the real binary, its stdout going to a file.
struct Run {
    child: Child,
    output: PathBuf,
}

impl Run {
    fn start(dir: &Path, args: &[&str]) -> Self {
        common::kvm();
        let output = dir.join("run.out");
        let child = common::binary()
            .args(["run", "--headless"])
            .args(args)
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(dir.join("run.err")).unwrap())
            .spawn()
            .expect("the binary starts");
        Self { child, output }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits until the run's output holds `line` (a condition, not a guess at a time).
    fn wait_for(&mut self, line: &str) -> String {
        self.wait_for_nth(line, 1)
    }

    /// Waits until the run's output holds `line` `times` times.
    fn wait_for_nth(&mut self, line: &str, times: usize) -> String {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text.matches(line).count() >= times {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the run ended ({status}) before printing {line:?}:\n{text}");
            }
            assert!(start.elapsed() < PATIENCE, "no {line:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A run of a ticker `t` beside VM `name` (running `guest`) under gdb on a
/// Unix socket in `dir`, waiting at its entry point; and the socket.
fn ticker_beside(dir: &Path, name: &str, guest: &str) -> (Run, PathBuf) {
    let socket = dir.join(format!("{name}.gdb.sock"));
    let vm = format!("{name}={guest}");
    let gdb = format!("{name}={}", socket.display());
    let mut run = Run::start(dir, &["--vm", "t=ticker", "--vm", &vm, "--gdb", &gdb]);
    run.wait_for(&format!("{name}| [matrix] gdb: waiting at the entry point"));
    (run, socket)
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gdb_command(dir: &Path, script: &str, elf: &Path) -> Command {
    let file = dir.join("session.gdb");
    std::fs::write(&file, script).unwrap();
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-x"]).arg(&file).arg(elf);
    gdb
}

/// Runs gdb on `script` to the end and returns what it printed (both streams).
fn gdb(dir: &Path, script: &str, elf: &Path) -> String {
    let output: Output =
        gdb_command(dir, script, elf).output().expect("gdb runs (install it: apt-get install gdb; .ci/run does)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "gdb failed:\n{text}");
    assert!(!text.contains("Error in sourced command file"), "{text}");
    text
}

/// The values of `register` that `info registers` printed, in order.
fn values_of(register: &str, text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(register))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap())
        .collect()
}

/// The rip values `info registers rip` printed, in order.
fn rips(text: &str) -> Vec<u64> {
    values_of("rip", text)
}

/// `info symbol`-free check that `rip` lies inside `function`: gdb prints
/// `<function+offset>` after the value.
fn inside(text: &str, function: &str) -> bool {
    text.lines().any(|line| line.starts_with("rip") && line.contains(&format!("<{function}")))
}

fn export(dir: &Path, guest: &str) -> PathBuf {
    let path = dir.join(guest);
    std::fs::write(&path, matrix_tui::guests::builtin(guest).unwrap().image).unwrap();
    path
}

fn build_c_example(dir: &Path) -> PathBuf {
    common::make_example("c", dir);
    dir.join("hello.elf")
}

/// Waits in gdb's `shell` until the ticker has printed `lines` lines since
/// `after` appeared in the run's output: proof that it ran meanwhile.
fn wait_for_ticker(output: &Path, after: &str, lines: usize) -> String {
    format!(
        "shell timeout 30 sh -c 'until awk \"/{after}/{{f=1}} f && /^t\\\\| [0-9]/{{n++}} END{{exit !(n>={lines})}}\" {}; do sleep 0.02; done'\n",
        output.display()
    )
}

#[test]
fn a_gdb_session_on_the_c_example_breaks_steps_prints_watches_and_detaches_while_a_ticker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let elf = build_c_example(dir.path());
    let (mut run, socket) = ticker_beside(dir.path(), "c", &elf.display().to_string());
    let script = format!(
        "set confirm off\ntarget remote {}\nbreak greet\ncontinue\ninfo registers rip\n{}stepi\ninfo registers rip\n\
         next\nnext\nprint count\nprint printed\nfinish\nwatch *(long *)0x400\ncontinue\ncontinue\ndetach\n",
        socket.display(),
        wait_for_ticker(&run.output, "c\\\\| \\\\[matrix\\\\] gdb: stopped: breakpoint", 100),
    );
    let text = gdb(dir.path(), &script, &elf);
    assert!(text.contains("Breakpoint 1, greet"), "{text}");
    let rips = rips(&text);
    assert_eq!(rips.len(), 2, "{text}");
    assert!(inside(&text, "greet"), "{text}");
    assert!(rips[1] > rips[0], "stepi advances rip: {rips:x?}");
    assert!(text.contains("$1 = "), "a local: {text}");
    assert!(text.contains("$2 = 0"), "the global before greet returns: {text}");
    assert!(text.contains("Old value = 0") && text.contains("New value = 42"), "{text}");
    assert!(text.contains("Program received signal SIGTRAP"), "the halt: {text}");
    assert!(text.contains("[Inferior 1 (process 1) detached]"), "{text}");
    let out = run.wait_for("c| [matrix] gdb: debugger detached (the VM has ended)");
    assert!(out.contains("c| [matrix] gdb: stopped: breakpoint at 0x"), "{out}");
    assert!(out.contains("c| [matrix] gdb: stopped: watchpoint (write) at 0x400"), "{out}");
    assert!(out.contains("c| Hello from C!\n"), "{out}");
    // While c sat at its breakpoint, the ticker had the CPU.
    let stopped = out.split("c| [matrix] gdb: stopped: breakpoint").nth(1).unwrap();
    let while_stopped = stopped.split("c| [matrix] gdb: continued").next().unwrap();
    assert!(while_stopped.matches("\nt| ").count() >= 100, "{while_stopped}");
    // The ticker went on after the c VM halted too.
    let after_detach = out.split("debugger detached").nth(1).unwrap().to_string();
    let more = run.wait_for(&format!("{after_detach}t| "));
    assert!(more.len() > out.len());
}

#[test]
fn a_gdb_session_on_a_rust_guest_breaks_in_a_function_and_prints_its_local_and_a_global() {
    let dir = tempfile::tempdir().unwrap();
    let elf = export(dir.path(), "debugme");
    let (mut run, socket) = ticker_beside(dir.path(), "d", "debugme");
    let script = format!(
        "set confirm off\ntarget remote {}\nbreak debugme::add_up\ncontinue\ninfo registers rip\nstepi\n\
         info registers rip\nnext\nnext\nprint total\nprint debugme::ROUNDS.v.value\ndelete\nset language c\n\
         watch *(long *)0x400\ncontinue\ncontinue\ndetach\n",
        socket.display()
    );
    let text = gdb(dir.path(), &script, &elf);
    assert!(text.contains("Breakpoint 1, debugme::add_up (n=10)"), "{text}");
    let rips = rips(&text);
    assert!(inside(&text, "debugme::add_up") && rips[1] > rips[0], "{text}");
    assert!(text.contains("$1 = 0"), "the local: {text}");
    assert!(text.contains("$2 = 0"), "the global, before the first round ends: {text}");
    assert!(text.contains("Old value = 0") && text.contains("New value = 42"), "{text}");
    assert!(text.contains("Program received signal SIGTRAP"), "{text}");
    let out = run.wait_for("d| [matrix] gdb: debugger detached (the VM has ended)");
    // What the guest printed after the breakpoint: its sums and its rounds.
    let printed: Vec<&str> = out.lines().filter(|l| l.starts_with("d| ") && !l.contains("[matrix]")).collect();
    assert_eq!(printed, ["d| 55", "d| 210", "d| 465", "d| 3"], "{out}");
}

#[test]
fn an_interrupt_stops_a_spinning_guest_and_kill_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let elf = export(dir.path(), "spin");
    let (mut run, socket) = ticker_beside(dir.path(), "s", "spin");
    let script = format!("set confirm off\ntarget remote {}\ncontinue\ninfo registers rip\nkill\n", socket.display());
    let gdb = gdb_command(dir.path(), &script, &elf).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Ctrl-C once the core has let the VM go.
    run.wait_for("s| [matrix] gdb: continued");
    Command::new("kill").args(["-INT", &gdb.id().to_string()]).status().unwrap();
    let output = gdb.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Program received signal SIGINT"), "{text}");
    assert!(inside(&text, "_start") || inside(&text, "spin"), "rip inside the spin loop: {text}");
    assert!(text.contains("[Inferior 1 (process 1) killed]"), "{text}");
    let out = run.wait_for("s| [matrix] gdb: debugger killed the VM");
    assert!(out.contains("s| [matrix] gdb: stopped: interrupt"), "{out}");
    let ticks = out.matches("t| ").count();
    run.wait_for(&format!("t| {}\n", ticks + 50));
}

#[test]
fn garbage_and_a_second_debugger_are_refused_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let elf = export(dir.path(), "spin");
    let (mut run, socket) = ticker_beside(dir.path(), "s", "spin");
    // Garbage: the session ends, the VM waits for a debugger that speaks gdb.
    let mut client = UnixStream::connect(&socket).unwrap();
    client.write_all(b"hello\x00\xff$qSupported#00$AAAA").unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reply = Vec::new();
    let _ = client.read_to_end(&mut reply);
    run.wait_for("s| [matrix] gdb: debugger left: it broke the gdb protocol");
    // A second debugger while one is connected is cut off at once.
    let done = dir.path().join("second-refused");
    let script = format!(
        "set confirm off\ntarget remote {}\nshell timeout 30 sh -c 'until [ -e {} ]; do sleep 0.02; done'\n\
         info registers rip\ndetach\n",
        socket.display(),
        done.display()
    );
    let gdb = gdb_command(dir.path(), &script, &elf).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    run.wait_for_nth("s| [matrix] gdb: debugger connected", 2);
    let mut second = UnixStream::connect(&socket).unwrap();
    second.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut refused = Vec::new();
    assert_eq!(second.read_to_end(&mut refused).unwrap_or(0), 0, "the second debugger hears nothing");
    run.wait_for("s| [matrix] gdb: refused a second debugger");
    std::fs::write(&done, "").unwrap();
    let output = gdb.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("rip            0x10000"), "{text}");
    let out = run.wait_for("s| [matrix] gdb: debugger detached; the VM goes on");
    let ticks = out.matches("t| ").count();
    run.wait_for(&format!("t| {}\n", ticks + 50));
}

#[test]
fn a_gdb_address_that_cannot_be_served_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output =
        common::binary().args(["run", "--headless", "--vm", "s=spin", "--gdb", &format!("s={address}")]).output();
    let output = output.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot serve gdb for VM 's' on {address}")), "{stderr}");
    let output = common::binary().args(["run", "--vm", "s=spin", "--gdb", "x=127.0.0.1:1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--gdb names VM 'x'"));
    let output = common::binary().args(["run", "--vm", "s=spin", "--gdb", "s=1234"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("neither HOST:PORT"));
    drop(dir);
}

#[test]
fn a_real_mode_guest_stops_at_its_entry_and_steps_in_16_bit_code() {
    let dir = tempfile::tempdir().unwrap();
    // The Matrix starter's counter: CS:IP = 0x1000:0, shown to gdb as the linear 0x10000.
    let (mut run, socket) = ticker_beside(dir.path(), "c", "counter");
    let script = format!(
        "target remote {}\nset architecture i8086\ninfo registers eip\nx/3i $pc\nstepi\nstepi\nstepi\n\
         info registers eip eax\nhbreak *0x10005\ncontinue\ncontinue\ninfo registers eip eax\ndetach\n",
        socket.display()
    );
    let file = dir.path().join("real.gdb");
    std::fs::write(&file, script).unwrap();
    let output = Command::new("gdb").args(["-batch", "-nx", "-x"]).arg(&file).output().expect("gdb runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && !text.contains("Error in sourced command file"), "{text}");
    // 16-bit code, disassembled as such at the entry.
    assert!(text.contains("=> 0x10000:\txor    %ax,%ax"), "{text}");
    assert!(text.contains("0x10002:\tout    %ax,$0x10"), "{text}");
    assert_eq!(values_of("eip", &text), [0x10000, 0x10005, 0x10005], "{text}");
    let eax: Vec<&str> = text.lines().filter(|line| line.starts_with("eax")).collect();
    assert!(eax[0].contains("0x1 ") && eax[1].contains("0x3 "), "two more rounds of the loop: {eax:?}");
    run.wait_for("c| [matrix] gdb: debugger detached; the VM goes on");
}

#[test]
fn gdb_breaks_in_a_timer_interrupt_handler() {
    let dir = tempfile::tempdir().unwrap();
    let elf = export(dir.path(), "tasks");
    let (mut run, socket) = ticker_beside(dir.path(), "k", &elf.display().to_string());
    // `switch` runs only from the timer's interrupt entry.
    let script = format!(
        "set confirm off\ntarget remote {}\nhbreak tasks::switch\ncontinue\ninfo registers rip\nbacktrace 1\ndetach\n",
        socket.display()
    );
    let text = gdb(dir.path(), &script, &elf);
    assert!(text.contains("Breakpoint 1, tasks::switch"), "{text}");
    assert!(inside(&text, "tasks::switch"), "{text}");
    run.wait_for("k| [matrix] gdb: stopped: breakpoint");
    run.wait_for("k| task B runs");
}

#[test]
fn a_vm_of_two_vcpus_is_two_gdb_threads_stopped_together_while_a_ticker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let elf = export(dir.path(), "pair");
    let socket = dir.path().join("p.gdb.sock");
    let gdb_at = format!("p={}", socket.display());
    let mut run = Run::start(
        dir.path(),
        &["--vm", "t=ticker", "--vm", "p=pair", "--vcpus", "p=2", "--args", "p=2000", "--gdb", &gdb_at],
    );
    run.wait_for("p| [matrix] gdb: waiting at the entry point");
    let script = format!(
        "set confirm off\nset pagination off\ntarget remote {}\ninfo threads\nthread 2\ninfo registers rsp\n\
         stepi\ninfo registers rip\nthread 1\ninfo registers rip rsp\nbreak pair::main\ncontinue\ncontinue\n\
         info threads\ndelete\ndetach\n",
        socket.display()
    );
    let text = gdb(dir.path(), &script, &elf);
    assert!(text.contains("Thread 1.1 (vCPU 0)") && text.contains("Thread 1.2 (vCPU 1)"), "{text}");
    // Each thread has its vCPU's registers: vCPU 1's stack 16 KiB below vCPU 0's.
    assert_eq!(values_of("rsp", &text), [0x1f_c000, 0x20_0000], "{text}");
    // stepi on thread 2 moved vCPU 1 alone: vCPU 0 is still at the entry.
    assert_eq!(rips(&text)[..2], [0x10004, 0x10000], "{text}");
    // Both vCPUs run main; each stop says whose it was (all-stop: the other waits).
    assert!(text.contains("Thread 1 hit Breakpoint 1, pair::main"), "{text}");
    assert!(text.contains("Thread 2 hit Breakpoint 1, pair::main"), "{text}");
    // It goes on after the detach, its vCPUs taking turns, the ticker beside it too.
    run.wait_for("p| [matrix] gdb: debugger detached; the VM goes on");
    let out = run.wait_for("p| cpu1: 3");
    assert!(out.contains("\nt| "), "{out}");
}
