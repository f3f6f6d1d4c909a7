//! The one tmux harness of the tests: every terminal runs on a tmux server
//! of its own (`tmux -L` with a name unique to this process and terminal,
//! and no user configuration), so that tests running at once, or two test
//! runs on one machine, never see or end each other's terminals; the server
//! is killed when the terminal is dropped, however the test ends.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// How long a screen may take to show what a test waits for: generous, since
/// a busy machine (another process on a CPU) slows the start of a run.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Held by every terminal of this test binary: shared by most, taken
/// alone by a run that keeps more CPUs busy than the host may have to spare
/// (several cores spinning), so that beside another process on a CPU the
/// terminals running at once never starve each other's UI threads.
static CPUS: RwLock<()> = RwLock::new(());

/// A terminal's hold on [`CPUS`], released after its server is killed.
enum CpuHold {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// A terminal of a given size running one command, on its own tmux server.
pub struct Tmux {
    server: String,
    _cpus: CpuHold,
}

impl Tmux {
    /// Starts `command` in a terminal of `width` x `height`, on a server
    /// named uniquely ([`unique_name`]).
    pub fn start(command: &str, width: u16, height: u16) -> Self {
        // A test that failed while holding it poisons nothing of ours.
        let hold = CpuHold::Shared(CPUS.read().unwrap_or_else(PoisonError::into_inner));
        Self::start_holding(command, width, height, hold)
    }

    /// Starts `command` as [`Tmux::start`] does, but with no other terminal
    /// of this test binary running beside it: for a run of several busy cores.
    pub fn start_alone(command: &str, width: u16, height: u16) -> Self {
        let hold = CpuHold::Alone(CPUS.write().unwrap_or_else(PoisonError::into_inner));
        Self::start_holding(command, width, height, hold)
    }

    fn start_holding(command: &str, width: u16, height: u16, hold: CpuHold) -> Self {
        let tmux = Self { server: unique_name("mtui"), _cpus: hold };
        let output = tmux
            .command()
            .args(["new-session", "-d", "-s", "main", "-x", &width.to_string(), "-y", &height.to_string(), command])
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(output.status.success(), "tmux did not start: {}", String::from_utf8_lossy(&output.stderr));
        tmux
    }

    /// A tmux command addressed to this terminal's server.
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.server, "-f", "/dev/null"]);
        command
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let output = self.command().args(["capture-pane", "-p", "-t", "main"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: "q", "Tab", "C-c").
    pub fn keys(&self, keys: &str) {
        let status = self.command().args(["send-keys", "-t", "main", keys]).status().unwrap();
        assert!(status.success(), "tmux send-keys {keys}");
    }

    /// Resizes the terminal.
    pub fn resize(&self, width: u16, height: u16) {
        let status = self
            .command()
            .args(["resize-window", "-t", "main", "-x", &width.to_string(), "-y", &height.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "tmux resize-window");
    }

    /// Waits until the screen shows all of `texts` ([`PATIENCE`] at most)
    /// and returns it.
    pub fn wait_for(&self, texts: &[&str]) -> String {
        self.wait_for_within(texts, PATIENCE)
    }

    /// Waits until the screen shows all of `texts` (`bound` at most) and
    /// returns it.
    pub fn wait_for_within(&self, texts: &[&str], bound: Duration) -> String {
        let give_up = Instant::now() + bound;
        loop {
            let screen = self.screen();
            if texts.iter().all(|text| screen.contains(text)) {
                return screen;
            }
            let missing: Vec<&&str> = texts.iter().filter(|text| !screen.contains(**text)).collect();
            assert!(Instant::now() < give_up, "the screen never showed {missing:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Waits until the screen no longer shows `text` ([`PATIENCE`] at most).
    pub fn wait_without(&self, text: &str) {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if !screen.contains(text) {
                return;
            }
            assert!(Instant::now() < give_up, "the screen still shows {text:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// A name no other test or test run on this machine uses: `label`, this
/// process's id and a counter (for sockets and files outside a temporary
/// directory).
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{label}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
