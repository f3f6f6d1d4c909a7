//! A headless run steered through --control, read line by line with a
//! bound, for tests of the real binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::binary;

/// A headless run under --control, its stdout read line by line with a bound.
pub struct Controlled {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Controlled {
    pub fn start(args: &[&str]) -> Self {
        let mut child = binary()
            .args(["run", "--control"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines, seen: Vec::new() }
    }

    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{command}").unwrap();
    }

    /// The next line, within 15 s.
    pub fn next(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => panic!("no line in 15 s; so far:\n{}", self.seen.join("\n")),
            Err(RecvTimeoutError::Disconnected) => panic!("the run ended; it printed:\n{}", self.seen.join("\n")),
        }
    }

    /// Reads lines until one contains `text`; returns it.
    pub fn until(&mut self, text: &str) -> String {
        loop {
            let line = self.next();
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Quits and returns the exit status and stderr.
    pub fn quit(mut self) -> (i32, String) {
        // A run may have ended by itself (its last VM moved away).
        let _ = writeln!(self.stdin.as_mut().unwrap(), "quit");
        drop(self.stdin.take());
        while self.lines.recv_timeout(Duration::from_secs(15)).is_ok() {}
        let output = self.child.wait_with_output().unwrap();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Runs the binary to its end (at most 20 s) and returns status, stdout, stderr.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = binary().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < give_up, "matrix-tui {args:?} did not end in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The guest's own lines of VM `name` (the hypervisor's `[matrix]` ones left out).
pub fn guest_lines(stdout: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}| ");
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter(|line| !line.starts_with("[matrix]"))
        .map(str::to_string)
        .collect()
}
