//! Caps gdb's memory reads at the packet size the stub advertises.
//!
//! gdbstub serves an `m ADDR,LENGTH` packet by reading LENGTH bytes in
//! buffer-sized chunks, however large LENGTH is: one `m0,ffffffffffffffff`
//! against a 1 GiB guest kept a session busy for minutes. The protocol lets
//! a stub answer with fewer bytes than asked, and gdb asks again for the
//! rest, so the bytes from the debugger pass through [`ReadCap`], which
//! rewrites the LENGTH of such a packet (and its checksum) before gdbstub
//! sees it. Everything else passes through unchanged.

/// The packet size gdbstub advertises (`PacketSize=1000`, its default buffer).
pub const PACKET_SIZE: usize = 4096;
/// The most bytes one memory read returns: their hex fills a packet.
pub const MAX_READ: u64 = (PACKET_SIZE / 2) as u64;
/// A packet longer than this is passed on as it is (gdbstub refuses it).
const LONGEST_HELD: usize = PACKET_SIZE + 16;

/// The filter's state between chunks of the byte stream.
#[derive(Debug, Default)]
pub struct ReadCap {
    /// The packet being gathered, from its `$`.
    packet: Vec<u8>,
    /// Checksum digits still to come after the `#`.
    checksum_left: Option<u8>,
}

impl ReadCap {
    /// Passes `bytes` on to `out`, holding a packet until it is whole.
    pub fn filter(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &byte in bytes {
            if self.packet.is_empty() {
                if byte == b'$' {
                    self.packet.push(byte);
                } else {
                    out.push(byte);
                }
                continue;
            }
            self.packet.push(byte);
            match self.checksum_left {
                None if byte == b'#' => self.checksum_left = Some(2),
                None if self.packet.len() > LONGEST_HELD => self.pass(out),
                None => {}
                Some(left) => {
                    self.checksum_left = Some(left - 1);
                    if left == 1 {
                        match capped(&self.packet) {
                            Some(rewritten) => {
                                out.extend_from_slice(&rewritten);
                                self.packet.clear();
                                self.checksum_left = None;
                            }
                            None => self.pass(out),
                        }
                    }
                }
            }
        }
    }

    fn pass(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.packet);
        self.checksum_left = None;
    }
}

/// A whole packet `$m ADDR,LENGTH#CS` with a LENGTH over [`MAX_READ`] and a
/// good checksum, rewritten to ask for [`MAX_READ`]; `None` for any other
/// packet (passed on as it is: a bad checksum is gdbstub's to refuse).
fn capped(packet: &[u8]) -> Option<Vec<u8>> {
    let body = packet.strip_prefix(b"$")?;
    let (body, checksum) = body.split_at(body.len().checked_sub(3)?);
    if checksum[0] != b'#' || u8::from_str_radix(std::str::from_utf8(&checksum[1..]).ok()?, 16).ok()? != sum(body) {
        return None;
    }
    let (address, length) = std::str::from_utf8(body.strip_prefix(b"m")?).ok()?.split_once(',')?;
    if !address.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    // A LENGTH too long for a u64 is over the cap too.
    let over = length.bytes().all(|byte| byte.is_ascii_hexdigit())
        && !length.is_empty()
        && u64::from_str_radix(length, 16).map_or(true, |length| length > MAX_READ);
    if !over {
        return None;
    }
    let body = format!("m{address},{MAX_READ:x}");
    Some(format!("${body}#{:02x}", sum(body.as_bytes())).into_bytes())
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &str) -> Vec<u8> {
        format!("${body}#{:02x}", sum(body.as_bytes())).into_bytes()
    }

    fn through(chunks: &[&[u8]]) -> Vec<u8> {
        let mut cap = ReadCap::default();
        let mut out = Vec::new();
        for chunk in chunks {
            cap.filter(chunk, &mut out);
        }
        out
    }

    #[test]
    fn a_huge_read_is_cut_to_the_packet_size_even_split_across_chunks() {
        let huge = packet("m0,ffffffffffffffff");
        let (first, second) = huge.split_at(7);
        let mut input = b"+".to_vec();
        input.extend_from_slice(first);
        assert_eq!(through(&[&input, second]), [b"+".as_slice(), &packet("m0,800")].concat());
        assert_eq!(through(&[&packet("m10000,123456789abcdef0123")]), packet("m10000,800"));
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for body in ["m10000,40", "m10000,800", "g", "qSupported:multiprocess+", "M10000,1:90", "vCont;c"] {
            let bytes = packet(body);
            assert_eq!(through(&[&bytes]), bytes, "{body}");
        }
        // A bad checksum is gdbstub's to refuse; Ctrl-C and acks pass at once.
        assert_eq!(through(&[b"$m0,ffffffff#00"]), b"$m0,ffffffff#00");
        assert_eq!(through(&[b"\x03-+"]), b"\x03-+");
    }

    #[test]
    fn an_endless_packet_is_passed_on_not_held() {
        let endless = [b"$".as_slice(), &vec![b'a'; 3 * PACKET_SIZE]].concat();
        assert_eq!(through(&[&endless]).len(), endless.len());
    }
}
