//! A buffered console: `write!` into it, and each full buffer or `flush` becomes
//! one HC_printStr (one VM exit) instead of one exit per byte.

use core::fmt;

const CAPACITY: usize = 256;

/// Text waiting to be printed with HC_printStr.
pub struct Console {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Console {
    /// An empty console buffer (lives on the stack).
    pub const fn new() -> Self {
        Self { buf: [0; CAPACITY], len: 0 }
    }

    /// Prints what is buffered, if anything.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        self.buf[self.len] = 0;
        crate::hc::print_str_at(self.buf.as_ptr() as u64 as u32);
        self.len = 0;
    }

    /// Appends bytes, printing whenever the buffer fills. A NUL byte would end
    /// the string early, so it goes out on its own with HC_print8bit.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == 0 {
                self.flush();
                crate::hc::print8(0);
                continue;
            }
            // One byte stays free for the terminating NUL.
            if self.len == CAPACITY - 1 {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints formatted text with one HC_printStr per 255 bytes:
/// `matrix_guest::print!("step {}\n", n)`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let mut console = $crate::Console::new();
        let _ = core::fmt::Write::write_fmt(&mut console, format_args!($($arg)*));
    }};
}

/// Like [`print!`], with a newline at the end.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        let mut console = $crate::Console::new();
        let _ = core::fmt::Write::write_fmt(&mut console, format_args!($($arg)*));
        console.write_bytes(b"\n");
    }};
}
