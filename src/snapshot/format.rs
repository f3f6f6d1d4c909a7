//! The snapshot file format: one VM's state as readable JSON, and its memory
//! with the zero pages left out, behind a header with a magic, a format
//! version and a checksum. Pure: bytes in, bytes out, every refusal a
//! [`FormatError`] that says what is wrong.
//!
//! ```text
//! magic        8 bytes   "MTXSNAP\0"
//! major        u16 LE    FORMAT_MAJOR (2; version 1 files wrote a u32 1 here)
//! minor        u16 LE    FORMAT_MINOR (2; 2.1 added the vCPUs past the first,
//!                        2.2 where the guest's lock records lie)
//! flags        u32 LE    0
//! state_len    u64 LE    bytes of the JSON state
//! memory_size  u64 LE    guest memory in bytes (a multiple of 4 KiB)
//! pages        u64 LE    pages stored
//! checksum     u64 LE    CRC-32 (IEEE) of everything after the header, in
//!                        the low 32 bits (version 1: FNV-1a 64)
//! state        state_len bytes of UTF-8 JSON (`super::schema`)
//! pages        `pages` times: index u64 LE, then 4096 bytes
//! ```
//!
//! The version rule: a reader reads every file of its own major version
//! whose minor is not newer than its own (a minor only adds to the one
//! before it: 2.1 added the vCPUs past the first, absent for a VM of one,
//! so a 2.0 file reads as a 2.1 one, and 2.2 the place of the guest's lock
//! records, absent where it named none; an older reader refuses a newer minor,
//! whose additions it would drop), and every older major it knows: version
//! 1 differs from 2.0 only in its checksum.

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"MTXSNAP\0";
/// The format's major version this build writes: a file of another major
/// is read only if this build knows it (1 and 2).
pub const FORMAT_MAJOR: u16 = 2;
/// The minor version this build writes; it reads any minor up to it.
pub const FORMAT_MINOR: u16 = 2;
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
    /// The format version the file was written in: (major, minor).
    pub version: (u16, u16),
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
        let version = (FORMAT_MAJOR, FORMAT_MINOR);
        Self { version, state, memory_size: pages.memory_size, indices, file, pages_at: 0 }
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
    /// Written in a format version this build cannot read.
    #[error(
        "the snapshot is in format version {}.{}, and this matrix-tui reads versions 1 and 2.0 to \
         {FORMAT_MAJOR}.{FORMAT_MINOR}: {}", found.0, found.1, if Self::is_newer(*found) {
            "it was written by a later matrix-tui; restore it with that one"
        } else {
            "it is not a version any matrix-tui wrote"
        }
    )]
    WrongVersion {
        /// The version the file says: (major, minor).
        found: (u16, u16),
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

impl FormatError {
    fn is_newer(found: (u16, u16)) -> bool {
        found > (FORMAT_MAJOR, FORMAT_MINOR)
    }
}

/// The checksum a file's major version uses: against damage, not tampering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checksum {
    /// Version 1's FNV-1a 64 (kept only to read those files).
    Fnv1a64,
    /// CRC-32 (IEEE), from version 2 on.
    Crc32,
}

impl Checksum {
    /// Which one a file of `version` carries, if this build reads it.
    fn of(version: (u16, u16)) -> Result<Self, FormatError> {
        match version {
            (1, 0) => Ok(Self::Fnv1a64),
            (FORMAT_MAJOR, minor) if minor <= FORMAT_MINOR => Ok(Self::Crc32),
            found => Err(FormatError::WrongVersion { found }),
        }
    }

    /// The checksum of `parts`, one after another.
    fn of_parts<'a>(self, parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
        match self {
            Self::Fnv1a64 => parts
                .into_iter()
                .flatten()
                .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)),
            Self::Crc32 => {
                let mut hasher = crc32fast::Hasher::new();
                parts.into_iter().for_each(|part| hasher.update(part));
                u64::from(hasher.finalize())
            }
        }
    }
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

    /// The pages kept, to change: (index, bytes).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut [u8])> + '_ {
        self.indices.iter().copied().zip(self.data.chunks_exact_mut(PAGE_SIZE))
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
    let indices: Vec<[u8; 8]> = pages.iter().map(|(index, _)| index.to_le_bytes()).collect();
    let records = indices.iter().zip(pages.iter()).flat_map(|(index, (_, page))| [index.as_slice(), page]);
    let checksum = Checksum::Crc32.of_parts(std::iter::once(state.as_bytes()).chain(records));
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_MAJOR.to_le_bytes())?;
    out.write_all(&FORMAT_MINOR.to_le_bytes())?;
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
    let u16_at = |at: usize| u16::from_le_bytes(file[at..at + 2].try_into().expect("2 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let version = (u16_at(8), u16_at(10));
    let checksum = Checksum::of(version)?;
    // No flag is defined in versions 1 and 2.0: a set one is a feature this build lacks.
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
    let found = checksum.of_parts([body]);
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
    Ok(Decoded { version, state, memory_size, indices, file, pages_at })
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
        assert_eq!(decoded.version, (FORMAT_MAJOR, FORMAT_MINOR));
        assert_eq!((decoded.state.as_str(), decoded.stored_pages()), (r#"{"name":"neo"}"#, 2));
        assert_eq!(decoded.memory(), memory());
        assert_eq!(decoded.pages().map(|(index, _)| index).collect::<Vec<_>>(), [0, 7]);
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let file = encode("{}", &Pages::from_memory(&memory()));
        assert_eq!(decode(b"ELF".to_vec(), 1 << 30), Err(FormatError::BadMagic));
        for (bytes, found, why) in [
            ([2, 0, 3, 0], (2, 3), "written by a later matrix-tui"),
            ([3, 0, 0, 0], (3, 0), "written by a later matrix-tui"),
            ([0, 0, 0, 0], (0, 0), "not a version any matrix-tui wrote"),
            ([1, 0, 1, 0], (1, 1), "not a version any matrix-tui wrote"),
        ] {
            let mut version = file.clone();
            version[8..12].copy_from_slice(&bytes);
            let error = decode(version, 1 << 30).unwrap_err();
            assert_eq!(error, FormatError::WrongVersion { found });
            assert!(error.to_string().contains(why), "{error}");
        }
        // An older minor of this major reads: 2.1 and 2.2 only added to 2.0.
        let mut older = file.clone();
        older[8..12].copy_from_slice(&[2, 0, 0, 0]);
        assert_eq!(decode(older, 1 << 30).map(|decoded| decoded.version), Ok((2, 0)));
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
            let body_checksum = Checksum::Crc32.of_parts([&file[HEADER_SIZE..]]);
            file[40..48].copy_from_slice(&body_checksum.to_le_bytes());
            assert_eq!(decode(file.clone(), 1 << 30), Err(FormatError::BadPage { index, why: error }));
        }
    }

    #[test]
    fn a_version_1_file_is_read_with_its_own_checksum() {
        let file = encode("{}", &Pages::from_memory(&memory()));
        let mut old = file.clone();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let fnv = Checksum::Fnv1a64.of_parts([&old[HEADER_SIZE..]]);
        old[40..48].copy_from_slice(&fnv.to_le_bytes());
        let decoded = decode(old.clone(), 1 << 30).unwrap();
        assert_eq!((decoded.version, decoded.memory()), ((1, 0), memory()));
        // Its checksum is not version 2's: the checksum follows the version.
        old[8..12].copy_from_slice(&[2, 0, 0, 0]);
        assert!(matches!(decode(old, 1 << 30), Err(FormatError::Checksum { .. })));
        // A set flag is a later format's feature.
        let mut flagged = file;
        flagged[12] = 1;
        assert_eq!(decode(flagged, 1 << 30), Err(FormatError::UnknownFlags(1)));
    }

    #[test]
    fn the_checksums_are_the_published_ones() {
        // CRC-32/ISO-HDLC and FNV-1a 64 of "123456789" (their check values).
        assert_eq!(Checksum::Crc32.of_parts([b"1234".as_slice(), b"56789"]), 0xcbf4_3926);
        assert_eq!(Checksum::Fnv1a64.of_parts([b"123456789".as_slice()]), 0x06d5_573923c6cdfc);
    }
}
