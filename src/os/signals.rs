//! The stop signals (SIGINT, SIGTERM, SIGHUP): blocked in every thread and
//! taken by one thread that waits for them (`matrix-signals`).
//!
//! A handler runs on whichever thread the kernel picks, and the busy core
//! thread is the likeliest pick; its seccomp filter refuses the handler's
//! write to a self-pipe, and the signal was lost. A blocked signal is never
//! delivered to a thread at all: it stays pending until `sigwait` takes it
//! on the one thread that asks. So [`install`] blocks the set in the main
//! thread before any other thread exists (they all inherit the mask).
//!
//! What a signal does:
//! - with no run under way (listing guests, a bench), the process exits at
//!   once with status 128 + the signal's number;
//! - during a run, the run's front end hears it on the channel [`claim`]
//!   gave, ends the run and writes its report as after `q`;
//! - if the run has not ended [`GRACE`] later, or a second stop signal
//!   comes, the terminal is restored and the process exits with 128 + the
//!   signal's number, whatever holds the run up (a terminal or pipe that
//!   is not read, say).
//!
//! It also installs the abort handler of [`rescue`], which puts the
//! terminal back if an allocation fails while the UI has it.

use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::rescue;

/// How long a run may take to end after a stop signal before the process
/// exits without it. Ending takes well under a second (the core is kicked
/// out of KVM_RUN, writers get a bounded time to finish).
pub const GRACE: Duration = Duration::from_secs(5);

/// The signals that stop a run.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Where the next stop signal goes: the front end of the run under way.
static RUN: Mutex<Option<Sender<libc::c_int>>> = Mutex::new(None);

/// The signal set could not be taken over.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the handling of stop signals: {0}; the process is out of memory or threads (see ulimit -v, -u)")]
pub struct SignalError(#[from] std::io::Error);

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before
    // sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the stop signals in the calling thread (call it first, from the
/// main thread, so every later thread inherits the mask) and starts the
/// thread that waits for them. Also makes a file size limit an error on
/// write (EFBIG) rather than a kill by SIGXFSZ, like a full disk.
pub fn install() -> Result<(), SignalError> {
    let set = stop_set();
    // SAFETY: the set is initialised; a null old-mask pointer is allowed.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        return Err(SignalError(std::io::Error::from_raw_os_error(blocked)));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    rescue::install();
    std::thread::Builder::new().name("matrix-signals".into()).spawn(move || wait_for_signals(set))?;
    Ok(())
}

/// Takes the next stop signal for a run: it arrives on the channel (its
/// number) instead of ending the process.
pub fn claim() -> Receiver<libc::c_int> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    *RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender);
    receiver
}

fn wait_for_signals(set: libc::sigset_t) {
    loop {
        let Some(signal) = wait(&set, None) else { continue };
        let run = RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let Some(run) = run else { exit_now(signal, None) };
        let _ = run.try_send(signal);
        // The run has GRACE to end; the process exits with it, ending this thread.
        let again = wait(&set, Some(GRACE));
        exit_now(
            signal,
            Some(match again {
                Some(_) => "a second stop signal came before the run had ended",
                None => "the run did not end in time (an output nobody reads?)",
            }),
        );
    }
}

/// Waits for one of the stop signals (for at most `limit`); its number.
fn wait(set: &libc::sigset_t, limit: Option<Duration>) -> Option<libc::c_int> {
    loop {
        let signal = match limit {
            // SAFETY: the set is initialised and blocked in this thread; a
            // null siginfo pointer is allowed.
            None => unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) },
            Some(limit) => {
                let timeout = libc::timespec {
                    tv_sec: limit.as_secs() as libc::time_t,
                    tv_nsec: libc::c_long::from(limit.subsec_nanos() as i32),
                };
                // SAFETY: as above; the timeout lives for the call.
                unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) }
            }
        };
        if signal > 0 {
            return Some(signal);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return None,
            // EINTR: another signal (the kick, say) ran a handler here.
            _ => continue,
        }
    }
}

fn exit_now(signal: libc::c_int, why: Option<&str>) -> ! {
    rescue::restore_terminal();
    // A snapshot half written is not left behind.
    super::files::remove_partial_files();
    if let Some(why) = why {
        eprintln!("matrix-tui: stopped by {} without the run's report: {why}", name(signal));
    }
    // Not process::exit: that flushes stdout under its lock, which a
    // thread blocked on a stalled pipe may hold.
    // SAFETY: _exit ends the process; it touches no Rust state.
    unsafe { libc::_exit(128 + signal) }
}

/// The signal's name, for messages.
pub fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_set_holds_exactly_the_three_signals() {
        let set = stop_set();
        for signal in 1..32 {
            // SAFETY: the set is initialised and the number is valid.
            let member = unsafe { libc::sigismember(&set, signal) } == 1;
            assert_eq!(member, STOP_SIGNALS.contains(&signal), "signal {signal}");
        }
    }
}
