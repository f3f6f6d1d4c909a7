//! The values of `run`'s options that need more than clap's parsing: a VM
//! (`NAME=GUEST[:WEIGHT]`), a quantum, guest arguments, a gdb address, a CPU
//! mode, an address, a port map.

use std::time::Duration;

use crate::config::{MAX_QUANTUM, MIN_QUANTUM, check_weight};
use crate::console::escape_input;
use crate::debug::ListenAddress;
use crate::hypercall::PortMap;
use crate::hypercall::ports::parse_port;
use crate::scenario;
use crate::units::{parse_address, parse_duration};
use crate::vm::CpuMode;

/// A `--vm NAME=GUEST[:WEIGHT]`.
#[derive(Debug, Clone)]
pub(super) struct VmArg {
    pub(super) name: String,
    pub(super) guest: String,
    pub(super) weight: Option<f64>,
}

pub(super) fn parse_vm_arg(text: &str) -> Result<VmArg, String> {
    let (name, rest) = match text.split_once('=') {
        Some((name, rest)) => (Some(name.to_string()), rest),
        None => (None, text),
    };
    // `snapshot:FILE[:WEIGHT]`: the first colon is the prefix's.
    let prefix = if rest.starts_with(scenario::SNAPSHOT_PREFIX) { scenario::SNAPSHOT_PREFIX.len() } else { 0 };
    let split = rest[prefix..].rsplit_once(':').map(|(guest, weight)| (&rest[..prefix + guest.len()], weight));
    let (guest, weight) = match split {
        Some((guest, weight)) => {
            let weight: f64 = weight
                .parse()
                .map_err(|_| format!("weight '{}' is not a number (NAME=GUEST[:WEIGHT])", escape_input(weight)))?;
            (guest.to_string(), Some(check_weight(weight)?))
        }
        None => (rest.to_string(), None),
    };
    if guest.is_empty() || guest == scenario::SNAPSHOT_PREFIX {
        return Err("GUEST is empty (NAME=GUEST[:WEIGHT])".into());
    }
    // A lone GUEST names its VM: `part1`, or `my-guest` for `./build/my-guest.elf`.
    let name = name.unwrap_or_else(|| {
        std::path::Path::new(&guest).file_stem().map_or(guest.clone(), |stem| stem.to_string_lossy().into_owned())
    });
    scenario::check_vm_name(&name)?;
    Ok(VmArg { name, guest, weight })
}

pub(super) fn parse_quantum(text: &str) -> Result<Duration, String> {
    let quantum = parse_duration(text)?;
    if (MIN_QUANTUM..=MAX_QUANTUM).contains(&quantum) {
        Ok(quantum)
    } else {
        Err(format!("the quantum must be between 100us and 1s, got {text}"))
    }
}

pub(super) fn parse_args_arg(text: &str) -> Result<(String, Vec<u64>), String> {
    let (name, values) = text.split_once('=').ok_or("expected NAME=V1,V2,...")?;
    let values = values
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            }
            .map_err(|_| format!("guest argument '{v}' is not a u64"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), values))
}

/// `NAME=N`: VM NAME's vCPU count, 1 to 64.
pub(super) fn parse_vcpus_arg(text: &str) -> Result<(String, u32), String> {
    let (name, count) = text.split_once('=').ok_or("expected NAME=N, such as pair=2")?;
    let count: i64 = count.trim().parse().map_err(|_| format!("'{}' is not a number of vCPUs", escape_input(count)))?;
    Ok((name.to_string(), crate::scenario::check_vcpus(count)?))
}

pub(super) fn parse_pin_arg(text: &str) -> Result<(String, Vec<usize>), String> {
    let (name, cores) = text.split_once('=').ok_or("expected NAME=CORE,..., such as neo=0")?;
    Ok((name.to_string(), crate::scenario::parse_pin(cores)?))
}

pub(super) fn parse_gdb_arg(text: &str) -> Result<(String, ListenAddress), String> {
    let (name, address) = text.split_once('=').ok_or("expected NAME=ADDR, such as neo=127.0.0.1:1234")?;
    Ok((name.to_string(), ListenAddress::parse(address)?))
}

pub(super) fn parse_mode_arg(text: &str) -> Result<(String, CpuMode), String> {
    let (name, mode) = text.split_once('=').ok_or("expected NAME=MODE, such as hw=real")?;
    Ok((name.to_string(), CpuMode::parse(mode)?))
}

pub(super) fn parse_address_arg(text: &str) -> Result<(String, u64), String> {
    let (name, address) = text.split_once('=').ok_or("expected NAME=ADDRESS, such as hw=0x0")?;
    Ok((name.to_string(), parse_address(address)?))
}

/// `NAME=PORT:CALL,...`: the ports of VM NAME that make hypercalls.
pub(super) fn parse_ports_arg(text: &str) -> Result<(String, PortMap), String> {
    let (name, entries) = text.split_once('=').ok_or("expected NAME=PORT:CALL,..., such as c=0x10:print32bit")?;
    let mut ports = PortMap::default();
    for entry in entries.split(',').filter(|entry| !entry.is_empty()) {
        let (port, call) = entry
            .split_once(':')
            .ok_or_else(|| format!("'{}' is not PORT:CALL, such as 0x10:print32bit", escape_input(entry)))?;
        ports.map(parse_port(port)?, call.trim())?;
    }
    Ok((name.to_string(), ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_arguments_parse() {
        let vm = parse_vm_arg("neo=ticker:70").unwrap();
        assert_eq!((vm.name.as_str(), vm.guest.as_str(), vm.weight), ("neo", "ticker", Some(70.0)));
        let vm = parse_vm_arg("part1").unwrap();
        assert_eq!((vm.name.as_str(), vm.guest.as_str(), vm.weight), ("part1", "part1", None));
        let vm = parse_vm_arg("c=./guest/examples/c/hello.elf").unwrap();
        assert_eq!(vm.guest, "./guest/examples/c/hello.elf");
        let vm = parse_vm_arg("./build/my-guest.bin").unwrap();
        assert_eq!((vm.name.as_str(), vm.weight), ("my-guest", None));
        assert!(parse_vm_arg("a=ticker:0").unwrap_err().contains("from 1 to 10000"));
        assert!(parse_vm_arg("a=ticker:20000").unwrap_err().contains("from 1 to 10000"));
        assert!(parse_vm_arg("a=ticker:x").unwrap_err().contains("not a number"));
        assert!(parse_vm_arg("bad name=spin").unwrap_err().contains("VM name"));
        assert!(parse_vm_arg("a=").is_err());
        let vm = parse_vm_arg("neo=snapshot:/tmp/x.snap:5").unwrap();
        assert_eq!((vm.guest.as_str(), vm.weight), ("snapshot:/tmp/x.snap", Some(5.0)));
        let vm = parse_vm_arg("snapshot:saved/neo-1.snap").unwrap();
        assert_eq!((vm.name.as_str(), vm.guest.as_str(), vm.weight), ("neo-1", "snapshot:saved/neo-1.snap", None));
        assert!(parse_vm_arg("a=snapshot:").is_err());
    }

    #[test]
    fn guest_arguments_parse() {
        assert_eq!(parse_args_arg("t=1000,0x10"), Ok(("t".into(), vec![1000, 16])));
        assert!(parse_args_arg("t=abc").is_err());
        assert!(parse_args_arg("t").is_err());
    }

    #[test]
    fn modes_addresses_and_port_maps_parse() {
        assert_eq!(parse_mode_arg("hw=real"), Ok(("hw".into(), CpuMode::Real)));
        assert!(parse_mode_arg("hw=v86").unwrap_err().contains("give real, protected, paged32 or long"));
        assert_eq!(parse_address_arg("hw=0x0"), Ok(("hw".into(), 0)));
        assert_eq!(parse_address_arg("hw=0x10000"), Ok(("hw".into(), 0x10000)));
        let (name, ports) = parse_ports_arg("c=0x10:print32bit,0xE7:numExits").unwrap();
        assert_eq!(name, "c");
        assert_eq!(ports.entries().collect::<Vec<_>>(), [(0x10, "print32bit"), (0xE7, "numExits")]);
        assert!(parse_ports_arg("c=0x10").unwrap_err().contains("PORT:CALL"));
        assert!(parse_ports_arg("c=0x10:print").unwrap_err().contains("unknown hypercall"));
    }

    #[test]
    fn quanta_outside_100us_to_1s_are_refused() {
        assert!(parse_quantum("50us").is_err());
        assert!(parse_quantum("2s").is_err());
        assert_eq!(parse_quantum("100us"), Ok(Duration::from_micros(100)));
    }
}
