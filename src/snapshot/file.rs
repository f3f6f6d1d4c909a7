//! Snapshot files: read with a bound and checked before anything is made
//! from them; written whole or not at all (to a temporary name beside the
//! target, then renamed over it).

use std::path::Path;

use super::format::{HEADER_SIZE, MAX_STATE, PAGE_SIZE};
use super::state::{Snapshot, SnapshotError};
use crate::os::files::{self, FileError};
use crate::vm::layout::MAX_MEMORY;

/// The largest file a snapshot can be: every page of the largest memory stored.
pub const MAX_FILE: u64 = HEADER_SIZE as u64 + MAX_STATE + (MAX_MEMORY / PAGE_SIZE as u64) * (8 + PAGE_SIZE as u64);

/// A snapshot file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// It cannot be read.
    #[error("cannot read the snapshot {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why.
        source: FileError,
    },
    /// It is not a snapshot this build can restore.
    #[error("the snapshot {path} cannot be restored: {source}")]
    Invalid {
        /// The path given.
        path: String,
        /// What is wrong.
        source: SnapshotError,
    },
}

/// Reads and checks the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotFileError> {
    let shown = path.display().to_string();
    let bytes = files::read_regular(path, MAX_FILE)
        .map_err(|source| SnapshotFileError::Read { path: shown.clone(), source })?;
    Snapshot::decode(&shown, bytes).map_err(|source| SnapshotFileError::Invalid { path: shown, source })
}

/// Writes `bytes` to `path` whole, durably and only there, or not at all
/// ([`files::write_atomically`]).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    files::write_atomically(path, bytes)
}

/// The first of `NAME-1.snap`, `NAME-2.snap`, ... in `dir` that does not
/// exist yet (what the UI's snapshot key writes).
pub fn next_free_name(dir: &Path, name: &str) -> std::path::PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    (1..).map(|n| dir.join(format!("{safe}-{n}.snap"))).find(|path| !path.exists()).expect("a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_whole_or_leaves_nothing_and_names_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neo-1.snap");
        write(&path, b"MTXSNAP\0rest").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"MTXSNAP\0rest");
        assert_eq!(next_free_name(dir.path(), "neo"), dir.path().join("neo-2.snap"));
        assert_eq!(next_free_name(dir.path(), "a/b c"), dir.path().join("a_b_c-1.snap"));
        let missing = dir.path().join("no/such/dir.snap");
        assert!(write(&missing, b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial file left behind");
    }

    #[test]
    fn only_a_regular_file_is_replaced_and_nothing_is_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        // A symbolic link as the target: refused, its target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("link.snap");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let error = write(&link, b"x").unwrap_err().to_string();
        assert!(error.contains("a symbolic link, not a regular file"), "{error}");
        // A FIFO and a directory as the target: refused.
        let fifo = dir.path().join("fifo.snap");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(write(&fifo, b"x").unwrap_err().to_string().contains("a FIFO"));
        assert!(write(dir.path(), b"x").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::metadata(&fifo).unwrap().file_type()));
        // A regular file is replaced whole.
        let plain = dir.path().join("plain.snap");
        std::fs::write(&plain, b"old contents, longer").unwrap();
        write(&plain, b"new").unwrap();
        assert_eq!(std::fs::read(&plain).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|name| !name.to_string_lossy().contains(".partial-")), "{left:?}");
    }

    #[test]
    fn unreadable_and_damaged_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let error = read(&dir.path().join("none.snap")).unwrap_err().to_string();
        assert!(error.starts_with("cannot read the snapshot") && error.contains("No such file"), "{error}");
        let path = dir.path().join("bad.snap");
        std::fs::write(&path, b"ELF").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("cannot be restored: not a matrix-tui snapshot"), "{error}");
    }
}
