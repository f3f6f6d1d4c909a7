//! Opening the files a user names, so that no path can hang or flood the
//! process: inputs must be regular files and are read up to a limit; an
//! output opened without blocking (a FIFO with no reader is an error, not
//! a wait).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path is a device, a FIFO, a socket or a directory.
    #[error("it is {0}, not a regular file; give the path of a file")]
    NotRegular(&'static str),
    /// The file is larger than such a file may be.
    #[error("it is larger than {limit} bytes, the most this kind of file may have")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A FIFO has no reader.
    #[error("it is a FIFO that no process is reading; start the reader first")]
    NoReader,
}

/// What kind of file `metadata` describes, for messages.
pub fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// Reads the regular file at `path`, refusing anything else and anything
/// over `limit` bytes. A FIFO or a device is refused before a byte is read
/// (it is opened without blocking, then checked).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(FileError::NotRegular(kind_of(file_type)));
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells a file at the limit from a larger one
    // (and from one that grows while it is read).
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Removes a Unix socket an earlier run left at `path`, so that it can be
/// bound again; any other file there is left for the bind to refuse.
pub fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Creates (or truncates) the regular file at `path`; an existing path that
/// is not a regular file is refused untouched.
pub fn create_regular(path: &Path) -> Result<File, FileError> {
    match std::fs::symlink_metadata(path).and_then(|_| std::fs::metadata(path)) {
        Ok(metadata) if !metadata.is_file() => return Err(FileError::NotRegular(kind_of(metadata.file_type()))),
        _ => {}
    }
    Ok(File::create(path)?)
}

/// Temporary files being written, removed by [`remove_partial_files`] when
/// the process must end at once (a second stop signal).
static PARTIAL_FILES: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Writes `bytes` to `path` whole or not at all, and durably: the target
/// must be a regular file or not exist (a device, a FIFO, a socket, a
/// directory or a symbolic link is refused untouched); the bytes go to a
/// new temporary file beside it (created with `O_EXCL | O_NOFOLLOW`, so no
/// planted file or link is written through), which is synced, renamed over
/// the target, and the directory synced, so that a file reported written
/// survives a power cut. On any failure, and on a forced exit meanwhile,
/// the temporary file is removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write as _;
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`], the contents written by `write` as it goes (a
/// large file need not be whole in memory first).
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&File>) -> std::io::Result<()>,
) -> Result<(), FileError> {
    use std::io::Write as _;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.is_file() => return Err(FileError::NotRegular(kind_of(metadata.file_type()))),
        _ => {}
    }
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(
        ".partial-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let partial = path.with_file_name(partial_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&partial)?;
    lock_partials().push(partial.clone());
    let written = {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &file);
        write(&mut buffered).and_then(|()| buffered.flush())
    }
    .and_then(|()| file.sync_all())
    .and_then(|()| std::fs::rename(&partial, path))
    .and_then(|()| sync_directory_of(path));
    lock_partials().retain(|listed| listed != &partial);
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    Ok(written?)
}

/// The directory holding `path`, synced (its entry for a renamed file made durable).
fn sync_directory_of(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn lock_partials() -> std::sync::MutexGuard<'static, Vec<std::path::PathBuf>> {
    PARTIAL_FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the temporary files being written now: for a process that must
/// end at once. Never blocks (a writer holding the list is skipped).
pub fn remove_partial_files() {
    if let Ok(partials) = PARTIAL_FILES.try_lock() {
        for partial in partials.iter() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// Opens `path` to write a stream to: a regular file is created or
/// truncated; an existing FIFO, character device or socket is opened as it
/// is (without blocking: a FIFO must already have a reader); the file comes
/// back in blocking mode, for a writer thread.
pub fn open_stream(path: &Path) -> Result<File, FileError> {
    let existing = std::fs::metadata(path).ok().map(|metadata| metadata.file_type());
    if let Some(file_type) = existing {
        if file_type.is_dir() || file_type.is_block_device() {
            return Err(FileError::NotRegular(kind_of(file_type)));
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).custom_flags(libc::O_NONBLOCK);
    if existing.is_none_or(|file_type| file_type.is_file()) {
        options.create(true).truncate(true);
    }
    let file = options.open(path).map_err(|error| match error.raw_os_error() {
        Some(libc::ENXIO) => FileError::NoReader,
        _ => FileError::Io(error),
    })?;
    set_blocking(&file)?;
    Ok(file)
}

fn set_blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor we own change only its
    // status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused_before_reading() {
        for (path, kind) in
            [("/dev/zero", "a character device"), ("/dev/urandom", "a character device"), ("/", "a directory")]
        {
            let error = read_regular(Path::new(path), 1 << 20).unwrap_err();
            assert!(matches!(error, FileError::NotRegular(k) if k == kind), "{path}: {error}");
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_regular(&path, 100).unwrap().len(), 100);
        assert!(matches!(read_regular(&path, 99), Err(FileError::TooLarge { limit: 99 })));
    }

    #[test]
    fn a_fifo_is_refused_as_input_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_regular(&fifo, 10), Err(FileError::NotRegular("a FIFO"))));
        assert!(matches!(open_stream(&fifo), Err(FileError::NoReader)));
        assert!(matches!(create_regular(&fifo), Err(FileError::NotRegular("a FIFO"))));
    }

    #[test]
    fn a_stream_to_a_new_file_or_a_device_opens() {
        let dir = tempfile::tempdir().unwrap();
        open_stream(&dir.path().join("new")).unwrap();
        open_stream(Path::new("/dev/null")).unwrap();
        assert!(matches!(open_stream(dir.path()), Err(FileError::NotRegular("a directory"))));
    }
}
