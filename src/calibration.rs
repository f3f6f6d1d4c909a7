//! How fast this machine's KVM runs the guests' busy loop, measured once per
//! process before the VMs start, so that the demo guests' work units are
//! sized in time, not iterations: KVM that emulates guest code (kvm_pvm)
//! runs the loop about 1000x slower than hardware virtualization, and a unit
//! tuned to one would flood the console on the other.
//!
//! The measurement runs the built-in `ticker` in a VM of its own on the
//! calling thread: the time inside KVM_RUN from one unit's exit to the next
//! is one unit of work (plus one exit, which a unit of at least
//! [`MIN_UNIT_NS`] dwarfs). The unit grows 16-fold until it is that long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;

use crate::config::{Calibration, VmConfig};
use crate::guests;
use crate::sched::{Step, VmRuntime};
use crate::stats::nearest_rank;
use crate::vm::{KickTarget, MachineSpec, SetupError};

/// The longest a calibration may take.
pub const BUDGET: Duration = Duration::from_millis(50);
/// A unit shorter than this is mostly exit cost: measure with a bigger one.
pub const MIN_UNIT_NS: u64 = 200_000;
/// Units timed once the unit is long enough (their median is taken).
const UNITS_TIMED: usize = 5;

/// A built-in guest's argument that is a work unit in loop iterations,
/// sized here to a time of guest CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedUnit {
    /// The guest.
    pub guest: &'static str,
    /// Which of its arguments.
    pub arg: usize,
    /// The guest CPU time one unit is sized to.
    pub time: Duration,
    /// Whether a missing argument is sized too (else only an explicit 0,
    /// where the guest has an iteration count of its own by default).
    pub when_missing: bool,
}

/// The built-in guests' work units sized in time: ticker, neo and morpheus
/// print one unit each; dirtier writes its pages once a unit, so its rate
/// in pages per second of guest CPU holds on any host.
pub const TIMED_UNITS: &[TimedUnit] = &[
    TimedUnit { guest: "ticker", arg: 0, time: Duration::from_millis(1), when_missing: true },
    TimedUnit { guest: "neo", arg: 0, time: Duration::from_millis(1), when_missing: true },
    TimedUnit { guest: "morpheus", arg: 0, time: Duration::from_millis(1), when_missing: true },
    TimedUnit { guest: "dirtier", arg: 3, time: Duration::from_millis(1), when_missing: false },
    TimedUnit { guest: "pair", arg: 0, time: Duration::from_millis(50), when_missing: true },
    TimedUnit { guest: "locks", arg: 0, time: Duration::from_micros(20), when_missing: true },
    TimedUnit { guest: "locks", arg: 1, time: Duration::from_micros(60), when_missing: true },
];

/// Gives every VM of a built-in timed guest without an explicit unit
/// (its unit's argument 0, or missing where that sizes it) the unit its
/// time asks for here; true if any VM got one. Explicit units are left as
/// they are.
pub fn size_units(calibration: &Calibration, vms: &mut [VmConfig]) -> bool {
    let mut sized = false;
    for vm in vms.iter_mut() {
        // A guest's timed arguments in order: a missing one is pushed, so
        // the next missing one is next in line.
        for timed in TIMED_UNITS.iter().filter(|timed| timed.guest == vm.guest) {
            if !unit_wanted(vm, timed) {
                continue;
            }
            let unit = calibration.iterations_for(timed.time);
            match vm.args.get_mut(timed.arg) {
                Some(arg) => *arg = unit,
                None => vm.args.push(unit),
            }
            sized = true;
        }
    }
    sized
}

/// Whether `vm`'s argument `timed` is to be sized: it is 0, or it is
/// missing and the next (only missing arguments in order are sized).
fn unit_wanted(vm: &VmConfig, timed: &TimedUnit) -> bool {
    match vm.args.get(timed.arg) {
        Some(&unit) => unit == 0,
        None => timed.when_missing && vm.args.len() == timed.arg,
    }
}

/// Whether any VM would take a calibrated unit (so calibrating is worth it).
pub fn wanted(vms: &[VmConfig]) -> bool {
    vms.iter().any(|vm| TIMED_UNITS.iter().any(|timed| timed.guest == vm.guest && unit_wanted(vm, timed)))
}

/// Measures this machine (at most [`BUDGET`], plus one VM's setup).
pub fn measure(kvm: &Kvm) -> Result<Calibration, SetupError> {
    let started = Instant::now();
    let image: Arc<[u8]> = Arc::from(guests::builtin("ticker").expect("ticker is built in").image);
    let kick = KickTarget::new();
    let _attached = kick.attach();
    let mut unit: u64 = 1000;
    loop {
        let spec = MachineSpec {
            image: Arc::clone(&image),
            memory_size: 2 << 20,
            args: vec![unit],
            layout: Default::default(),
            restore: None,
            vcpus: 1,
        };
        let mut vm = VmRuntime::new(kvm, &spec, Default::default())?;
        let mut times = Vec::with_capacity(UNITS_TIMED + 1);
        // Time from the end of one unit's exit to the next exit, in KVM_RUN.
        while times.len() <= UNITS_TIMED && started.elapsed() < BUDGET {
            let (step, span, _) = vm.step(&kick, 0, false, u64::MAX);
            match step {
                Step::Io => times.push(span.exited_ns - span.entered_ns),
                Step::Interrupted => continue,
                // The ticker never ends; if it did, what was timed must do.
                _ => break,
            }
            vm.console.discard_pending();
            // The first unit also pays for the first entry: not timed.
            if times.len() == 2 && times[0] > times[1] * 2 {
                times.remove(0);
            }
            if times.len() == 1 && times[0] < MIN_UNIT_NS / 4 && started.elapsed() < BUDGET {
                break;
            }
        }
        times.sort_unstable();
        let median = nearest_rank(&times, 0.5).unwrap_or(0);
        let out_of_time = started.elapsed() >= BUDGET;
        if median >= MIN_UNIT_NS || out_of_time || unit >= 1 << 40 {
            let per_ms = if median > 0 { unit as f64 * 1e6 / median as f64 } else { unit as f64 };
            return Ok(Calibration {
                loop_iterations_per_ms: per_ms.round().max(1.0) as u64,
                measured_ms: started.elapsed().as_secs_f64() * 1000.0,
            });
        }
        unit *= 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(guest: &str, args: &[u64]) -> VmConfig {
        let mut vm = VmConfig::new(guest, guest, Arc::from(&b""[..]));
        vm.args = args.to_vec();
        vm
    }

    #[test]
    fn units_are_sized_in_time_unless_given() {
        let calibration = Calibration { loop_iterations_per_ms: 850, measured_ms: 3.0 };
        assert_eq!(calibration.iterations_for(Duration::from_millis(1)), 850);
        assert_eq!(calibration.iterations_for(Duration::from_micros(1)), 1);
        let mut vms = vec![
            vm("ticker", &[]),
            vm("neo", &[0, 50]),
            vm("morpheus", &[123]),
            vm("spin", &[]),
            vm("dirtier", &[1, 1000, 1000, 0]),
            vm("dirtier", &[8]),
        ];
        assert!(wanted(&vms));
        assert!(size_units(&calibration, &mut vms));
        let args: Vec<&[u64]> = vms.iter().map(|vm| vm.args.as_slice()).collect();
        assert_eq!(args, [&[850][..], &[850, 50], &[123], &[], &[1, 1000, 1000, 850], &[8]]);
        assert!(!wanted(&[vm("dirtier", &[])]), "dirtier's default busy work stays unless 0 asks for a size");
        assert!(!wanted(&[vm("ticker", &[5]), vm("part1", &[])]));
        assert!(!size_units(&calibration, &mut [vm("ticker", &[5])]), "an explicit unit is not sized");
    }
}
