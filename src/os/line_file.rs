//! A file of lines (the trace's JSON Lines, the cast's events) that always
//! ends at a whole line. Lines are gathered in a buffer and written whole;
//! when a write fails (a full disk, a file size limit), a regular file is
//! cut back to its last whole line, the lines that did not make it are
//! counted, and every later line is refused with the same error.

use std::fs::File;
use std::io::{self, Write};

/// Bytes gathered before they are written.
const BUFFER: usize = 256 * 1024;

/// A line-oriented file (see the module's doc).
pub struct LineFile<W: Write = File> {
    out: W,
    buffer: Vec<u8>,
    /// Bytes of whole lines in the file so far.
    written_bytes: u64,
    /// Whole lines in the file so far.
    written_lines: u64,
    /// Lines given to it that are not (and never will be) in the file.
    lost_lines: u64,
    /// The first write error; nothing is written after it.
    failed: Option<(io::ErrorKind, String)>,
    /// Cuts the file back to a length (for a regular file).
    truncate: Option<fn(&mut W, u64) -> io::Result<()>>,
}

fn truncate_file(file: &mut File, length: u64) -> io::Result<()> {
    file.set_len(length)
}

impl LineFile<File> {
    /// Writes to `file`; a regular file is cut back to its last whole line
    /// when a write fails.
    pub fn new(file: File) -> Self {
        let regular = file.metadata().is_ok_and(|metadata| metadata.is_file());
        Self::with_truncate(file, regular.then_some(truncate_file as fn(&mut File, u64) -> io::Result<()>))
    }
}

impl<W: Write> LineFile<W> {
    /// Writes to `out`, with `truncate` to cut it back after a failed write.
    pub fn with_truncate(out: W, truncate: Option<fn(&mut W, u64) -> io::Result<()>>) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(BUFFER),
            written_bytes: 0,
            written_lines: 0,
            lost_lines: 0,
            failed: None,
            truncate,
        }
    }

    /// Adds one line: `fill` appends its text (without the newline). The
    /// line goes out with the buffer; an error is the first failed write's.
    pub fn line(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        if let Some(error) = self.error() {
            self.lost_lines += 1;
            return Err(error);
        }
        let start = self.buffer.len();
        if let Err(error) = fill(&mut self.buffer) {
            self.buffer.truncate(start);
            return Err(error);
        }
        self.buffer.push(b'\n');
        if self.buffer.len() >= BUFFER { self.flush() } else { Ok(()) }
    }

    /// Writes the gathered lines and flushes the file.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(error) = self.error() {
            return Err(error);
        }
        let mut sent = 0;
        let result = loop {
            if sent == self.buffer.len() {
                break self.out.flush();
            }
            match self.out.write(&self.buffer[sent..]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes")),
                Ok(n) => sent += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        let whole = match &result {
            Ok(()) => sent,
            Err(_) => self.buffer[..sent].iter().rposition(|&byte| byte == b'\n').map_or(0, |at| at + 1),
        };
        let lines = count_lines(&self.buffer[..whole]);
        self.written_bytes += whole as u64;
        self.written_lines += lines;
        if let Err(error) = result {
            self.lost_lines += count_lines(&self.buffer[whole..]);
            if whole < sent {
                if let Some(truncate) = self.truncate {
                    // Best effort: if even this fails, the file ends mid-line.
                    let _ = truncate(&mut self.out, self.written_bytes);
                }
            }
            self.failed = Some((error.kind(), error.to_string()));
            self.buffer.clear();
            return Err(error);
        }
        self.buffer.clear();
        Ok(())
    }

    /// Counts `lines` more lines as lost without writing them (dropped
    /// before they reached this file).
    pub fn count_lost(&mut self, lines: u64) {
        self.lost_lines += lines;
    }

    /// The first write error, if a write failed.
    pub fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }

    /// Whole lines in the file.
    pub fn written_lines(&self) -> u64 {
        self.written_lines
    }

    /// Lines given to it that are not in the file.
    pub fn lost_lines(&self) -> u64 {
        self.lost_lines
    }
}

/// The lines in `bytes` (its newlines).
pub fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&byte| byte == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails like a full disk.
    struct Full {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let n = bytes.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.taken.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn cut(full: &mut Full, length: u64) -> io::Result<()> {
        full.taken.truncate(length as usize);
        Ok(())
    }

    #[test]
    fn a_full_disk_leaves_whole_lines_and_counts_the_rest() {
        let mut file = LineFile::with_truncate(Full { taken: Vec::new(), room: 25 }, Some(cut));
        for n in 0..5 {
            file.line(|out| write!(out, "line {n} of five")).unwrap();
        }
        let error = file.flush().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(file.out.taken, b"line 0 of five\n");
        assert_eq!((file.written_lines(), file.lost_lines()), (1, 4));
        assert!(file.line(|out| out.write_all(b"later")).is_err());
        assert!(file.flush().is_err());
        assert_eq!((file.written_lines(), file.lost_lines()), (1, 5));
    }

    #[test]
    fn lines_are_written_whole_when_there_is_room() {
        let mut file = LineFile::with_truncate(Full { taken: Vec::new(), room: 1000 }, None);
        file.line(|out| out.write_all(b"{\"a\":1}")).unwrap();
        file.line(|out| out.write_all(b"{\"b\":2}")).unwrap();
        file.flush().unwrap();
        assert_eq!(file.out.taken, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!((file.written_lines(), file.lost_lines()), (2, 0));
    }

    #[test]
    fn a_real_file_over_its_size_limit_ends_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        let mut file = LineFile::new(File::create(&path).unwrap());
        // A file size limit in miniature: a read-only descriptor fails every write.
        let read_only = File::open(&path).unwrap();
        let mut failing = LineFile::new(read_only);
        file.line(|out| out.write_all(b"kept")).unwrap();
        file.flush().unwrap();
        failing.line(|out| out.write_all(b"lost")).unwrap();
        assert!(failing.flush().is_err());
        assert_eq!(failing.lost_lines(), 1);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept\n");
    }
}
