//! Quantum timers: end a slice by kicking the core thread at an absolute
//! deadline. Two backends, chosen with `--timer`:
//!
//! - `posix`: `timer_create` with `SIGEV_THREAD_ID`, so the kernel sends the kick
//!   signal straight to the core thread when the deadline passes.
//! - `timerfd`: a timerfd, read by a small kicker thread (`matrix-kicker`) that
//!   then sends the kick signal. One more thread wake-up on the way.
//!
//! Either way the kick goes through [`KickTarget`]: the signal handler sets
//! `immediate_exit` only once the current slice's deadline has passed, so a
//! timer that fires late for an earlier slice cannot cut the next one short.

use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use timerfd::{ClockId, SetTimeFlags, TimerFd, TimerState};

use super::kick::{KickTarget, kick_signal};

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

/// A one-shot timer armed with absolute CLOCK_MONOTONIC deadlines.
pub trait QuantumTimer {
    /// Fires once at `deadline_ns` (monotonic), replacing any earlier arming.
    fn arm(&mut self, deadline_ns: u64);
    /// Cancels a pending expiry.
    fn disarm(&mut self);
}

/// Creates a timer that kicks the thread attached to `target` (which must be
/// attached already: the POSIX backend needs its thread id).
pub fn create(kind: TimerKind, target: &Arc<KickTarget>) -> io::Result<Box<dyn QuantumTimer>> {
    match kind {
        TimerKind::Posix => Ok(Box::new(PosixTimer::new(target)?)),
        TimerKind::Timerfd => Ok(Box::new(TimerfdKicker::new(target)?)),
    }
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// `timer_create(CLOCK_MONOTONIC)` delivering the kick signal to one thread.
struct PosixTimer {
    id: libc::timer_t,
}

impl PosixTimer {
    fn new(target: &KickTarget) -> io::Result<Self> {
        let tid = target.tid();
        if tid == 0 {
            return Err(io::Error::other("the core thread must attach to its kick target before timers exist"));
        }
        // SAFETY: a zeroed sigevent is valid; the fields set are the ones
        // SIGEV_THREAD_ID reads. timer_create writes the id we own.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = kick_signal();
            event.sigev_notify_thread_id = tid;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { id })
        }
    }

    fn set(&mut self, deadline_ns: u64) {
        let spec = libc::itimerspec { it_interval: timespec(0), it_value: timespec(deadline_ns) };
        // SAFETY: `id` is a live timer of ours; the specs are valid values.
        let result = unsafe { libc::timer_settime(self.id, libc::TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        debug_assert_eq!(result, 0, "timer_settime: {}", io::Error::last_os_error());
    }
}

impl QuantumTimer for PosixTimer {
    fn arm(&mut self, deadline_ns: u64) {
        // An absolute 0 would disarm; a deadline is never that early anyway.
        self.set(deadline_ns.max(1));
    }

    fn disarm(&mut self) {
        self.set(0);
    }
}

impl Drop for PosixTimer {
    fn drop(&mut self) {
        // SAFETY: `id` came from timer_create and is deleted once.
        unsafe { libc::timer_delete(self.id) };
    }
}

/// A timerfd and the kicker thread that turns its expiries into kicks.
struct TimerfdKicker {
    timer: TimerFd,
    stop: Arc<AtomicBool>,
    kicker: Option<JoinHandle<()>>,
}

impl TimerfdKicker {
    fn new(target: &Arc<KickTarget>) -> io::Result<Self> {
        let timer = TimerFd::new_custom(ClockId::Monotonic, false, true)?;
        let reader_fd = timer.as_fd().try_clone_to_owned()?;
        // SAFETY: `reader_fd` is a fresh dup of a timerfd, owned by nobody else;
        // both descriptors refer to the same timer.
        let reader = unsafe { TimerFd::from_raw_fd(reader_fd.into_raw_fd()) };
        let stop = Arc::new(AtomicBool::new(false));
        let kicker = {
            let stop = Arc::clone(&stop);
            let target = Arc::clone(target);
            std::thread::Builder::new().name("matrix-kicker".into()).spawn(move || {
                loop {
                    reader.read();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    target.signal();
                }
            })?
        };
        Ok(Self { timer, stop, kicker: Some(kicker) })
    }
}

impl QuantumTimer for TimerfdKicker {
    fn arm(&mut self, deadline_ns: u64) {
        self.timer.set_state(TimerState::Oneshot(Duration::from_nanos(deadline_ns.max(1))), SetTimeFlags::Abstime);
    }

    fn disarm(&mut self) {
        self.timer.set_state(TimerState::Disarmed, SetTimeFlags::Default);
    }
}

impl Drop for TimerfdKicker {
    fn drop(&mut self) {
        // Wake the kicker with an expiry it will see as the signal to stop.
        self.stop.store(true, Ordering::SeqCst);
        self.timer.set_state(TimerState::Oneshot(Duration::from_nanos(1)), SetTimeFlags::Default);
        if let Some(kicker) = self.kicker.take() {
            let _ = kicker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kick::monotonic_ns;
    use kvm_bindings::kvm_run;

    /// Arms `kind` a little ahead and waits until the handler has set
    /// immediate_exit on a fake kvm_run: the deadline kick arrives on this thread.
    fn kick_arrives(kind: TimerKind) {
        let target = KickTarget::new();
        let _attached = target.attach();
        let mut timer = create(kind, &target).unwrap();
        let mut run = kvm_run::default();
        let deadline = monotonic_ns() + 2_000_000;
        target.set_deadline(deadline);
        // SAFETY: `run` outlives the kicks in this test.
        assert!(!unsafe { target.arm(&mut run) });
        timer.arm(deadline);
        let give_up = monotonic_ns() + 5_000_000_000;
        // SAFETY: a volatile read of a byte the signal handler may write.
        while unsafe { std::ptr::addr_of!(run.immediate_exit).read_volatile() } == 0 {
            assert!(monotonic_ns() < give_up, "{kind:?} never kicked");
            std::hint::spin_loop();
        }
        assert!(monotonic_ns() >= deadline, "kicked before the deadline");
        target.disarm();
    }

    #[test]
    fn posix_timer_kicks_at_the_deadline() {
        kick_arrives(TimerKind::Posix);
    }

    #[test]
    fn timerfd_kicker_kicks_at_the_deadline() {
        kick_arrives(TimerKind::Timerfd);
    }

    #[test]
    fn a_disarmed_timer_stays_quiet_and_drops_cleanly() {
        for kind in [TimerKind::Posix, TimerKind::Timerfd] {
            let target = KickTarget::new();
            let _attached = target.attach();
            let mut timer = create(kind, &target).unwrap();
            timer.arm(monotonic_ns() + 1_000_000_000);
            timer.disarm();
            drop(timer);
        }
    }
}
