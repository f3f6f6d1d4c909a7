//! Putting the terminal into raw mode and the alternate screen, and always
//! putting it back: when the UI returns, when it errs, and on a panic anywhere
//! (a hook restores the terminal before the panic message is printed).

use std::io::{self, Write};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use crossterm::{cursor, execute};

/// Whether the terminal is in raw mode on our account.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// While alive, the terminal is set up for the UI; dropping it restores it.
pub struct TerminalGuard(());

impl TerminalGuard {
    /// Enters raw mode, the alternate screen and mouse capture, writing the
    /// escape sequences to `out` (the recorded terminal writer).
    pub fn enter(out: &mut impl Write) -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = Self(());
        execute!(out, EnterAlternateScreen, EnableMouseCapture, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode, if we entered them. Safe to call
/// more than once, and from a panic hook.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen, cursor::Show);
        let _ = disable_raw_mode();
    }
}

/// Restores the terminal without stdout, for a forced exit while another
/// thread may hold stdout's lock, blocked on a terminal that does not read:
/// the escape sequences go to a fresh non-blocking descriptor of the
/// controlling terminal (dropped if it would block), then raw mode is left.
pub fn restore_without_stdout() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    // Mouse capture off, alternate screen off, cursor on.
    const RESTORE: &[u8] = b"\x1b[?1006l\x1b[?1015l\x1b[?1003l\x1b[?1002l\x1b[?1000l\x1b[?1049l\x1b[?25h";
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open("/dev/tty") {
        let _ = tty.write_all(RESTORE);
    }
    let _ = disable_raw_mode();
}

fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
