//! Replaying an asciicast v2 file through a terminal emulator (vt100), as
//! `asciinema play` does into the viewer's terminal, to see the modes that
//! terminal is left in.

use std::num::NonZeroU16;
use std::path::Path;

/// A recording, read and checked line by line.
pub struct Cast {
    /// The header's width and height.
    pub size: (u16, u16),
    /// Every event: (seconds, kind, data).
    pub events: Vec<(f64, String, String)>,
}

impl Cast {
    /// Reads `path`, failing the test on a line that is not asciicast v2.
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut lines = text.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next().expect("a header")).unwrap();
        assert_eq!(header["version"], 2, "{}: not asciicast v2", path.display());
        let dimension = |key: &str| header[key].as_u64().and_then(|n| u16::try_from(n).ok()).expect("a size");
        let events = lines
            .map(|line| {
                let event: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
                let kind = event[1].as_str().unwrap_or_else(|| panic!("no kind: {line}")).to_string();
                (event[0].as_f64().expect("a time"), kind, event[2].as_str().expect("data").to_string())
            })
            .collect();
        Self { size: (dimension("width"), dimension("height")), events }
    }

    /// The terminal after every output and resize event, in a terminal of
    /// the header's size.
    pub fn replay(&self) -> vt100::Parser {
        let size = |n: u16| NonZeroU16::new(n).expect("a non-zero size");
        let mut terminal = vt100::Parser::new(size(self.size.1), size(self.size.0), 0);
        for (_, kind, data) in &self.events {
            match kind.as_str() {
                "o" => terminal.process(data.as_bytes()),
                "r" => {
                    let (width, height) = data.split_once('x').expect("WxH");
                    terminal.set_size(size(height.parse().unwrap()), size(width.parse().unwrap()));
                }
                _ => {}
            }
        }
        terminal
    }

    /// The labels of its markers, in order.
    pub fn markers(&self) -> Vec<&str> {
        self.events.iter().filter(|(_, kind, _)| kind == "m").map(|(_, _, label)| label.as_str()).collect()
    }

    /// Fails unless a replay leaves the terminal as a shell wants it: the
    /// main screen, no mouse reporting, the cursor shown, and unless the
    /// events are in time order.
    pub fn assert_ends_cleanly(&self, what: &str) {
        assert!(self.events.windows(2).all(|pair| pair[0].0 <= pair[1].0), "{what}: events out of time order");
        let terminal = self.replay();
        let screen = terminal.screen();
        assert!(!screen.alternate_screen(), "{what}: the replay ends on the alternate screen");
        assert_eq!(screen.mouse_protocol_mode(), vt100::MouseProtocolMode::None, "{what}: mouse reporting is left on");
        assert!(!screen.hide_cursor(), "{what}: the cursor is left hidden");
    }
}
