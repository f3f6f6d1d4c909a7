//! A run's configuration: the VMs and how to schedule them, validated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::vm::layout::DEFAULT_MEMORY;

/// How the core picks the next VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// One at a time: switch to the next VM on every guest I/O exit (no timer).
    Io,
    /// Round robin: one quantum each, ended by the timer or a halt/yield.
    Rr,
    /// Weighted fair: each quantum split by weight, measured time repaid.
    #[default]
    Fair,
    /// Strict gang (co-scheduling): a VM of several vCPUs runs all of them
    /// at once on as many cores, or none; VMs of one vCPU as under `fair`.
    Gang,
}

impl Policy {
    /// The name used in reports and scenarios.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Rr => "rr",
            Self::Fair => "fair",
            Self::Gang => "gang",
        }
    }

    /// The next policy, for front ends that cycle through them (they skip
    /// `gang` where the run cannot take it).
    pub fn next(self) -> Self {
        match self {
            Self::Io => Self::Rr,
            Self::Rr => Self::Fair,
            Self::Fair => Self::Gang,
            Self::Gang => Self::Io,
        }
    }

    /// Whether VMs of one vCPU share time by weight (`fair`, and `gang`
    /// beside its windows).
    pub fn weighs(self) -> bool {
        matches!(self, Self::Fair | Self::Gang)
    }
}

/// One VM of a run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Its name (unique in the run).
    pub name: String,
    /// The GUEST it was given: a built-in name or a path.
    pub guest: String,
    /// The image bytes.
    pub image: Arc<[u8]>,
    /// Scheduling weight ([`MIN_WEIGHT`] ..= [`MAX_WEIGHT`]).
    pub weight: f64,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// Guest arguments.
    pub args: Vec<u64>,
    /// Start paused (to be stepped from its first instruction, or resumed).
    pub paused: bool,
    /// Serve gdb for this VM here; it starts stopped at its entry point.
    pub gdb: Option<crate::debug::ListenAddress>,
    /// CPU mode, load address and entry.
    pub layout: crate::vm::GuestLayout,
    /// Ports mapped to hypercalls, and whether other ports are shown.
    pub ports: crate::hypercall::PortMap,
    /// A snapshot to restore instead of starting the image (a restart
    /// restores it again).
    pub snapshot: Option<Arc<crate::snapshot::Snapshot>>,
    /// Its virtual CPUs (1 ..= [`crate::vm::MAX_VCPUS`]); they share its weight.
    pub vcpus: u32,
    /// The cores it may run on (`--cpus` over 1; empty: any).
    pub pin: Vec<usize>,
}

impl VmConfig {
    /// A VM with default weight (1), memory (2 MiB) and no arguments.
    pub fn new(name: impl Into<String>, guest: impl Into<String>, image: Arc<[u8]>) -> Self {
        Self {
            name: name.into(),
            guest: guest.into(),
            image,
            weight: 1.0,
            memory_size: DEFAULT_MEMORY,
            args: Vec::new(),
            paused: false,
            gdb: None,
            layout: crate::vm::GuestLayout::default(),
            ports: crate::hypercall::PortMap::default(),
            snapshot: None,
            vcpus: 1,
            pin: Vec::new(),
        }
    }
}

/// Smallest scheduling weight (as cgroup v2's `cpu.weight`).
pub const MIN_WEIGHT: f64 = 1.0;
/// Largest scheduling weight (as cgroup v2's `cpu.weight`).
pub const MAX_WEIGHT: f64 = 10_000.0;

/// Checks a scheduling weight: a number from [`MIN_WEIGHT`] to [`MAX_WEIGHT`]
/// (fractions allowed). The message says what is wrong and what to give.
pub fn check_weight(weight: f64) -> Result<f64, String> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        // A huge weight is shown as 1e308, not as its 309 digits.
        let shown = if weight.abs() >= 1e6 { format!("{weight:e}") } else { weight.to_string() };
        Err(format!("weight {shown} is out of range: give a number from 1 to 10000 (as cgroup v2's cpu.weight)"))
    }
}

/// Shortest quantum.
pub const MIN_QUANTUM: Duration = Duration::from_micros(100);
/// Longest quantum.
pub const MAX_QUANTUM: Duration = Duration::from_secs(1);
/// Default quantum.
pub const DEFAULT_QUANTUM: Duration = Duration::from_millis(1);

/// Everything the core needs to start a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The VMs, in order.
    pub vms: Vec<VmConfig>,
    /// The scheduling policy.
    pub policy: Policy,
    /// The quantum (the period under `fair`), within [MIN_QUANTUM, MAX_QUANTUM].
    pub quantum: Duration,
    /// The timer that ends slices.
    pub timer: TimerKind,
    /// Keep the core alive when every VM has finished (a UI may restart them);
    /// otherwise the run ends then.
    pub stay_open: bool,
    /// Record every I/O exit's time and every slice's charge in memory, for
    /// the report's `timings` (the bench's window analysis).
    pub timings: bool,
    /// Send exit and slice records to the front end ([`crate::event::Event::Exits`]
    /// and [`crate::event::Event::Slices`]): the UI's inspector and timeline.
    pub live_records: bool,
    /// Write every exit and slice to this file as JSON Lines (`run --trace`).
    pub trace: Option<PathBuf>,
    /// The calibration the demo guests' units were sized by, if they were
    /// (it goes into the report).
    pub calibration: Option<Calibration>,
    /// Confine the core thread with a seccomp filter once it is set up.
    pub seccomp: bool,
    /// Arm each slice's timer early by the kick latency measured so far
    /// (`crate::sched::compensation`), so that slices end at their deadline.
    pub compensate: bool,
    /// How VMs move out (`migrate NAME ADDR`).
    pub migration: crate::migration::MigrationSettings,
    /// The secret this run's migrations prove (`--migrate-secret`).
    pub migrate_secret: Option<std::sync::Arc<crate::migration::secret::Secret>>,
    /// Core threads, one per host CPU (`--cpus`; 1 is the single core).
    pub cpus: usize,
    /// Under `fair`, a sleeper that wakes owed time runs next, before the VM
    /// whose slice its wake cut short (`--wake-preempt`); otherwise it waits
    /// for its turn by virtual deadline.
    pub wake_preempt: bool,
}

impl RunConfig {
    /// A run of `vms` with the defaults: fair, 1 ms, POSIX timer, ending when
    /// every VM has finished.
    pub fn new(vms: Vec<VmConfig>) -> Self {
        Self {
            vms,
            policy: Policy::Fair,
            quantum: DEFAULT_QUANTUM,
            timer: TimerKind::Posix,
            stay_open: false,
            timings: false,
            live_records: false,
            trace: None,
            calibration: None,
            seccomp: true,
            compensate: true,
            migration: Default::default(),
            migrate_secret: None,
            cpus: 1,
            wake_preempt: false,
        }
    }

    /// The same run under another policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// Which timer ends slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerKind {
    /// POSIX timer signalling the core thread directly (SIGEV_THREAD_ID).
    Posix,
    /// timerfd read by a kicker thread that signals the core thread.
    Timerfd,
}

impl TimerKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Posix => "posix",
            Self::Timerfd => "timerfd",
        }
    }
}

/// What the calibration found.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Calibration {
    /// Iterations of the guests' busy loop (`dec; jnz`) per millisecond of guest CPU.
    pub loop_iterations_per_ms: u64,
    /// How long measuring took.
    pub measured_ms: f64,
}

impl Calibration {
    /// Iterations that take `time` of guest CPU here (at least 1).
    pub fn iterations_for(&self, time: Duration) -> u64 {
        (self.loop_iterations_per_ms as f64 * time.as_secs_f64() * 1000.0).round().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_bounded_like_cgroup_cpu_weight() {
        assert_eq!(check_weight(1.0), Ok(1.0));
        assert_eq!(check_weight(10_000.0), Ok(10_000.0));
        assert_eq!(check_weight(2.5), Ok(2.5));
        for bad in [0.0, 0.5, -3.0, 10_000.5, 1e308, f64::NAN, f64::INFINITY] {
            let message = check_weight(bad).unwrap_err();
            assert!(message.contains("from 1 to 10000"), "{bad}: {message}");
        }
    }
}
