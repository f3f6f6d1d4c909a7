//! The built-in guests (built from `guest/` by build.rs and embedded) and how a
//! GUEST argument becomes an image: a built-in name, or a path to a file.

use std::path::Path;
use std::sync::Arc;

use crate::os::files::{self, FileError};
use crate::vm::GuestLayout;
use crate::vm::layout::MAX_MEMORY;

/// A guest that ships inside the binary.
#[derive(Debug)]
pub struct BuiltinGuest {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line about what it does.
    pub summary: &'static str,
    /// The image (ELF, or a flat binary for the course guests).
    pub image: &'static [u8],
    /// The mode, load address and entry it is built for.
    pub layout: GuestLayout,
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

/// Where guest `guest` goes unless its VM says otherwise: a built-in
/// course guest's own mode and load address, else long mode at 0x10000.
pub fn default_layout(guest: &str) -> GuestLayout {
    builtin(guest).map_or_else(GuestLayout::default, |builtin| builtin.layout)
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
    /// The file could not be read, or is not a regular file.
    #[error("cannot read guest image {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// Why.
        source: FileError,
    },
    /// The file is larger than any guest memory.
    #[error("guest image {path} is larger than the largest guest memory (1 GiB)")]
    TooLarge {
        /// The path given.
        path: String,
    },
}

/// Resolves GUEST to its image: a built-in name first, then a file path.
pub fn resolve(guest: &str) -> Result<Arc<[u8]>, GuestError> {
    if let Some(builtin) = builtin(guest) {
        return Ok(Arc::from(builtin.image));
    }
    let path = Path::new(guest);
    match files::read_regular(path, MAX_MEMORY) {
        Ok(image) => Ok(Arc::from(image)),
        Err(FileError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(GuestError::Unknown(guest.to_string()))
        }
        Err(FileError::TooLarge { .. }) => Err(GuestError::TooLarge { path: guest.to_string() }),
        Err(source) => Err(GuestError::Unreadable { path: guest.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_builtins_are_elf_images_and_course_guests_flat_ones_with_their_layout() {
        assert!(BUILTIN.len() >= 12);
        for guest in BUILTIN {
            let elf = guest.image.starts_with(b"\x7fELF");
            assert_eq!(elf, guest.layout.load.is_none(), "{}", guest.name);
        }
        assert_eq!(default_layout("hello16").mode, crate::vm::CpuMode::Real);
        assert_eq!(default_layout("counter").load, Some(0x10000));
        assert_eq!(default_layout("./my.img"), GuestLayout::default());
    }

    #[test]
    fn devices_are_refused_as_images_before_a_byte_is_read() {
        let error = resolve("/dev/zero").unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot read guest image /dev/zero: it is a character device, not a regular file; give the path of a file"
        );
    }

    #[test]
    fn unknown_guests_list_the_builtins() {
        let error = resolve("no-such-guest").unwrap_err().to_string();
        assert!(error.contains("unknown guest 'no-such-guest'"), "{error}");
        assert!(error.contains("part1, neo, morpheus"), "{error}");
    }
}
