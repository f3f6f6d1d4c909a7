//! Console text: what the hypercalls produce for a VM, how it is shown safely,
//! and how a byte stream is cut into lines.

use std::fmt::Write as _;

mod batch;

pub use batch::{ConsoleBatch, ConsolePiece};

/// Prefix of the lines the hypervisor itself adds to a VM's console.
pub const NOTE_PREFIX: &str = "[matrix] ";

/// Bytes of history a console keeps (for the end-of-run report).
pub const HISTORY_BYTES: usize = 64 * 1024;

/// A VM's console output: the last [`HISTORY_BYTES`] (at least) of
/// everything it printed, in one buffer whose tail not yet sent to front ends
/// is the pending output, with the time each of its lines was completed.
///
/// One buffer rather than a history and a pending chunk: a guest that prints
/// on every exit writes here on the hot path, and with hundreds of VMs each
/// buffer's end is cold in the cache (one buffer fewer saved 0.1-0.2 µs an
/// exit with 256 tickers here).
#[derive(Debug, Default)]
pub struct ConsoleOut {
    bytes: Vec<u8>,
    /// Where the bytes not yet taken start.
    sent: usize,
    /// For each `\n` in `bytes[sent..]`: when it was written.
    line_ns: Vec<u64>,
    /// When the last byte was written.
    written_ns: u64,
    now_ns: u64,
    /// Bytes trimmed off the front of `bytes` so far.
    trimmed: u64,
    /// Whether `bytes` begins inside a line (trimmed there).
    front_mid_line: bool,
    /// Notes held back while the guest is in the middle of a line: a note
    /// never splits a guest's line (see [`ConsoleOut::note`]).
    held: Vec<u8>,
    /// `bytes.len()` when the held notes were last looked at, and how many
    /// takes in a row found the guest's line no longer.
    held_at_len: usize,
    stale_takes: u8,
    /// For a VM of several vCPUs, each one's unfinished line (empty for a
    /// VM of one): two vCPUs' output never mixes within a line, and each
    /// line goes out whole, led by its vCPU's label (`cpu1: `).
    spoken: Vec<Vec<u8>>,
    /// The vCPU whose exit is being handled.
    speaker: usize,
}

/// The longest a vCPU's unfinished line is held before it goes out as it is.
pub const SPOKEN_LINE_LIMIT: usize = 4096;

impl ConsoleOut {
    /// A console whose earlier life is `history` (a restored snapshot's):
    /// kept for the record, not sent again, but for a last line the guest
    /// had not finished: that goes out again, so that the line it goes on
    /// with reads whole here.
    pub fn with_history(history: &[u8]) -> Self {
        let sent = history.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1);
        Self { bytes: history.to_vec(), sent, ..Self::default() }
    }

    /// Stamps the lines not taken yet with `t_ns`: notes written before
    /// the run's clock was known (a VM made while the run goes on).
    pub fn restamp_pending(&mut self, t_ns: u64) {
        self.line_ns.iter_mut().for_each(|line_ns| *line_ns = t_ns);
        (self.written_ns, self.now_ns) = (t_ns, t_ns);
    }

    /// Sets the time stamped on what is written from now on: the time of
    /// the exit being handled.
    pub fn set_clock(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Keeps each of `vcpus` vCPUs' lines apart from here on (nothing
    /// changes for a VM of one).
    pub fn split_by_vcpu(&mut self, vcpus: usize) {
        if vcpus > 1 {
            self.spoken = vec![Vec::new(); vcpus];
        }
    }

    /// Says which vCPU writes from now on.
    pub fn set_speaker(&mut self, vcpu: usize) {
        self.speaker = vcpu;
    }

    /// Ends every vCPU's unfinished line (its VM has ended).
    pub fn end_spoken_lines(&mut self) {
        for vcpu in 0..self.spoken.len() {
            if !self.spoken[vcpu].is_empty() {
                let mut line = std::mem::take(&mut self.spoken[vcpu]);
                line.push(b'\n');
                self.write_line_of(vcpu, &line);
            }
        }
    }

    /// Appends guest output as it is (and, once the guest ends the line it
    /// was in, the notes held back meanwhile); a vCPU's of a VM of several
    /// line by line, each led by its label.
    pub fn write(&mut self, bytes: &[u8]) {
        if !self.spoken.is_empty() {
            return self.write_spoken(bytes);
        }
        self.write_plain(bytes);
    }

    fn write_spoken(&mut self, bytes: &[u8]) {
        let speaker = self.speaker.min(self.spoken.len() - 1);
        let mut line = std::mem::take(&mut self.spoken[speaker]);
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            line.extend_from_slice(&rest[..=newline]);
            self.write_line_of(speaker, &line);
            line.clear();
            rest = &rest[newline + 1..];
        }
        line.extend_from_slice(rest);
        if line.len() >= SPOKEN_LINE_LIMIT {
            line.push(b'\n');
            self.write_line_of(speaker, &line);
            line.clear();
        }
        self.spoken[speaker] = line;
    }

    fn write_line_of(&mut self, vcpu: usize, line: &[u8]) {
        let mut labelled = format!("cpu{vcpu}: ").into_bytes();
        labelled.extend_from_slice(line);
        self.write_plain(&labelled);
    }

    fn write_plain(&mut self, bytes: &[u8]) {
        if !self.held.is_empty() {
            if let Some(newline) = bytes.iter().position(|&byte| byte == b'\n') {
                self.append(&bytes[..=newline]);
                let held = std::mem::take(&mut self.held);
                self.append(&held);
                self.append(&bytes[newline + 1..]);
                return;
            }
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let lines = bytes.iter().filter(|&&byte| byte == b'\n').count();
        self.line_ns.extend(std::iter::repeat_n(self.now_ns, lines));
        self.bytes.extend_from_slice(bytes);
        self.written_ns = self.now_ns;
    }

    /// The last [`HISTORY_BYTES`] (at most) of everything written.
    pub fn history(&self) -> &[u8] {
        &self.bytes[self.bytes.len().saturating_sub(HISTORY_BYTES)..]
    }

    /// The history a snapshot keeps: [`Self::history`], then each vCPU's
    /// unfinished line as a line of its own (the restored vCPU goes on with
    /// it on a new line: split, not lost).
    pub fn saved_history(&self) -> Vec<u8> {
        let mut saved = self.history().to_vec();
        for (vcpu, line) in self.spoken.iter().enumerate().filter(|(_, line)| !line.is_empty()) {
            saved.extend_from_slice(format!("cpu{vcpu}: ").as_bytes());
            saved.extend_from_slice(line);
            saved.push(b'\n');
        }
        saved
    }

    /// The last [`HISTORY_BYTES`] (at most) from the start of a line, for
    /// a report, with how many bytes written before it are left out.
    pub fn report_history(&self) -> (&[u8], u64) {
        let mut start = self.bytes.len().saturating_sub(HISTORY_BYTES);
        let mid_line = if start > 0 { self.bytes[start - 1] != b'\n' } else { self.front_mid_line };
        if mid_line {
            // Into the next line, unless the tail is one unbroken line.
            if let Some(newline) = self.bytes[start..].iter().position(|&byte| byte == b'\n') {
                start += newline + 1;
            }
        }
        (&self.bytes[start..], self.trimmed + start as u64)
    }

    /// Adds a line from the hypervisor, on a line of its own. While the
    /// guest is in the middle of a line the note waits for its end, so that
    /// it never splits one; a line the guest leaves unfinished through two
    /// takes in a row is ended for it, so that no note waits long.
    pub fn note(&mut self, text: std::fmt::Arguments<'_>) {
        let mut line = String::new();
        let _ = writeln!(line, "{NOTE_PREFIX}{text}");
        if self.bytes.last().is_some_and(|&last| last != b'\n') || !self.held.is_empty() {
            if self.held.is_empty() {
                (self.held_at_len, self.stale_takes) = (self.bytes.len(), 0);
            }
            self.held.extend_from_slice(line.as_bytes());
        } else {
            self.append(line.as_bytes());
        }
    }

    /// Lets held notes out once the guest's unfinished line has not grown
    /// through two takes.
    fn release_stale_notes(&mut self) {
        if self.held.is_empty() {
            return;
        }
        if self.bytes.len() != self.held_at_len {
            (self.held_at_len, self.stale_takes) = (self.bytes.len(), 0);
            return;
        }
        self.stale_takes += 1;
        if self.stale_takes >= 2 {
            self.release_held_notes();
        }
    }

    /// Takes the pending bytes into `batch`, as VM `vm`'s, after `dropped`
    /// bytes lost before them.
    pub fn take_into(&mut self, vm: usize, dropped: u64, batch: &mut ConsoleBatch) {
        self.release_stale_notes();
        self.trim_history();
        let piece = ConsolePiece {
            vm,
            bytes: &self.bytes[self.sent..],
            line_ns: &self.line_ns,
            written_ns: self.written_ns,
            dropped,
        };
        batch.push(piece);
        self.sent = self.bytes.len();
        // Cleared, not taken: its buffer is written again on the next exit.
        self.line_ns.clear();
    }

    /// Drops the pending bytes, as taken by a reader that discards them.
    pub fn discard_pending(&mut self) {
        self.release_stale_notes();
        self.trim_history();
        self.sent = self.bytes.len();
        self.line_ns.clear();
    }

    /// Trimmed in halves so that the copy is paid once per HISTORY_BYTES;
    /// only what was taken before, which cannot be put back any more.
    fn trim_history(&mut self) {
        if self.bytes.len() > 2 * HISTORY_BYTES {
            let excess = (self.bytes.len() - HISTORY_BYTES).min(self.sent);
            if excess == 0 {
                return;
            }
            self.front_mid_line = self.bytes[excess - 1] != b'\n';
            self.bytes.drain(..excess);
            self.trimmed += excess as u64;
            self.sent -= excess;
        }
    }

    /// Returns bytes that were taken but could not be delivered (the last
    /// taken, less any dropped from their front); they go before anything
    /// written since.
    pub fn put_back(&mut self, piece: ConsolePiece<'_>) {
        let unsent = self.bytes.len() - self.sent;
        debug_assert!(piece.bytes.len() <= self.sent, "put back what was taken");
        self.sent = self.sent.saturating_sub(piece.bytes.len());
        debug_assert_eq!(&self.bytes[self.sent..self.bytes.len() - unsent], piece.bytes);
        self.line_ns.splice(0..0, piece.line_ns.iter().copied());
    }

    /// Bytes waiting to be taken (held notes too: takes let them out).
    pub fn pending_len(&self) -> usize {
        self.bytes.len() - self.sent + self.held.len()
    }

    /// Lets held notes out now, ending the guest's unfinished line: for
    /// what must go out before an event that follows (a state change).
    pub fn release_held_notes(&mut self) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.append(b"\n");
            self.append(&held);
        }
    }
}

/// Renders guest bytes as text that cannot control a terminal: invalid UTF-8
/// and control characters other than newline and tab become `\xNN` (or
/// `\u{NNNN}` for C1 controls and other non-ASCII controls).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\n' | '\t' => out.push(ch),
                c => push_escaped(&mut out, c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Pushes `c`, or its escape if it is a control character: `\xNN` for
/// ASCII controls, `\u{NNNN}` for C1 and other non-ASCII controls.
fn push_escaped(out: &mut String, c: char) {
    match c {
        c if (c as u32) < 0x80 && c.is_control() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// The most characters of a user's input echoed back in a message.
pub const ECHO_LIMIT: usize = 80;

/// A user's input (a control line, a name, a weight, a title) made safe to
/// echo on one line of a terminal: control characters (newlines too) are
/// escaped as in guest output, invalid UTF-8 shown as `\xNN`, and anything
/// past [`ECHO_LIMIT`] characters cut, with how much was left out.
pub fn escape_input(text: impl AsRef<[u8]>) -> String {
    escape_bounded(text, ECHO_LIMIT)
}

/// The most characters of a reason that a peer (a migration's other side)
/// gave, shown whole where it says what to do.
pub const REASON_LIMIT: usize = 240;

/// [`escape_input`] with a bound of `limit` characters.
pub fn escape_bounded(text: impl AsRef<[u8]>, limit: usize) -> String {
    let bytes = text.as_ref();
    let mut out = String::new();
    let mut shown = 0;
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if shown == limit {
                let _ = write!(out, "... ({} bytes in all)", bytes.len());
                return out;
            }
            push_escaped(&mut out, ch);
            shown += 1;
        }
        for byte in chunk.invalid() {
            if shown == limit {
                let _ = write!(out, "... ({} bytes in all)", bytes.len());
                return out;
            }
            let _ = write!(out, "\\x{byte:02x}");
            shown += 1;
        }
    }
    out
}

/// Cuts a byte stream into lines, keeping the unfinished tail for later.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Feeds bytes; calls `line` with each completed line (without its `\n`).
    pub fn push(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                line(&rest[..newline]);
            } else {
                self.partial.extend_from_slice(&rest[..newline]);
                line(&self.partial);
                self.partial.clear();
            }
            rest = &rest[newline + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// The unfinished line, if any, without taking it.
    pub fn peek(&self) -> Option<&[u8]> {
        (!self.partial.is_empty()).then_some(self.partial.as_slice())
    }

    /// Takes the unfinished line, if any.
    pub fn take_partial(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pending bytes, taken as VM 0's.
    fn take(out: &mut ConsoleOut) -> ConsoleBatch {
        let mut batch = ConsoleBatch::default();
        out.take_into(0, 0, &mut batch);
        batch
    }

    fn only(batch: &ConsoleBatch) -> ConsolePiece<'_> {
        batch.pieces().next().expect("a piece")
    }

    #[test]
    fn escape_neutralises_terminal_control() {
        assert_eq!(escape(b"plain\ttext\n"), "plain\ttext\n");
        assert_eq!(escape(b"\x1b[2J\x07\r\x08\x7f"), "\\x1b[2J\\x07\\x0d\\x08\\x7f");
        assert_eq!(escape("caf\u{e9} \u{9b}".as_bytes()), "caf\u{e9} \\u{009b}");
        assert_eq!(escape(b"bad \xff\xfe utf8"), "bad \\xff\\xfe utf8");
    }

    #[test]
    fn each_vcpus_lines_go_out_whole_and_labelled() {
        let mut out = ConsoleOut::default();
        out.split_by_vcpu(2);
        out.set_speaker(0);
        out.write(b"pi");
        out.set_speaker(1);
        out.write(b"po");
        out.set_speaker(0);
        out.write(b"ng\nnext ");
        out.set_speaker(1);
        out.write(b"ng\n");
        out.set_speaker(0);
        out.write(&[b'x'; SPOKEN_LINE_LIMIT]);
        let spoken = only(&take(&mut out)).bytes.to_vec();
        let long = format!("cpu0: next {}\n", "x".repeat(SPOKEN_LINE_LIMIT));
        assert_eq!(String::from_utf8(spoken).unwrap(), format!("cpu0: ping\ncpu1: pong\n{long}"));
        out.set_speaker(1);
        out.write(b"unfinished");
        let saved = String::from_utf8(out.saved_history()).unwrap();
        // A snapshot keeps the unfinished line, as a line of its own.
        assert_eq!(saved, format!("cpu0: ping\ncpu1: pong\n{long}cpu1: unfinished\n"));
        out.end_spoken_lines();
        assert_eq!(only(&take(&mut out)).bytes, b"cpu1: unfinished\n");
        // A VM of one vCPU writes as it always did.
        let mut one = ConsoleOut::default();
        one.split_by_vcpu(1);
        one.write(b"plain");
        assert_eq!(only(&take(&mut one)).bytes, b"plain");
    }

    #[test]
    fn notes_start_on_a_line_of_their_own_and_never_split_a_guests_line() {
        let mut out = ConsoleOut::default();
        out.note(format_args!("first"));
        out.write(b"Hel");
        out.note(format_args!("something {}", 1));
        out.note(format_args!("again"));
        // The guest ends its line: the notes come after it.
        out.write(b"lo\nnext");
        assert_eq!(only(&take(&mut out)).bytes, b"[matrix] first\nHello\n[matrix] something 1\n[matrix] again\nnext");
        // A line left unfinished through two takes is ended for the note.
        out.note(format_args!("late"));
        assert_eq!(only(&take(&mut out)).bytes, b"");
        assert_eq!(only(&take(&mut out)).bytes, b"\n[matrix] late\n");
        assert_eq!(out.pending_len(), 0);
    }

    #[test]
    fn a_restored_consoles_unfinished_line_goes_out_again_and_its_note_waits_for_its_end() {
        let mut out = ConsoleOut::with_history(b"one\ntwo\nHel");
        out.note(format_args!("restored"));
        out.write(b"lo\n");
        assert_eq!(only(&take(&mut out)).bytes, b"Hello\n[matrix] restored\n");
        assert_eq!(out.history(), b"one\ntwo\nHello\n[matrix] restored\n");
    }

    #[test]
    fn each_line_carries_the_time_of_the_exit_that_ended_it() {
        let mut out = ConsoleOut::default();
        out.set_clock(100);
        out.write(b"one\ntw");
        out.set_clock(250);
        out.write(b"o\n");
        out.set_clock(300);
        out.write(b"thr");
        let first = take(&mut out);
        assert_eq!((only(&first).line_ns, only(&first).written_ns), (&[100, 250][..], 300));
        out.set_clock(400);
        out.write(b"ee\nfour\n");
        let late = take(&mut out);
        assert_eq!(only(&late).line_ns, [400, 400]);
        // Undelivered bytes go back in front of newer ones, stamps and all.
        out.set_clock(500);
        out.write(b"five\n");
        let kept = only(&late).without_front(3);
        assert_eq!(kept.bytes, b"four\n");
        out.put_back(kept);
        let again = take(&mut out);
        assert_eq!((only(&again).bytes, only(&again).line_ns), (&b"four\nfive\n"[..], &[400, 500][..]));
    }

    #[test]
    fn the_history_holds_everything_written_once_taken_or_not() {
        let mut out = ConsoleOut::default();
        out.write(b"one\n");
        let undelivered = take(&mut out);
        out.write(b"two\n");
        // The front end was behind: dropped from the piece, put back, taken again.
        out.put_back(only(&undelivered).without_front(1));
        assert_eq!(only(&take(&mut out)).bytes, b"ne\ntwo\n");
        out.write(b"three\n");
        assert_eq!(out.history(), b"one\ntwo\nthree\n");
    }

    #[test]
    fn a_report_keeps_whole_lines_and_says_how_much_came_before() {
        let mut out = ConsoleOut::default();
        out.write(b"short\n");
        assert_eq!(out.report_history(), (&b"short\n"[..], 0));
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let mut batch = ConsoleBatch::default();
        for _ in 0..2000 {
            out.write(&line);
            out.take_into(0, 0, &mut batch);
            batch = ConsoleBatch::default();
        }
        let (kept, cut) = out.report_history();
        assert!(kept.len() <= HISTORY_BYTES && kept.len() > HISTORY_BYTES - 100, "{}", kept.len());
        assert!(kept.starts_with(&line) && kept.ends_with(b"\n"), "cut at a line's start");
        assert_eq!(cut + kept.len() as u64, 6 + 2000 * 100, "what was cut and kept is all that was written");
    }

    #[test]
    fn discarded_bytes_stay_in_the_history_and_are_not_taken() {
        let mut out = ConsoleOut::default();
        out.write(b"one\n");
        out.discard_pending();
        assert_eq!(out.pending_len(), 0);
        out.write(b"two\n");
        let taken = take(&mut out);
        assert_eq!((only(&taken).bytes, only(&taken).line_ns.len()), (&b"two\n"[..], 1));
        assert_eq!(out.history(), b"one\ntwo\n");
        for _ in 0..5 {
            out.write(&vec![b'x'; HISTORY_BYTES]);
            out.discard_pending();
        }
        assert!(out.history().len() == HISTORY_BYTES && out.bytes.len() <= 2 * HISTORY_BYTES, "bounded");
    }

    #[test]
    fn the_history_keeps_the_last_bytes() {
        let mut out = ConsoleOut::default();
        for round in 0..5u8 {
            out.write(&vec![b'a' + round; HISTORY_BYTES / 2]);
            take(&mut out);
        }
        out.write(b"end");
        let history = out.history();
        assert_eq!(history.len(), HISTORY_BYTES);
        assert!(history.ends_with(b"eeend"), "the newest bytes last");
        assert_eq!(history[0], b'd');
    }

    #[test]
    fn a_piece_larger_than_the_history_can_be_put_back() {
        let mut out = ConsoleOut::default();
        out.write(&vec![b'x'; 3 * HISTORY_BYTES]);
        take(&mut out);
        out.write(&vec![b'y'; 3 * HISTORY_BYTES]);
        let taken = take(&mut out);
        out.put_back(only(&taken));
        assert_eq!(take(&mut out), taken);
        let bytes = only(&taken).bytes;
        assert_eq!(out.history(), &bytes[bytes.len() - HISTORY_BYTES..]);
    }

    #[test]
    fn lines_are_cut_across_chunks() {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        buffer.push(b"ab", |l| lines.push(l.to_vec()));
        buffer.push(b"c\nde\n\nf", |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"abc".to_vec(), b"de".to_vec(), b"".to_vec()]);
        assert_eq!(buffer.take_partial(), Some(b"f".to_vec()));
        assert_eq!(buffer.take_partial(), None);
    }
}
