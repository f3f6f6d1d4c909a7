//! Recording what the terminal was sent as an asciicast v2 file
//! (`--record FILE.cast`, play it with `asciinema play FILE.cast`).
//!
//! A header line, then one `[seconds, "o", text]` line per flush of the
//! terminal, `[seconds, "r", "WxH"]` on resizes and `[seconds, "m", label]`
//! markers at key presses and lesson steps (a player can jump to them).
//! Every line is flushed as it is written, so a run that is killed still
//! leaves a playable file. A recording ends with what the terminal receives
//! when the UI leaves it (alternate screen off, mouse off, cursor shown), so
//! that playing it back leaves the viewer's terminal as it was.

use std::cell::RefCell;
use std::io::{self, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::os::files::{self, FileError};
use crate::os::line_file::LineFile;

/// An open asciicast v2 recording.
pub struct CastWriter {
    file: LineFile,
    started: Instant,
    /// The closing sequence is in the file.
    closed: bool,
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastEnd {
    /// Events in the file.
    pub written: u64,
    /// Events that could not be written.
    pub lost: u64,
    /// The write that failed, if one did (the file then ends at its last
    /// whole event, still playable).
    pub error: Option<String>,
}

impl CastWriter {
    /// Creates `path` (a new or regular file: a device or FIFO is refused)
    /// and writes the header for a `width` x `height` terminal.
    pub fn create(path: &Path, width: u16, height: u16) -> Result<Self, FileError> {
        let mut file = LineFile::new(files::create_regular(path)?);
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let env = json!({
            "SHELL": std::env::var("SHELL").unwrap_or_default(),
            "TERM": std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
        });
        let header = json!({ "version": 2, "width": width, "height": height, "timestamp": timestamp, "env": env });
        file.line(|out| serde_json::to_writer(out, &header).map_err(Into::into))?;
        file.flush()?;
        Ok(Self { file, started: Instant::now(), closed: false })
    }

    fn event(&mut self, kind: &str, data: &str) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let line = json!([self.started.elapsed().as_secs_f64(), kind, data]);
        self.file.line(|out| serde_json::to_writer(out, &line).map_err(Into::into))?;
        self.file.flush()
    }

    /// Records bytes sent to the terminal.
    pub fn output(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.event("o", &String::from_utf8_lossy(bytes))
    }

    /// Records a resize.
    pub fn resize(&mut self, width: u16, height: u16) -> io::Result<()> {
        self.event("r", &format!("{width}x{height}"))
    }

    /// Records a marker (a key press, a lesson step) a player can jump to.
    pub fn marker(&mut self, label: &str) -> io::Result<()> {
        self.event("m", label)
    }

    /// Records what the terminal receives when the UI leaves it: the last
    /// event of the file (once; nothing is written after it).
    pub fn close(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let written = self.event("o", &String::from_utf8_lossy(&super::terminal::leave_sequence()));
        self.closed = true;
        written
    }

    /// What the file got (the header is not an event).
    pub fn end(&self) -> CastEnd {
        CastEnd {
            written: self.file.written_lines().saturating_sub(1),
            lost: self.file.lost_lines(),
            error: self.file.error().map(|error| error.to_string()),
        }
    }
}

impl Drop for CastWriter {
    /// A recording that ends by an error ends with the closing sequence too.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// A recording shared by the terminal's writer and the UI loop (which adds
/// resize events); both live on the UI thread.
pub type SharedCast = Rc<RefCell<Option<CastWriter>>>;

/// The terminal's writer: bytes are gathered until a flush, then sent to
/// stdout and, when recording, to the cast file as one event.
pub struct TerminalOut<W: Write> {
    out: W,
    pending: Vec<u8>,
    cast: SharedCast,
}

impl<W: Write> TerminalOut<W> {
    /// Writes to `out`, recording into `cast` if it holds a recording.
    pub fn new(out: W, cast: SharedCast) -> Self {
        Self { out, pending: Vec::with_capacity(64 * 1024), cast }
    }
}

impl<W: Write> Write for TerminalOut<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.pending)?;
        self.out.flush()?;
        // A recording that fails (a full disk) must not take the UI down:
        // it keeps its error and count of lost events for the end.
        if let Some(cast) = self.cast.borrow_mut().as_mut() {
            let _ = cast.output(&self.pending);
        }
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_a_valid_asciicast_v2_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.cast");
        let cast: SharedCast = Rc::new(RefCell::new(Some(CastWriter::create(&path, 80, 24).unwrap())));
        let mut out = TerminalOut::new(Vec::new(), Rc::clone(&cast));
        out.write_all(b"\x1b[2Jhello").unwrap();
        out.flush().unwrap();
        cast.borrow_mut().as_mut().unwrap().resize(100, 30).unwrap();
        out.write_all("wörld".as_bytes()).unwrap();
        out.flush().unwrap();
        assert_eq!(out.out, "\x1b[2Jhellowörld".as_bytes());

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            (lines[0]["version"].as_u64(), lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
            (Some(2), Some(80), Some(24))
        );
        assert!(lines[0]["timestamp"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "\x1b[2Jhello");
        assert_eq!((lines[2][1].as_str(), lines[2][2].as_str()), (Some("r"), Some("100x30")));
        assert_eq!(lines[3][2], "wörld");
        let times: Vec<f64> = lines[1..].iter().map(|l| l[0].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }
}
