//! The snapshot file format: one VM's state as readable JSON, and its memory
//! with the zero pages left out, behind a header with a magic, a format
//! version and a checksum. Pure: bytes in, bytes out, every refusal a
//! [`FormatError`] that says what is wrong.
//!
//! ```text
//! magic        8 bytes   "MTXSNAP\0"
//! version      u32 LE    FORMAT_VERSION
//! flags        u32 LE    0
//! state_len    u64 LE    bytes of the JSON state
//! memory_size  u64 LE    guest memory in bytes (a multiple of 4 KiB)
//! pages        u64 LE    pages stored
//! checksum     u64 LE    FNV-1a 64 of everything after the header
//! state        state_len bytes of UTF-8 JSON
//! pages        `pages` times: index u64 LE, then 4096 bytes
//! ```

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"MTXSNAP\0";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_SIZE: usize = 8 + 4 + 4 + 8 * 4;
/// Bytes of a memory page.
pub const PAGE_SIZE: usize = 4096;
/// The largest state a snapshot may carry.
pub const MAX_STATE: u64 = 16 << 20;

/// A snapshot as decoded: its state, and its memory as the pages it stored
/// (the others are zero), kept in the file's own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The VM's state, as JSON text.
    pub state: String,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// The stored pages' indices, in file order.
    indices: Vec<u64>,
    /// The file; page `n` of `indices` is at `pages_at + n * RECORD + 8`.
    file: Vec<u8>,
    pages_at: usize,
}

/// Bytes of one stored page: its index, then its bytes.
const RECORD: usize = 8 + PAGE_SIZE;

impl Decoded {
    /// A state and its pages, as if decoded from a file.
    pub fn from_pages(state: String, pages: &Pages) -> Self {
        let mut file = Vec::with_capacity(pages.len() * RECORD);
        for (index, page) in pages.iter() {
            file.extend_from_slice(&index.to_le_bytes());
            file.extend_from_slice(page);
        }
        let indices = pages.iter().map(|(index, _)| index).collect();
        Self { state, memory_size: pages.memory_size, indices, file, pages_at: 0 }
    }

    /// The stored pages: (index, bytes).
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.indices.iter().enumerate().map(|(n, &index)| {
            let at = self.pages_at + n * RECORD + 8;
            (index, &self.file[at..at + PAGE_SIZE])
        })
    }

    /// How many pages the file stored (the others were zero).
    pub fn stored_pages(&self) -> u64 {
        self.indices.len() as u64
    }

    /// The whole memory, zero pages included.
    pub fn memory(&self) -> Vec<u8> {
        let mut memory = vec![0u8; self.memory_size as usize];
        for (index, page) in self.pages() {
            let at = index as usize * PAGE_SIZE;
            memory[at..at + PAGE_SIZE].copy_from_slice(page);
        }
        memory
    }
}

/// A snapshot that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not a snapshot at all.
    #[error("not a matrix-tui snapshot (it does not start with MTXSNAP)")]
    BadMagic,
    /// Written by another format version.
    #[error(
        "the snapshot is in format version {found}, and this matrix-tui reads version {FORMAT_VERSION}: \
         take the snapshot again with this build"
    )]
    WrongVersion {
        /// The version the file says.
        found: u32,
    },
    /// Header flags this build does not know (a later format's features).
    #[error(
        "the snapshot sets header flags 0x{0:x}, which this matrix-tui does not know: it was written by a later \
         one; restore it with that one"
    )]
    UnknownFlags(u32),
    /// The file ends before what its header announces.
    #[error("the snapshot is cut short: {0}; the file is incomplete (a copy or a write that did not finish)")]
    Truncated(&'static str),
    /// The contents do not match the checksum.
    #[error("the snapshot is corrupted: its checksum is 0x{expected:016x} but its contents give 0x{found:016x}")]
    Checksum {
        /// What the header says.
        expected: u64,
        /// What the contents give.
        found: u64,
    },
    /// A size no VM can have.
    #[error("the snapshot's {what} ({value} bytes) is out of range: {limit}")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What it may be.
        limit: &'static str,
    },
    /// A page past the end of memory, or stored twice.
    #[error("the snapshot stores page {index} {why}")]
    BadPage {
        /// The page's index.
        index: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The state is not UTF-8.
    #[error("the snapshot's state is not UTF-8 text")]
    NotText,
    /// Bytes after the last page.
    #[error("the snapshot has {0} bytes after its last page")]
    Trailing(usize),
}

/// FNV-1a, 64 bits: a checksum against damage, not against tampering.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_on(FNV_START, bytes)
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `bytes` following what gave `hash` (so a file's parts can
/// be hashed as they are, without being put together first).
fn fnv1a_on(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Guest memory with its zero pages left out: what a snapshot stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pages {
    /// Guest memory in bytes (a whole number of pages).
    pub memory_size: u64,
    indices: Vec<u64>,
    data: Vec<u8>,
}

impl Pages {
    /// No pages yet of a memory of `memory_size` bytes.
    pub fn new(memory_size: u64) -> Self {
        assert_eq!(memory_size % PAGE_SIZE as u64, 0, "guest memory is a whole number of pages");
        Self { memory_size, indices: Vec::new(), data: Vec::new() }
    }

    /// The non-zero pages of `memory`.
    pub fn from_memory(memory: &[u8]) -> Self {
        let mut pages = Self::new(memory.len() as u64);
        for (index, page) in memory.chunks_exact(PAGE_SIZE).enumerate() {
            pages.keep(index as u64, page);
        }
        pages
    }

    /// Keeps page `index` unless it is all zero.
    pub fn keep(&mut self, index: u64, page: &[u8]) {
        if page.iter().any(|&byte| byte != 0) {
            self.indices.push(index);
            self.data.extend_from_slice(page);
        }
    }

    /// Keeps page `index`, zero or not (a page that became zero must reach
    /// a copy that had it otherwise).
    pub fn push(&mut self, index: u64, page: &[u8]) {
        self.indices.push(index);
        self.data.extend_from_slice(page);
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The pages kept: (index, bytes).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.indices.iter().copied().zip(self.data.chunks_exact(PAGE_SIZE))
    }
}

/// Encodes `state` (JSON) and the non-zero `pages` of the VM's memory.
pub fn encode(state: &str, pages: &Pages) -> Vec<u8> {
    let mut file = Vec::with_capacity(encoded_len(state, pages));
    encode_to(&mut file, state, pages).expect("writing into a Vec cannot fail");
    file
}

/// How many bytes [`encode`] makes of `state` and `pages`.
pub fn encoded_len(state: &str, pages: &Pages) -> usize {
    HEADER_SIZE + state.len() + pages.len() * RECORD
}

/// Writes the file [`encode`] makes to `out` as it goes, without making it
/// in memory first: the checksum is taken over the parts where they are.
pub fn encode_to(out: &mut impl std::io::Write, state: &str, pages: &Pages) -> std::io::Result<()> {
    let checksum = pages
        .iter()
        .fold(fnv1a(state.as_bytes()), |hash, (index, page)| fnv1a_on(fnv1a_on(hash, &index.to_le_bytes()), page));
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    for field in [state.len() as u64, pages.memory_size, pages.len() as u64, checksum] {
        out.write_all(&field.to_le_bytes())?;
    }
    out.write_all(state.as_bytes())?;
    for (index, page) in pages.iter() {
        out.write_all(&index.to_le_bytes())?;
        out.write_all(page)?;
    }
    Ok(())
}

/// Decodes a snapshot whose memory may be at most `max_memory` bytes; the
/// pages stay in `file`, which the result keeps.
pub fn decode(file: Vec<u8>, max_memory: u64) -> Result<Decoded, FormatError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if file.len() < HEADER_SIZE {
        return Err(FormatError::Truncated("the header"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let found = u32_at(8);
    if found != FORMAT_VERSION {
        return Err(FormatError::WrongVersion { found });
    }
    // No flag is defined in version 1: any set one is a feature this build lacks.
    let flags = u32_at(12);
    if flags != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let (state_len, memory_size, pages, expected) = (u64_at(16), u64_at(24), u64_at(32), u64_at(40));
    if state_len > MAX_STATE {
        return Err(FormatError::OutOfRange { what: "state", value: state_len, limit: "at most 16 MiB" });
    }
    if memory_size == 0 || memory_size > max_memory || memory_size % PAGE_SIZE as u64 != 0 {
        return Err(FormatError::OutOfRange {
            what: "memory size",
            value: memory_size,
            limit: "a whole number of 4 KiB pages, no more than the largest guest memory",
        });
    }
    let body = &file[HEADER_SIZE..];
    let pages_len = pages.checked_mul(RECORD as u64).ok_or(FormatError::Truncated("the pages"))?;
    let needed = state_len.checked_add(pages_len).ok_or(FormatError::Truncated("the pages"))?;
    if (body.len() as u64) < state_len {
        return Err(FormatError::Truncated("the state"));
    }
    if (body.len() as u64) < needed {
        return Err(FormatError::Truncated("the pages"));
    }
    if body.len() as u64 > needed {
        return Err(FormatError::Trailing(body.len() - needed as usize));
    }
    let found = fnv1a(body);
    if found != expected {
        return Err(FormatError::Checksum { expected, found });
    }
    let state = std::str::from_utf8(&body[..state_len as usize]).map_err(|_| FormatError::NotText)?.to_string();
    let mut seen = vec![false; memory_size as usize / PAGE_SIZE];
    let mut indices = Vec::with_capacity(pages as usize);
    for record in body[state_len as usize..].chunks_exact(RECORD) {
        let index = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
        let slot = usize::try_from(index).ok().filter(|&slot| slot < seen.len());
        let Some(slot) = slot else { return Err(FormatError::BadPage { index, why: "past the end of memory" }) };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(FormatError::BadPage { index, why: "twice" });
        }
        indices.push(index);
    }
    let pages_at = HEADER_SIZE + state_len as usize;
    Ok(Decoded { state, memory_size, indices, file, pages_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Vec<u8> {
        let mut memory = vec![0u8; 16 * PAGE_SIZE];
        memory[5] = 1;
        memory[7 * PAGE_SIZE + 100..7 * PAGE_SIZE + 104].copy_from_slice(b"neo!");
        memory
    }

    #[test]
    fn a_snapshot_comes_back_as_it_went_with_only_the_non_zero_pages_stored() {
        let file = encode(r#"{"name":"neo"}"#, &Pages::from_memory(&memory()));
        assert_eq!(file.len(), HEADER_SIZE + 14 + 2 * (8 + PAGE_SIZE));
        let decoded = decode(file, 1 << 30).unwrap();
        assert_eq!((decoded.state.as_str(), decoded.stored_pages()), (r#"{"name":"neo"}"#, 2));
        assert_eq!(decoded.memory(), memory());
        assert_eq!(decoded.pages().map(|(index, _)| index).collect::<Vec<_>>(), [0, 7]);
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let file = encode("{}", &Pages::from_memory(&memory()));
        assert_eq!(decode(b"ELF".to_vec(), 1 << 30), Err(FormatError::BadMagic));
        let mut version = file.clone();
        version[8] = 2;
        let error = decode(version, 1 << 30).unwrap_err();
        assert_eq!(error, FormatError::WrongVersion { found: 2 });
        assert!(error.to_string().contains("this matrix-tui reads version 1"), "{error}");
        assert_eq!(decode(file[..HEADER_SIZE - 1].to_vec(), 1 << 30), Err(FormatError::Truncated("the header")));
        assert_eq!(decode(file[..file.len() - 1].to_vec(), 1 << 30), Err(FormatError::Truncated("the pages")));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(flipped, 1 << 30), Err(FormatError::Checksum { .. })));
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(decode(longer, 1 << 30), Err(FormatError::Trailing(1)));
        assert!(matches!(decode(file, PAGE_SIZE as u64), Err(FormatError::OutOfRange { what: "memory size", .. })));
    }

    #[test]
    fn pages_outside_memory_or_stored_twice_are_refused() {
        let mut file = encode("{}", &Pages::from_memory(&memory()));
        // Point the second stored page (index 7) past the end, then at page 0 again.
        let second = HEADER_SIZE + 2 + 8 + PAGE_SIZE;
        for (index, error) in [(99u64, "past the end of memory"), (0, "twice")] {
            file[second..second + 8].copy_from_slice(&index.to_le_bytes());
            let body_checksum = fnv1a(&file[HEADER_SIZE..]);
            file[40..48].copy_from_slice(&body_checksum.to_le_bytes());
            assert_eq!(decode(file.clone(), 1 << 30), Err(FormatError::BadPage { index, why: error }));
        }
    }
}
