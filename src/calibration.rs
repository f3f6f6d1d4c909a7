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

/// The built-in guests whose first argument is a work unit in loop
/// iterations, and the guest CPU time one unit is sized to.
pub const TIMED_UNITS: &[(&str, Duration)] =
    &[("ticker", Duration::from_millis(1)), ("neo", Duration::from_millis(1)), ("morpheus", Duration::from_millis(1))];

/// Gives every VM of a built-in timed guest without an explicit unit
/// (no argument 0, or 0) the unit its time asks for here; true if any
/// VM got one. Explicit units are left as they are.
pub fn size_units(calibration: &Calibration, vms: &mut [VmConfig]) -> bool {
    let mut sized = false;
    for vm in vms.iter_mut() {
        let Some(time) = unit_wanted(vm) else { continue };
        let unit = calibration.iterations_for(time);
        match vm.args.first_mut() {
            Some(first) => *first = unit,
            None => vm.args.push(unit),
        }
        sized = true;
    }
    sized
}

/// The time `vm`'s unit is to take, if it is a timed built-in guest without
/// an explicit unit (argument 0 missing or 0).
fn unit_wanted(vm: &VmConfig) -> Option<Duration> {
    let (_, time) = TIMED_UNITS.iter().find(|(name, _)| *name == vm.guest)?;
    vm.args.first().is_none_or(|&unit| unit == 0).then_some(*time)
}

/// Whether any VM would take a calibrated unit (so calibrating is worth it).
pub fn wanted(vms: &[VmConfig]) -> bool {
    vms.iter().any(|vm| unit_wanted(vm).is_some())
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
        };
        let mut vm = VmRuntime::new(kvm, &spec, Default::default())?;
        let mut times = Vec::with_capacity(UNITS_TIMED + 1);
        // Time from the end of one unit's exit to the next exit, in KVM_RUN.
        while times.len() <= UNITS_TIMED && started.elapsed() < BUDGET {
            let (step, span, _) = vm.step(&kick, 0, false);
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
        let mut vms = vec![vm("ticker", &[]), vm("neo", &[0, 50]), vm("morpheus", &[123]), vm("spin", &[])];
        assert!(wanted(&vms));
        assert!(size_units(&calibration, &mut vms));
        let args: Vec<&[u64]> = vms.iter().map(|vm| vm.args.as_slice()).collect();
        assert_eq!(args, [&[850][..], &[850, 50], &[123], &[]]);
        assert!(!wanted(&[vm("ticker", &[5]), vm("part1", &[])]));
        assert!(!size_units(&calibration, &mut [vm("ticker", &[5])]), "an explicit unit is not sized");
    }
}
