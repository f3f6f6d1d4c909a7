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
        // Kept before raw mode, for a forced exit or an abort to restore.
        crate::os::rescue::arm();
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

/// What the terminal is sent when the UI leaves it: mouse capture off, the
/// alternate screen left, the cursor shown (a recording ends with it too).
pub fn leave_sequence() -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = execute!(bytes, DisableMouseCapture, LeaveAlternateScreen, cursor::Show);
    bytes
}

/// Leaves the alternate screen and raw mode, if we entered them. Safe to call
/// more than once, and from a panic hook on any thread: on one that may not
/// touch the terminal (the core thread, under seccomp) it fails, and the
/// terminal stays marked for the UI thread's own restore (its guard, as the
/// core's end reaches it) and for the rescue.
pub fn restore() {
    if !ACTIVE.load(Ordering::SeqCst) {
        return;
    }
    let mut stdout = io::stdout();
    let left = stdout.write_all(&leave_sequence()).and_then(|()| stdout.flush());
    let cooked = disable_raw_mode();
    if left.is_ok() && cooked.is_ok() && ACTIVE.swap(false, Ordering::SeqCst) {
        crate::os::rescue::disarm();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rescue_sends_what_the_ui_sends_when_it_leaves() {
        assert_eq!(leave_sequence(), crate::os::rescue::RESTORE);
    }
}
