//! The shared secret that lets a sender hand a receiver a VM over TCP
//! (`--migrate-secret FILE` on both sides). The receiver opens every
//! connection with a fresh random challenge; the sender answers with
//! HMAC-SHA256 of it under the secret, so the secret never crosses the
//! link and an answer cannot be replayed. Without a secret the answer is
//! zeros, which a receiver with none accepts (Unix sockets, mode 0600, and
//! loopback TCP only: a receiver on another address needs a secret).

use std::io::Read;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::os::files::{self, FileError};

/// Bytes of a challenge and of its answer.
pub const PROOF_BYTES: usize = 32;
/// The shortest secret taken: 16 bytes (128 bits of a random file's worth).
pub const MIN_SECRET: usize = 16;
/// The longest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// A secret, read from its file.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// It cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[from] FileError),
    /// It is too short to be a secret.
    #[error("it holds {0} bytes; a secret needs at least {MIN_SECRET} (head -c 32 /dev/urandom | base64 > FILE)")]
    TooShort(usize),
}

impl Secret {
    /// Reads the secret in `path` (surrounding whitespace left out).
    pub fn read(path: &Path) -> Result<Self, SecretError> {
        let bytes = files::read_regular(path, MAX_SECRET_FILE)?;
        let text = bytes.trim_ascii();
        if text.len() < MIN_SECRET {
            return Err(SecretError::TooShort(text.len()));
        }
        Ok(Self(text.to_vec()))
    }

    /// A secret of these bytes (for tests).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    fn mac(&self, challenge: &[u8; PROOF_BYTES]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"matrix-tui migration v2\0");
        mac.update(challenge);
        mac
    }
}

/// The sender's answer to `challenge`: its HMAC under `secret`, or zeros
/// without one.
pub fn answer(secret: Option<&Secret>, challenge: &[u8; PROOF_BYTES]) -> [u8; PROOF_BYTES] {
    secret.map_or([0; PROOF_BYTES], |secret| secret.mac(challenge).finalize().into_bytes().into())
}

/// Whether `answer` proves the sender knows `secret` (in constant time);
/// a receiver without a secret takes any answer.
pub fn accepts(secret: Option<&Secret>, challenge: &[u8; PROOF_BYTES], answer: &[u8; PROOF_BYTES]) -> bool {
    secret.is_none_or(|secret| secret.mac(challenge).verify_slice(answer).is_ok())
}

/// A fresh challenge from the kernel's random numbers.
pub fn challenge() -> std::io::Result<[u8; PROOF_BYTES]> {
    let mut bytes = [0; PROOF_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_answers_a_challenge_and_an_answer_fits_one_challenge() {
        let secret = Secret::from_bytes(b"correct horse battery staple");
        let (one, two) = (challenge().unwrap(), challenge().unwrap());
        assert_ne!(one, two);
        let right = answer(Some(&secret), &one);
        assert!(accepts(Some(&secret), &one, &right));
        assert!(!accepts(Some(&secret), &two, &right), "an answer is not replayed for another challenge");
        let other = Secret::from_bytes(b"incorrect horse battery staple");
        assert!(!accepts(Some(&secret), &one, &answer(Some(&other), &one)));
        assert!(!accepts(Some(&secret), &one, &answer(None, &one)), "no secret is not the secret");
        assert!(accepts(None, &one, &answer(None, &one)), "a receiver without one takes any");
    }

    #[test]
    fn secret_files_are_read_trimmed_and_short_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  0123456789abcdef0123\n").unwrap();
        let secret = Secret::read(&path).unwrap();
        assert_eq!(secret.0, b"0123456789abcdef0123");
        assert_eq!(format!("{secret:?}"), "Secret(..)", "never printed");
        std::fs::write(&path, "short\n").unwrap();
        assert!(Secret::read(&path).unwrap_err().to_string().contains("at least 16"));
    }
}
