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
use crate::config::TimerKind;

/// A timer armed with absolute CLOCK_MONOTONIC deadlines.
pub trait QuantumTimer {
    /// Fires at `first_ns` (monotonic) and then every `period_ns` (0: once),
    /// replacing any earlier arming.
    fn arm(&mut self, first_ns: u64, period_ns: u64);
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

    fn set(&mut self, first_ns: u64, period_ns: u64) {
        let spec = libc::itimerspec { it_interval: timespec(period_ns), it_value: timespec(first_ns) };
        // SAFETY: `id` is a live timer of ours; the specs are valid values.
        let result = unsafe { libc::timer_settime(self.id, libc::TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        debug_assert_eq!(result, 0, "timer_settime: {}", io::Error::last_os_error());
    }
}

impl QuantumTimer for PosixTimer {
    fn arm(&mut self, first_ns: u64, period_ns: u64) {
        // An absolute 0 would disarm; a deadline is never that early anyway.
        self.set(first_ns.max(1), period_ns);
    }

    fn disarm(&mut self) {
        self.set(0, 0);
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
                let mut pinned_to = None;
                loop {
                    reader.read();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    target.signal();
                    follow_core(&target, &mut pinned_to);
                }
            })?
        };
        Ok(Self { timer, stop, kicker: Some(kicker) })
    }
}

/// Moves the calling kicker thread to the CPU the core thread runs on. The
/// timer expires on that CPU (where the core armed it), and a kicker woken
/// there preempts the core at once, where one woken on an idle CPU waits for
/// that CPU to wake: on this host 24 us at the 99th percentile against 226 us.
fn follow_core(target: &KickTarget, pinned_to: &mut Option<usize>) {
    let Some(cpu) = target.cpu().filter(|&cpu| Some(cpu) != *pinned_to) else { return };
    *pinned_to = Some(cpu);
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes a bit of the
    // set we own (it ignores CPUs beyond the set's size).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        // A CPU outside our cpuset cannot be the core's: a failure leaves the
        // kicker where it was, which only costs latency.
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl QuantumTimer for TimerfdKicker {
    fn arm(&mut self, first_ns: u64, period_ns: u64) {
        let current = Duration::from_nanos(first_ns.max(1));
        let state = match period_ns {
            0 => TimerState::Oneshot(current),
            period => TimerState::Periodic { current, interval: Duration::from_nanos(period) },
        };
        self.timer.set_state(state, SetTimeFlags::Abstime);
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
        timer.arm(deadline, 0);
        wait_for_kick(&run, deadline, &format!("{kind:?}"));
        target.disarm();
    }

    /// Waits (5 s at most) until the handler has set `run`'s immediate_exit,
    /// which it does only once `deadline` has come.
    fn wait_for_kick(run: &kvm_run, deadline: u64, what: &str) {
        let give_up = monotonic_ns() + 5_000_000_000;
        // SAFETY: a volatile read of a byte the signal handler may write.
        while unsafe { std::ptr::addr_of!(run.immediate_exit).read_volatile() } == 0 {
            assert!(monotonic_ns() < give_up, "{what}: never kicked");
            std::hint::spin_loop();
        }
        assert!(monotonic_ns() >= deadline, "{what}: kicked before the deadline");
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
    fn a_periodic_timer_kicks_once_every_period() {
        for kind in [TimerKind::Posix, TimerKind::Timerfd] {
            let target = KickTarget::new();
            let _attached = target.attach();
            let mut timer = create(kind, &target).unwrap();
            let mut run = kvm_run::default();
            let (first, period) = (monotonic_ns() + 2_000_000, 3_000_000);
            timer.arm(first, period);
            for tick in 0..3 {
                // The handler stops a slice only once its deadline has come, so
                // each kick seen here is an expiry at or after that tick.
                let deadline = first + tick * period;
                target.set_deadline(deadline);
                // SAFETY: `run` outlives the kicks in this test.
                assert!(!unsafe { target.arm(&mut run) } || monotonic_ns() >= deadline);
                wait_for_kick(&run, deadline, &format!("{kind:?}, tick {tick}"));
                target.disarm();
            }
            timer.disarm();
        }
    }

    #[test]
    fn a_disarmed_timer_stays_quiet_and_drops_cleanly() {
        for kind in [TimerKind::Posix, TimerKind::Timerfd] {
            let target = KickTarget::new();
            let _attached = target.attach();
            let mut timer = create(kind, &target).unwrap();
            timer.arm(monotonic_ns() + 1_000_000_000, 0);
            timer.disarm();
            drop(timer);
        }
    }
}
