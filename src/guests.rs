//! The built-in guests (built from `guest/` by build.rs and embedded) and how a
//! GUEST argument becomes an image: a built-in name, or a path to a file.

use std::path::Path;
use std::sync::Arc;

use crate::vm::layout::MAX_MEMORY;

/// A guest that ships inside the binary.
#[derive(Debug)]
pub struct BuiltinGuest {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line about what it does.
    pub summary: &'static str,
    /// The ELF image.
    pub image: &'static [u8],
}

/// Every built-in guest, in the order `matrix-tui guests` lists them.
pub const BUILTIN: &[BuiltinGuest] = include!(concat!(env!("OUT_DIR"), "/builtin_guests.rs"));

/// The target the built-in guests were built for: `x86_64-unknown-none`, or
/// the host target where that is not installed (see build.rs).
pub const GUEST_TARGET: &str = include!(concat!(env!("OUT_DIR"), "/guest_target.rs"));

/// The built-in guest called `name`.
pub fn builtin(name: &str) -> Option<&'static BuiltinGuest> {
    BUILTIN.iter().find(|guest| guest.name == name)
}

/// The names of the built-in guests, comma-separated.
pub fn builtin_names() -> String {
    BUILTIN.iter().map(|guest| guest.name).collect::<Vec<_>>().join(", ")
}

/// A GUEST argument that names no usable image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Neither a built-in nor an existing file.
    #[error("unknown guest '{0}': not a built-in guest ({names}) and no such file", names = builtin_names())]
    Unknown(String),
    /// The file could not be read.
    #[error("cannot read guest image {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any guest memory.
    #[error("guest image {path} is {size} bytes, more than the largest guest memory (1 GiB)")]
    TooLarge {
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
    },
}

/// Resolves GUEST to its image: a built-in name first, then a file path.
pub fn resolve(guest: &str) -> Result<Arc<[u8]>, GuestError> {
    if let Some(builtin) = builtin(guest) {
        return Ok(Arc::from(builtin.image));
    }
    let path = Path::new(guest);
    let unreadable = |source| GuestError::Unreadable { path: guest.to_string(), source };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(GuestError::Unknown(guest.to_string()));
        }
        Err(error) => return Err(unreadable(error)),
    };
    if metadata.len() > MAX_MEMORY {
        return Err(GuestError::TooLarge { path: guest.to_string(), size: metadata.len() });
    }
    std::fs::read(path).map(Arc::from).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_is_an_elf_image() {
        assert!(BUILTIN.len() >= 8);
        for guest in BUILTIN {
            assert!(guest.image.starts_with(b"\x7fELF"), "{} is not ELF", guest.name);
        }
    }

    #[test]
    fn unknown_guests_list_the_builtins() {
        let error = resolve("no-such-guest").unwrap_err().to_string();
        assert!(error.contains("unknown guest 'no-such-guest'"), "{error}");
        assert!(error.contains("part1, neo, morpheus"), "{error}");
    }
}
