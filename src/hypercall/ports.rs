//! A VM's port map: ports that make one of the hypercalls besides the guest
//! ABI's own (a course's guest prints on port 0x10), and whether accesses to
//! ports that make none are shown as plain lines (`show_ports`), the way the
//! course's own hypervisors printed them, instead of as errors.

use super::decode::{
    self, Direction, Hypercall, Misuse, PORT_GVA_TO_HVA, PORT_IPI, PORT_LOCK_WATCH, PORT_NUM_EXITS,
    PORT_NUM_EXITS_BY_TYPE, PORT_PRINT_STR, PORT_PRINT8, PORT_PRINT32, PORT_TIMER_START, PORT_TIMER_STOP,
    PORT_VCPU_COUNT, PORT_VCPU_ID, PORT_YIELD, PORT_YIELD_TO,
};
use crate::vm::PortAccess;

/// The hypercalls a port can be mapped to, by name, with the ABI port whose
/// meaning the mapped port takes.
const CALLS: &[(&str, u16)] = &[
    ("print8bit", PORT_PRINT8),
    ("print32bit", PORT_PRINT32),
    ("numExits", PORT_NUM_EXITS),
    ("printStr", PORT_PRINT_STR),
    ("numExitsByType", PORT_NUM_EXITS_BY_TYPE),
    ("gvaToHva", PORT_GVA_TO_HVA),
    ("yield", PORT_YIELD),
    ("timerStart", PORT_TIMER_START),
    ("timerStop", PORT_TIMER_STOP),
    ("vcpuId", PORT_VCPU_ID),
    ("vcpuCount", PORT_VCPU_COUNT),
    ("ipi", PORT_IPI),
    ("yieldTo", PORT_YIELD_TO),
    ("lockWatch", PORT_LOCK_WATCH),
];

/// The names of the hypercalls a port can be mapped to, in port order.
pub fn mappable_calls() -> impl Iterator<Item = &'static str> {
    CALLS.iter().map(|(name, _)| *name)
}

/// Most ports one VM may map.
pub const MAX_MAPPED_PORTS: usize = 64;

/// A VM's mapped ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap {
    /// (port, the ABI port whose hypercall it makes), in the order given.
    mapped: Vec<(u16, u16)>,
    /// Show accesses to ports that make no hypercall as plain lines.
    pub show_unknown: bool,
}

impl PortMap {
    /// Maps `port` to the hypercall called `call` (`print32bit` or
    /// `HC_print32bit`). A port already mapped is refused: one list (a
    /// `--ports`, a scenario's table) maps each port once.
    pub fn map(&mut self, port: u16, call: &str) -> Result<(), String> {
        if let Some((_, earlier)) = self.entries().find(|&(mapped, _)| mapped == port) {
            return Err(format!(
                "port 0x{port:x} is mapped twice ({earlier}, then {}); map each port once",
                crate::console::escape_input(call)
            ));
        }
        self.remap(port, call)
    }

    /// Maps `port` to `call`, in place of what it made before (the command
    /// line's `--ports` over a scenario's).
    pub fn remap(&mut self, port: u16, call: &str) -> Result<(), String> {
        let name = call.strip_prefix("HC_").unwrap_or(call);
        let abi_port = CALLS
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|&(_, abi_port)| abi_port)
            .ok_or_else(|| {
                let names: Vec<&str> = CALLS.iter().map(|(name, _)| *name).collect();
                format!("unknown hypercall '{}': give one of {}", crate::console::escape_input(call), names.join(", "))
            })?;
        self.mapped.retain(|&(mapped, _)| mapped != port);
        if self.mapped.len() >= MAX_MAPPED_PORTS {
            return Err(format!("a VM maps at most {MAX_MAPPED_PORTS} ports"));
        }
        self.mapped.push((port, abi_port));
        Ok(())
    }

    /// The ABI port whose hypercall `port` makes, if it is mapped.
    pub fn abi_port(&self, port: u16) -> Option<u16> {
        if self.mapped.is_empty() {
            return None;
        }
        self.mapped.iter().find(|&&(mapped, _)| mapped == port).map(|&(_, abi_port)| abi_port)
    }

    /// The mapped ports and their hypercalls' names, in the order given.
    pub fn entries(&self) -> impl Iterator<Item = (u16, &'static str)> + '_ {
        self.mapped.iter().map(|&(port, abi_port)| {
            (port, CALLS.iter().find(|(_, abi)| *abi == abi_port).map_or("?", |(name, _)| *name))
        })
    }
}

/// The widths a mapped port also takes for each hypercall (port, direction):
/// a 16-bit guest prints with `out %ax` and reads counts with `in %ax`.
const MAPPED_WIDTHS: &[(u16, Direction, &[u8])] = &[
    (PORT_PRINT8, Direction::Out, &[1]),
    (PORT_PRINT32, Direction::Out, &[1, 2, 4]),
    (PORT_NUM_EXITS, Direction::In, &[2, 4]),
    (PORT_PRINT_STR, Direction::Out, &[2, 4]),
    (PORT_NUM_EXITS_BY_TYPE, Direction::In, &[2, 4]),
    (PORT_GVA_TO_HVA, Direction::Out, &[2, 4]),
    (PORT_GVA_TO_HVA, Direction::In, &[4]),
    (PORT_YIELD, Direction::Out, &[1]),
    (PORT_TIMER_START, Direction::Out, &[2, 4]),
    (PORT_TIMER_STOP, Direction::Out, &[1]),
];

/// Decodes a port access on a VM with port map `ports`: a mapped port makes
/// its hypercall in any of the widths [`MAPPED_WIDTHS`] lists; any other port
/// is decoded as the guest ABI says.
pub fn decode_mapped(
    port: u16,
    direction: Direction,
    access: PortAccess,
    ports: &PortMap,
) -> Result<Hypercall, Misuse> {
    let Some(abi_port) = ports.abi_port(port) else { return decode::decode(port, direction, access) };
    let widths = MAPPED_WIDTHS.iter().find(|entry| entry.0 == abi_port && entry.1 == direction);
    match (widths, decode::at(abi_port, direction)) {
        (Some(&(_, _, sizes)), Some((call, _))) if access.count == 1 && sizes.contains(&access.size) => Ok(call),
        _ => {
            let expected = widths
                .or_else(|| MAPPED_WIDTHS.iter().find(|entry| entry.0 == abi_port))
                .and_then(|entry| Some((decode::at(entry.0, entry.1)?.1, entry.1, entry.2)));
            Err(Misuse { port, direction, access, expected })
        }
    }
}

/// Parses a port number: `0x10`, `16`.
pub fn parse_port(text: &str) -> Result<u16, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| {
        format!("port '{}' is not a number from 0 to 0xffff (e.g. 0x10)", crate::console::escape_input(text))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{In, Out};

    fn one(size: u8) -> PortAccess {
        PortAccess { size, count: 1 }
    }

    #[test]
    fn mapped_ports_make_their_hypercall_in_16_bit_widths_too() {
        let mut ports = PortMap::default();
        ports.map(0x10, "print32bit").unwrap();
        ports.map(0xE7, "HC_numExits").unwrap();
        assert_eq!(decode_mapped(0x10, Out, one(2), &ports), Ok(Hypercall::Print32));
        assert_eq!(decode_mapped(0x10, Out, one(4), &ports), Ok(Hypercall::Print32));
        assert_eq!(decode_mapped(0xE7, In, one(2), &ports), Ok(Hypercall::NumExits));
        // The ABI's own ports keep their exact widths.
        assert!(decode_mapped(0xEA, Out, one(2), &ports).is_err());
        let misuse = decode_mapped(0xE7, In, one(1), &ports).unwrap_err();
        assert_eq!(misuse.to_string(), "HC_numExits (port 0xe7) takes a 2- or 4-byte in, got a 1-byte in");
        let wrong_way = decode_mapped(0x10, In, one(2), &ports).unwrap_err();
        assert_eq!(wrong_way.to_string(), "HC_print32bit (port 0x10) takes a 1-, 2- or 4-byte out, got a 2-byte in");
        assert!(decode_mapped(0x11, Out, one(2), &ports).unwrap_err().expected.is_none());
    }

    #[test]
    fn ports_map_to_hypercalls_by_name_and_unknown_names_list_the_known() {
        let mut ports = PortMap::default();
        ports.map(0x10, "print32bit").unwrap();
        ports.map(0xE8, "HC_print32bit").unwrap();
        let twice = ports.map(0x10, "numexits").unwrap_err();
        assert_eq!(twice, "port 0x10 is mapped twice (print32bit, then numexits); map each port once");
        // The command line's over a scenario's: replaced.
        ports.remap(0x10, "numexits").unwrap();
        assert_eq!(ports.abi_port(0x10), Some(PORT_NUM_EXITS));
        assert_eq!(ports.abi_port(0xE8), Some(PORT_PRINT32));
        assert_eq!(ports.abi_port(0x11), None);
        assert_eq!(ports.entries().collect::<Vec<_>>(), [(0xE8, "print32bit"), (0x10, "numExits")]);
        let error = ports.map(0x20, "print64bit").unwrap_err();
        assert_eq!(
            error,
            "unknown hypercall 'print64bit': give one of print8bit, print32bit, numExits, printStr, \
             numExitsByType, gvaToHva, yield, timerStart, timerStop, vcpuId, vcpuCount, ipi, yieldTo, lockWatch"
        );
    }

    #[test]
    fn port_numbers_are_hex_or_decimal_and_at_most_0xffff() {
        assert_eq!(parse_port("0x10"), Ok(0x10));
        assert_eq!(parse_port("233"), Ok(0xE9));
        assert!(parse_port("0x10000").unwrap_err().contains("0 to 0xffff"));
        assert!(parse_port("ten").is_err());
    }
}
