//! The live-migration protocol: frames on a byte stream, each a kind byte,
//! a u32 LE length and a payload. Pure: bytes in, frames out, every bad
//! stream a [`ProtocolError`] that says what is wrong. The receiver checks
//! every length, page number and size before it uses it.
//!
//! ```text
//! sender                                receiver
//!                                     ← Challenge {32 random bytes}
//! Proof {HMAC-SHA256 of it}           → (zeros without --migrate-secret)
//! Hello {version, name, memory_size} →
//!                                     ← Accept | Refuse(why)
//! Pages {round, (index, 4096 bytes)*} → (any number, each acknowledged)
//!                                     ← Ack {bytes}
//! State {json}                        → (the VM, paused on the sender)
//!                                     ← Ready (a paused VM made) | Abandon(why)
//! Go {last_slice_ns, paused}          → (from here the receiver owns it)
//!                                     ← Started {downtime_ns}
//! Abandon(why)                        ↔ either side, at any step before Go
//! ```

use std::io::{Read, Write};

use crate::snapshot::format::{MAX_STATE, PAGE_SIZE};

/// The protocol this build speaks.
pub const VERSION: u32 = 2;
/// What a Hello starts with, so that a stranger on the port is told apart.
pub const MAGIC: &[u8; 8] = b"MTXMIGR\0";
/// Pages in one Pages frame at most.
pub const MAX_PAGES_PER_FRAME: usize = 64;
/// The largest payload: a State (the JSON of a snapshot) or a full Pages frame.
const MAX_PAYLOAD: usize = MAX_STATE as usize + 64;
/// The longest text a Refuse or Abandon carries.
const MAX_REASON: usize = 1024;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The sender's first frame.
    Hello {
        /// Its protocol version.
        version: u32,
        /// The VM's name.
        name: String,
        /// Its memory in bytes.
        memory_size: u64,
    },
    /// The receiver takes it.
    Accept,
    /// The receiver will not take it, and why.
    Refuse(String),
    /// Pages of one round.
    Pages {
        /// The round (0: every page).
        round: u32,
        /// (index, 4096 bytes) each.
        pages: Vec<(u64, Vec<u8>)>,
    },
    /// The receiver has the bytes of a Pages frame.
    Ack {
        /// Bytes of the frame's pages.
        bytes: u64,
    },
    /// The VM's state (a snapshot's JSON), the last data frame.
    State(String),
    /// The receiver has made the VM, paused.
    Ready,
    /// From here the receiver owns the VM; its last slice on the sender ended at
    /// `last_slice_ns` (the sender's monotonic clock).
    Go {
        /// When its last slice on the sender ended.
        last_slice_ns: u64,
        /// It was paused there (by a person): it arrives paused.
        paused: bool,
    },
    /// The VM ran its first slice on the receiver, `downtime_ns` after its last
    /// on the sender (meaningful where both share a monotonic clock).
    Started {
        /// The downtime.
        downtime_ns: u64,
    },
    /// Either side gives up, and why.
    Abandon(String),
    /// The receiver's first frame: random bytes for the sender to answer.
    Challenge([u8; 32]),
    /// The sender's answer: the challenge's HMAC under the shared secret.
    Proof([u8; 32]),
}

/// A stream that is not this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The stream ended.
    #[error("the connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("the connection failed: {0}")]
    Io(String),
    /// A frame of a kind this version does not know.
    #[error("a frame of unknown kind {0}: the peer does not speak this protocol")]
    UnknownKind(u8),
    /// A frame longer than any this protocol sends.
    #[error("a frame of {0} bytes, longer than any this protocol sends")]
    TooLong(u32),
    /// A frame whose payload does not match its kind.
    #[error("a malformed {0} frame")]
    Malformed(&'static str),
    /// A Hello from another program.
    #[error("the peer is not a matrix-tui sending a VM (no MTXMIGR hello)")]
    NotMatrix,
}

const HELLO: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const PAGES: u8 = 4;
const ACK: u8 = 5;
const STATE: u8 = 6;
const READY: u8 = 7;
const GO: u8 = 8;
const STARTED: u8 = 9;
const ABANDON: u8 = 10;
const CHALLENGE: u8 = 11;
const PROOF: u8 = 12;

impl Frame {
    /// The frame as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Self::Hello { version, name, memory_size } => {
                let mut payload = MAGIC.to_vec();
                payload.extend_from_slice(&version.to_le_bytes());
                payload.extend_from_slice(&memory_size.to_le_bytes());
                payload.extend_from_slice(name.as_bytes());
                (HELLO, payload)
            }
            Self::Accept => (ACCEPT, Vec::new()),
            Self::Refuse(why) => (REFUSE, cut(why).into_bytes()),
            Self::Pages { round, pages } => {
                let mut payload = Vec::with_capacity(4 + pages.len() * (8 + PAGE_SIZE));
                payload.extend_from_slice(&round.to_le_bytes());
                for (index, page) in pages {
                    payload.extend_from_slice(&index.to_le_bytes());
                    payload.extend_from_slice(page);
                }
                (PAGES, payload)
            }
            Self::Ack { bytes } => (ACK, bytes.to_le_bytes().to_vec()),
            Self::State(json) => (STATE, json.as_bytes().to_vec()),
            Self::Ready => (READY, Vec::new()),
            Self::Go { last_slice_ns, paused } => {
                let mut payload = last_slice_ns.to_le_bytes().to_vec();
                payload.push(u8::from(*paused));
                (GO, payload)
            }
            Self::Started { downtime_ns } => (STARTED, downtime_ns.to_le_bytes().to_vec()),
            Self::Abandon(why) => (ABANDON, cut(why).into_bytes()),
            Self::Challenge(bytes) => (CHALLENGE, bytes.to_vec()),
            Self::Proof(bytes) => (PROOF, bytes.to_vec()),
        };
        let mut bytes = Vec::with_capacity(5 + payload.len());
        bytes.push(kind);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// The frame's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Accept => "Accept",
            Self::Refuse(_) => "Refuse",
            Self::Pages { .. } => "Pages",
            Self::Ack { .. } => "Ack",
            Self::State(_) => "State",
            Self::Ready => "Ready",
            Self::Go { .. } => "Go",
            Self::Started { .. } => "Started",
            Self::Abandon(_) => "Abandon",
            Self::Challenge(_) => "Challenge",
            Self::Proof(_) => "Proof",
        }
    }

    /// Decodes one frame's `kind` and `payload`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        let u64_of = |bytes: &[u8], what| {
            <[u8; 8]>::try_from(bytes).map(u64::from_le_bytes).map_err(|_| ProtocolError::Malformed(what))
        };
        let text = |bytes: &[u8], what| {
            std::str::from_utf8(bytes).map(str::to_string).map_err(|_| ProtocolError::Malformed(what))
        };
        Ok(match kind {
            HELLO => {
                if payload.len() < 20 || payload.len() > 20 + 64 {
                    return Err(if payload.starts_with(MAGIC) || payload.len() < 8 {
                        ProtocolError::Malformed("Hello")
                    } else {
                        ProtocolError::NotMatrix
                    });
                }
                if &payload[..8] != MAGIC {
                    return Err(ProtocolError::NotMatrix);
                }
                let version = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
                let memory_size = u64_of(&payload[12..20], "Hello")?;
                Self::Hello { version, memory_size, name: text(&payload[20..], "Hello")? }
            }
            ACCEPT if payload.is_empty() => Self::Accept,
            REFUSE if payload.len() <= MAX_REASON => Self::Refuse(text(payload, "Refuse")?),
            PAGES => {
                let records = payload.get(4..).ok_or(ProtocolError::Malformed("Pages"))?;
                if records.len() % (8 + PAGE_SIZE) != 0 || records.len() / (8 + PAGE_SIZE) > MAX_PAGES_PER_FRAME {
                    return Err(ProtocolError::Malformed("Pages"));
                }
                let round = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
                let pages = records
                    .chunks_exact(8 + PAGE_SIZE)
                    .map(|record| (u64::from_le_bytes(record[..8].try_into().expect("8 bytes")), record[8..].to_vec()))
                    .collect();
                Self::Pages { round, pages }
            }
            ACK => Self::Ack { bytes: u64_of(payload, "Ack")? },
            STATE => Self::State(text(payload, "State")?),
            READY if payload.is_empty() => Self::Ready,
            GO if payload.len() == 9 && payload[8] <= 1 => {
                Self::Go { last_slice_ns: u64_of(&payload[..8], "Go")?, paused: payload[8] == 1 }
            }
            GO => return Err(ProtocolError::Malformed("Go")),
            STARTED => Self::Started { downtime_ns: u64_of(payload, "Started")? },
            ABANDON if payload.len() <= MAX_REASON => Self::Abandon(text(payload, "Abandon")?),
            CHALLENGE => Self::Challenge(payload.try_into().map_err(|_| ProtocolError::Malformed("Challenge"))?),
            PROOF => Self::Proof(payload.try_into().map_err(|_| ProtocolError::Malformed("Proof"))?),
            ACCEPT => return Err(ProtocolError::Malformed("Accept")),
            READY => return Err(ProtocolError::Malformed("Ready")),
            REFUSE => return Err(ProtocolError::Malformed("Refuse")),
            ABANDON => return Err(ProtocolError::Malformed("Abandon")),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn io(error: std::io::Error) -> ProtocolError {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Closed,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ProtocolError::Io("the peer sent nothing for too long".into())
        }
        _ => ProtocolError::Io(error.to_string()),
    }
}

/// Reads one frame, its length checked before its payload is read.
pub fn read_frame(input: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut header = [0u8; 5];
    input.read_exact(&mut header).map_err(io)?;
    let length = u32::from_le_bytes(header[1..].try_into().expect("4 bytes"));
    if length as usize > MAX_PAYLOAD {
        return Err(ProtocolError::TooLong(length));
    }
    let mut payload = vec![0u8; length as usize];
    input.read_exact(&mut payload).map_err(io)?;
    Frame::decode(header[0], &payload)
}

/// Writes one frame.
pub fn write_frame(output: &mut impl Write, frame: &Frame) -> Result<(), ProtocolError> {
    output.write_all(&frame.encode()).and_then(|()| output.flush()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        assert_eq!(read_frame(&mut bytes.as_slice()), Ok(frame));
    }

    #[test]
    fn every_frame_comes_back_as_it_went() {
        round_trip(Frame::Hello { version: VERSION, name: "neo".into(), memory_size: 2 << 20 });
        round_trip(Frame::Accept);
        round_trip(Frame::Refuse("a VM is called neo here".into()));
        round_trip(Frame::Pages { round: 3, pages: vec![(7, vec![1; PAGE_SIZE]), (0, vec![0; PAGE_SIZE])] });
        round_trip(Frame::Ack { bytes: 8192 });
        round_trip(Frame::State("{}".into()));
        round_trip(Frame::Ready);
        round_trip(Frame::Go { last_slice_ns: 12, paused: false });
        round_trip(Frame::Go { last_slice_ns: 12, paused: true });
        round_trip(Frame::Started { downtime_ns: 345 });
        round_trip(Frame::Abandon("stopped".into()));
        round_trip(Frame::Challenge([3; 32]));
        round_trip(Frame::Proof([9; 32]));
    }

    #[test]
    fn bad_streams_are_refused_before_their_payload_is_used() {
        assert_eq!(read_frame(&mut [].as_slice()), Err(ProtocolError::Closed));
        assert_eq!(read_frame(&mut [6u8, 0xff, 0xff, 0xff, 0xff].as_slice()), Err(ProtocolError::TooLong(u32::MAX)));
        assert_eq!(read_frame(&mut [99u8, 0, 0, 0, 0].as_slice()), Err(ProtocolError::UnknownKind(99)));
        assert_eq!(Frame::decode(PAGES, &[0; 4 + 100]), Err(ProtocolError::Malformed("Pages")));
        assert_eq!(Frame::decode(ACK, &[0; 3]), Err(ProtocolError::Malformed("Ack")));
        assert_eq!(Frame::decode(READY, &[1]), Err(ProtocolError::Malformed("Ready")));
        assert_eq!(Frame::decode(STATE, &[0xff]), Err(ProtocolError::Malformed("State")));
        assert_eq!(Frame::decode(PROOF, &[0; 31]), Err(ProtocolError::Malformed("Proof")));
        assert_eq!(Frame::decode(CHALLENGE, &[0; 33]), Err(ProtocolError::Malformed("Challenge")));
        assert_eq!(Frame::decode(HELLO, b"GET / HTTP/1.1\r\nHost: x\r\n"), Err(ProtocolError::NotMatrix));
        let too_many = vec![0u8; 4 + (MAX_PAGES_PER_FRAME + 1) * (8 + PAGE_SIZE)];
        assert_eq!(Frame::decode(PAGES, &too_many), Err(ProtocolError::Malformed("Pages")));
        // A frame cut short is a closed stream, not a frame.
        let bytes = Frame::Ack { bytes: 1 }.encode();
        assert_eq!(read_frame(&mut &bytes[..7]), Err(ProtocolError::Closed));
    }
}
