//! Where a VM's gdb server listens: `HOST:PORT` (TCP) or a Unix socket path.

use std::path::PathBuf;

/// A gdb server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `HOST:PORT`, as `target remote HOST:PORT` connects to it.
    Tcp(String),
    /// A Unix socket path (`target remote /path`).
    Unix(PathBuf),
}

impl ListenAddress {
    /// Reads an address: anything with a `/` is a socket path; else it must
    /// be `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        let port = text.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(_))) if !host.is_empty() => Ok(Self::Tcp(text.to_string())),
            _ => Err(format!(
                "'{text}' is neither HOST:PORT (such as 127.0.0.1:1234) nor a socket path (such as /tmp/neo.gdb)"
            )),
        }
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => f.write_str(address),
            Self::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_tcp_or_unix() {
        assert_eq!(ListenAddress::parse("127.0.0.1:1234"), Ok(ListenAddress::Tcp("127.0.0.1:1234".into())));
        assert_eq!(ListenAddress::parse("localhost:9"), Ok(ListenAddress::Tcp("localhost:9".into())));
        assert_eq!(ListenAddress::parse("[::1]:1234"), Ok(ListenAddress::Tcp("[::1]:1234".into())));
        assert_eq!(ListenAddress::parse("/tmp/g.sock"), Ok(ListenAddress::Unix("/tmp/g.sock".into())));
        assert_eq!(ListenAddress::parse("./g.sock"), Ok(ListenAddress::Unix("./g.sock".into())));
        for bad in ["1234", "host:", ":1234", "host:99999", ""] {
            assert!(ListenAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
