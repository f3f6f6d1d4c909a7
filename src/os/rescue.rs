//! Putting the terminal back when the process cannot end normally: a forced
//! exit after a stop signal (another thread may hold stdout's lock, blocked
//! on a terminal that does not read), or an abort (an allocation that failed
//! under a tight `ulimit -v`). Everything here is async-signal-safe: the
//! terminal's settings from before raw mode are kept in a static when the
//! UI [`arm`]s it, and the restore is `open`, `write`, `tcsetattr` and
//! `close` on the controlling terminal, without blocking.

use std::sync::atomic::{AtomicBool, Ordering};

/// Mouse capture off, alternate screen off, cursor on (the UI's own leave
/// sequence, kept here as bytes for a signal handler).
pub(crate) const RESTORE: &[u8] = b"\x1b[?1006l\x1b[?1015l\x1b[?1003l\x1b[?1002l\x1b[?1000l\x1b[?1049l\x1b[?25h";
const ABORTED: &[u8] =
    b"matrix-tui: the process aborted (a failed allocation is named above: raise ulimit -v, or give \
                         the VMs less memory)\n";

/// Whether the terminal is in the UI's mode and SAVED holds what to restore.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The terminal's settings before raw mode. Written only while not armed.
// SAFETY: an all-zero termios is a valid value (of plain integers).
static mut SAVED: libc::termios = unsafe { std::mem::zeroed() };

/// Keeps the terminal's current settings (call it before raw mode) and arms
/// the rescue. Returns false if stdin is not a terminal (nothing to rescue).
pub fn arm() -> bool {
    ARMED.store(false, Ordering::SeqCst);
    // SAFETY: not armed, so neither handler reads SAVED now; tcgetattr
    // writes a termios we own, through a pointer made without a reference.
    let kept = unsafe { libc::tcgetattr(libc::STDIN_FILENO, &raw mut SAVED) } == 0;
    ARMED.store(kept, Ordering::SeqCst);
    kept
}

/// The terminal was restored the normal way: nothing to rescue any more.
pub fn disarm() {
    ARMED.store(false, Ordering::SeqCst);
}

/// Restores the terminal if it is armed (async-signal-safe; never blocks).
/// Returns whether it did.
pub fn restore_terminal() -> bool {
    if !ARMED.swap(false, Ordering::SeqCst) {
        return false;
    }
    // SAFETY: open, write, tcsetattr and close are async-signal-safe; the
    // path is NUL-terminated; SAVED was written before ARMED was set and is
    // not written while armed.
    unsafe {
        let fd = libc::open(c"/dev/tty".as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY);
        if fd >= 0 {
            libc::write(fd, RESTORE.as_ptr().cast(), RESTORE.len());
            libc::close(fd);
        }
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const SAVED);
    }
    true
}

/// On SIGABRT (an allocation that failed, most likely): restore the
/// terminal if the UI had it, say so, and exit with status 1 (a host
/// error) rather than die with the terminal in raw mode.
extern "C" fn on_abort(_: libc::c_int) {
    restore_terminal();
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, ABORTED.as_ptr().cast(), ABORTED.len());
        libc::_exit(1);
    }
}

/// Installs the SIGABRT handler (once, from the main thread at start).
pub fn install() {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is
    // a valid argument; on_abort only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_restored_unless_armed() {
        disarm();
        assert!(!restore_terminal());
    }
}
