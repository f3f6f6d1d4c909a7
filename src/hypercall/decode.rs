//! The port table of the guest ABI: which port access is which hypercall.
//! A VM's mapped ports are decoded by `ports`, on top of this table.

use crate::vm::PortAccess;

/// HC_print8bit.
pub const PORT_PRINT8: u16 = 0xE9;
/// HC_print32bit.
pub const PORT_PRINT32: u16 = 0xEA;
/// HC_numExits.
pub const PORT_NUM_EXITS: u16 = 0xEB;
/// HC_printStr.
pub const PORT_PRINT_STR: u16 = 0xEC;
/// HC_numExitsByType.
pub const PORT_NUM_EXITS_BY_TYPE: u16 = 0xED;
/// HC_gvaToHva (an `out` of the GVA, then an `in` of the result).
pub const PORT_GVA_TO_HVA: u16 = 0xEE;
/// HC_yield.
pub const PORT_YIELD: u16 = 0xEF;
/// HC_timerStart(period_us): the VM's virtual timer ticks every period.
pub const PORT_TIMER_START: u16 = 0xF0;
/// HC_timerStop(): the virtual timer stops.
pub const PORT_TIMER_STOP: u16 = 0xF1;
/// HC_vcpuId() -> u32: the calling vCPU's index.
pub const PORT_VCPU_ID: u16 = 0xF2;
/// HC_vcpuCount() -> u32: how many vCPUs the VM has.
pub const PORT_VCPU_COUNT: u16 = 0xF3;
/// HC_ipi(vcpu | vector << 16): an interrupt on another vCPU of the VM.
pub const PORT_IPI: u16 = 0xF4;
/// HC_yieldTo(vcpu): the rest of the slice to that vCPU of the VM.
pub const PORT_YIELD_TO: u16 = 0xF5;
/// HC_lockWatch(address): the guest's lock records, read without an exit.
pub const PORT_LOCK_WATCH: u16 = 0xF6;

/// Whether the guest wrote (`out`) or read (`in`) the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `in`.
    In,
    /// `out`.
    Out,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// A correctly made hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// Print a byte.
    Print8,
    /// Print a u32 in decimal and a newline.
    Print32,
    /// Return the exit count.
    NumExits,
    /// Print a NUL-terminated string at a GVA.
    PrintStr,
    /// Return the GVA of the exit counts text.
    NumExitsByType,
    /// The `out` half of HC_gvaToHva: translate a GVA.
    GvaToHvaRequest,
    /// The `in` half of HC_gvaToHva: fetch the result.
    GvaToHvaResult,
    /// Give up the rest of the slice.
    Yield,
    /// Start the virtual timer with a period in µs.
    TimerStart,
    /// Stop the virtual timer.
    TimerStop,
    /// Return the calling vCPU's index.
    VcpuId,
    /// Return the VM's vCPU count.
    VcpuCount,
    /// Raise an interrupt on a vCPU of the VM.
    Ipi,
    /// Give the rest of the slice to a vCPU of the VM.
    YieldTo,
    /// Name the table of the guest's lock records.
    LockWatch,
}

impl Hypercall {
    /// Every hypercall, in port order.
    pub const ALL: [Self; 15] = [
        Self::Print8,
        Self::Print32,
        Self::NumExits,
        Self::PrintStr,
        Self::NumExitsByType,
        Self::GvaToHvaRequest,
        Self::GvaToHvaResult,
        Self::Yield,
        Self::TimerStart,
        Self::TimerStop,
        Self::VcpuId,
        Self::VcpuCount,
        Self::Ipi,
        Self::YieldTo,
        Self::LockWatch,
    ];

    /// Its name in the guest ABI (`HC_print8bit`, ...).
    pub fn name(self) -> &'static str {
        TABLE.iter().find(|entry| entry.3 == self).map_or("HC_?", |entry| entry.4)
    }
}

/// A port access that is not a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misuse {
    /// The port.
    pub port: u16,
    /// `in` or `out`.
    pub direction: Direction,
    /// What the guest did.
    pub access: PortAccess,
    /// The hypercall this port belongs to, and the access widths it takes, if any.
    pub expected: Option<(&'static str, Direction, &'static [u8])>,
}

impl std::fmt::Display for Misuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let did = if self.access.count == 1 {
            format!("a {}-byte {}", self.access.size, self.direction.name())
        } else {
            format!("a string {} of {} x {} bytes", self.direction.name(), self.access.count, self.access.size)
        };
        match self.expected {
            Some((name, direction, sizes)) => {
                let sizes = match sizes {
                    [one] => format!("{one}"),
                    [rest @ .., last] => {
                        let rest: Vec<String> = rest.iter().map(|size| format!("{size}-")).collect();
                        format!("{} or {last}", rest.join(", "))
                    }
                    [] => "no".into(),
                };
                write!(f, "{name} (port 0x{:x}) takes a {sizes}-byte {}, got {did}", self.port, direction.name())
            }
            None => write!(f, "unknown port 0x{:x}: {did}", self.port),
        }
    }
}

/// Every hypercall with its port, direction and access size.
const TABLE: &[(u16, Direction, u8, Hypercall, &str)] = &[
    (PORT_PRINT8, Direction::Out, 1, Hypercall::Print8, "HC_print8bit"),
    (PORT_PRINT32, Direction::Out, 4, Hypercall::Print32, "HC_print32bit"),
    (PORT_NUM_EXITS, Direction::In, 4, Hypercall::NumExits, "HC_numExits"),
    (PORT_PRINT_STR, Direction::Out, 4, Hypercall::PrintStr, "HC_printStr"),
    (PORT_NUM_EXITS_BY_TYPE, Direction::In, 4, Hypercall::NumExitsByType, "HC_numExitsByType"),
    (PORT_GVA_TO_HVA, Direction::Out, 4, Hypercall::GvaToHvaRequest, "HC_gvaToHva"),
    (PORT_GVA_TO_HVA, Direction::In, 4, Hypercall::GvaToHvaResult, "HC_gvaToHva"),
    (PORT_YIELD, Direction::Out, 1, Hypercall::Yield, "HC_yield"),
    (PORT_TIMER_START, Direction::Out, 4, Hypercall::TimerStart, "HC_timerStart"),
    (PORT_TIMER_STOP, Direction::Out, 1, Hypercall::TimerStop, "HC_timerStop"),
    (PORT_VCPU_ID, Direction::In, 4, Hypercall::VcpuId, "HC_vcpuId"),
    (PORT_VCPU_COUNT, Direction::In, 4, Hypercall::VcpuCount, "HC_vcpuCount"),
    (PORT_IPI, Direction::Out, 4, Hypercall::Ipi, "HC_ipi"),
    (PORT_YIELD_TO, Direction::Out, 4, Hypercall::YieldTo, "HC_yieldTo"),
    (PORT_LOCK_WATCH, Direction::Out, 4, Hypercall::LockWatch, "HC_lockWatch"),
];

/// The hypercall the ABI puts on `port` in `direction`, with its name.
pub fn at(port: u16, direction: Direction) -> Option<(Hypercall, &'static str)> {
    TABLE.iter().find(|entry| entry.0 == port && entry.1 == direction).map(|entry| (entry.3, entry.4))
}

/// Decodes a port access: the hypercall it makes, or why it makes none.
pub fn decode(port: u16, direction: Direction, access: PortAccess) -> Result<Hypercall, Misuse> {
    let on_port = || TABLE.iter().filter(move |entry| entry.0 == port);
    let exact = on_port().find(|entry| entry.1 == direction && entry.2 == access.size && access.count == 1);
    if let Some(entry) = exact {
        return Ok(entry.3);
    }
    // Prefer describing the expected access in the guest's own direction.
    let expected = on_port()
        .find(|entry| entry.1 == direction)
        .or_else(|| on_port().next())
        .map(|entry| (entry.4, entry.1, std::slice::from_ref(&entry.2)));
    Err(Misuse { port, direction, access, expected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{In, Out};

    fn one(size: u8) -> PortAccess {
        PortAccess { size, count: 1 }
    }

    #[test]
    fn every_hypercall_decodes_from_its_port_direction_and_size() {
        let cases = [
            (0xE9, Out, 1, Hypercall::Print8),
            (0xEA, Out, 4, Hypercall::Print32),
            (0xEB, In, 4, Hypercall::NumExits),
            (0xEC, Out, 4, Hypercall::PrintStr),
            (0xED, In, 4, Hypercall::NumExitsByType),
            (0xEE, Out, 4, Hypercall::GvaToHvaRequest),
            (0xEE, In, 4, Hypercall::GvaToHvaResult),
            (0xEF, Out, 1, Hypercall::Yield),
            (0xF0, Out, 4, Hypercall::TimerStart),
            (0xF1, Out, 1, Hypercall::TimerStop),
            (0xF2, In, 4, Hypercall::VcpuId),
            (0xF3, In, 4, Hypercall::VcpuCount),
            (0xF4, Out, 4, Hypercall::Ipi),
            (0xF5, Out, 4, Hypercall::YieldTo),
            (0xF6, Out, 4, Hypercall::LockWatch),
        ];
        for (port, direction, size, call) in cases {
            assert_eq!(decode(port, direction, one(size)), Ok(call), "port 0x{port:x}");
        }
        assert_eq!(Hypercall::NumExitsByType.name(), "HC_numExitsByType");
        assert_eq!(Hypercall::GvaToHvaResult.name(), "HC_gvaToHva");
    }

    #[test]
    fn misuse_is_refused_and_explained() {
        let wrong_size = decode(0xE9, Out, one(2)).unwrap_err();
        assert_eq!(wrong_size.to_string(), "HC_print8bit (port 0xe9) takes a 1-byte out, got a 2-byte out");
        let wrong_direction = decode(0xEB, Out, one(4)).unwrap_err();
        assert_eq!(wrong_direction.to_string(), "HC_numExits (port 0xeb) takes a 4-byte in, got a 4-byte out");
        let unknown = decode(0x80, Out, one(1)).unwrap_err();
        assert_eq!(unknown.to_string(), "unknown port 0x80: a 1-byte out");
        let string_io = decode(0xE9, Out, PortAccess { size: 1, count: 3 }).unwrap_err();
        assert_eq!(
            string_io.to_string(),
            "HC_print8bit (port 0xe9) takes a 1-byte out, got a string out of 3 x 1 bytes"
        );
        assert!(decode(0xE8, In, one(4)).is_err());
        assert!(decode(0xF2, Out, one(1)).is_err());
    }
}
