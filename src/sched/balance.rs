//! Balancing VMs over cores (`--cpus N`): pure decisions from each VM's
//! core, target and lag, made a few times a second.
//!
//! Three rules, in order, each move costing something (the VM's state goes
//! cold in the new CPU's caches, and a hand-over between threads):
//! 1. A VM on a core it may not use (pinned elsewhere) goes to the least
//!    loaded core it may use.
//! 2. Load: when one VM's move from the busiest core to the least busy one
//!    lowers the busier of the two by more than [`LOAD_SLACK`], it moves (a
//!    core's load is the targets of its VMs, in cores).
//! 3. Lag: when the loads are as even as whole VMs allow but the VMs do not
//!    get their targets (three equal VMs on two cores, or a host CPU that
//!    another process shares), the VM furthest behind its target swaps cores
//!    with the one furthest ahead elsewhere, if the swap keeps the loads as
//!    even, once the gap between them passes [`LAG_LIMIT_NS`]: the share
//!    comes from rotating, and the limit bounds the moves.

/// A load difference smaller than this (in cores) is not worth a move.
pub const LOAD_SLACK: f64 = 0.05;
/// How far apart (ns of CPU) the furthest-behind VM and the furthest-ahead
/// one may drift before they swap cores.
pub const LAG_LIMIT_NS: i64 = 10_000_000;

/// One VM as the balancer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmLoad {
    /// The core it runs on.
    pub core: usize,
    /// What its weight gives it, in cores (0 when it cannot run).
    pub target: f64,
    /// How far behind that it is (ns of CPU; negative: ahead).
    pub lag_ns: i64,
    /// The cores it may run on (empty: any).
    pub allowed: Vec<usize>,
}

impl VmLoad {
    fn may_use(&self, core: usize) -> bool {
        self.allowed.is_empty() || self.allowed.contains(&core)
    }
}

/// The moves to make now, as (VM, core to go to): at most one rule's worth.
pub fn plan(vms: &[VmLoad], cores: usize) -> Vec<(usize, usize)> {
    if cores < 2 {
        return Vec::new();
    }
    let mut load = vec![0.0; cores];
    for vm in vms.iter().filter(|vm| vm.core < cores) {
        load[vm.core] += vm.target;
    }
    let least_loaded = |vm: &VmLoad, load: &[f64]| {
        (0..cores).filter(|&core| vm.may_use(core)).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
    };
    // 1. Pinned elsewhere.
    let mut moves = Vec::new();
    for (index, vm) in vms.iter().enumerate() {
        if vm.core >= cores || !vm.may_use(vm.core) {
            if let Some(to) = least_loaded(vm, &load) {
                if vm.core < cores {
                    load[vm.core] -= vm.target;
                }
                load[to] += vm.target;
                moves.push((index, to));
            }
        }
    }
    if !moves.is_empty() {
        return moves;
    }
    // 2. Load.
    let busiest = (0..cores).max_by(|&a, &b| load[a].total_cmp(&load[b]).then(b.cmp(&a))).unwrap_or(0);
    let best = vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| vm.core == busiest && vm.target > 0.0)
        .filter_map(|(index, vm)| {
            let to = (0..cores)
                .filter(|&core| core != busiest && vm.may_use(core))
                .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))?;
            let higher = (load[busiest] - vm.target).max(load[to] + vm.target);
            (higher < load[busiest] - LOAD_SLACK).then_some((index, to, higher))
        })
        .min_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    if let Some((index, to, _)) = best {
        return vec![(index, to)];
    }
    // 3. Lag: the furthest behind swaps with the furthest ahead elsewhere.
    let behind = vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| vm.target > 0.0)
        .max_by(|a, b| a.1.lag_ns.cmp(&b.1.lag_ns).then(b.0.cmp(&a.0)));
    let Some((slow, slow_vm)) = behind else { return Vec::new() };
    let ahead = vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| vm.target > 0.0 && vm.core != slow_vm.core)
        .filter(|(_, vm)| vm.may_use(slow_vm.core) && slow_vm.may_use(vm.core))
        // A swap must not unbalance the loads.
        .filter(|(_, vm)| {
            let shift = slow_vm.target - vm.target;
            let (a, b) = (load[slow_vm.core] - shift, load[vm.core] + shift);
            a.max(b) <= load[slow_vm.core].max(load[vm.core]) + LOAD_SLACK
        })
        .min_by(|a, b| a.1.lag_ns.cmp(&b.1.lag_ns).then(a.0.cmp(&b.0)));
    match ahead {
        Some((fast, fast_vm)) if slow_vm.lag_ns - fast_vm.lag_ns > LAG_LIMIT_NS => {
            vec![(slow, fast_vm.core), (fast, slow_vm.core)]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(core: usize, target: f64, lag_ms: i64) -> VmLoad {
        VmLoad { core, target, lag_ns: lag_ms * 1_000_000, allowed: Vec::new() }
    }

    #[test]
    fn one_core_never_moves_anything() {
        assert!(plan(&[vm(0, 1.0, 500)], 1).is_empty());
    }

    #[test]
    fn a_placement_that_gives_every_target_stays() {
        // 2:1:1 on two cores: the heavy VM alone, the light ones together.
        assert!(plan(&[vm(0, 1.0, 0), vm(1, 0.5, 0), vm(1, 0.5, 0)], 2).is_empty());
        // Small lags do not move anyone either.
        assert!(plan(&[vm(0, 1.0, -3), vm(1, 0.5, 3), vm(1, 0.5, 2)], 2).is_empty());
    }

    #[test]
    fn an_uneven_load_moves_one_vm_to_the_idle_core() {
        // Two spinners on core 0, core 1 idle.
        assert_eq!(plan(&[vm(0, 1.0, 0), vm(0, 1.0, 0)], 2), [(0, 1)]);
        // A VM that woke on the busy core while the other core has less.
        assert_eq!(plan(&[vm(0, 0.5, 0), vm(0, 0.5, 0), vm(0, 0.5, 0), vm(1, 0.5, 0)], 2), [(0, 1)]);
    }

    #[test]
    fn a_move_that_would_only_shift_the_imbalance_is_not_made() {
        // Three equal VMs: 2/3 each; a core alone and two together either way.
        let third = 2.0 / 3.0;
        assert!(plan(&[vm(0, third, -5), vm(1, third, 2), vm(1, third, 3)], 2).is_empty());
    }

    #[test]
    fn vms_alone_on_their_cores_swap_when_one_falls_behind_but_not_into_an_imbalance() {
        // A host CPU shared with another process: the VM on it falls behind.
        assert_eq!(plan(&[vm(0, 1.0, -8), vm(1, 1.0, 8)], 2), [(1, 0), (0, 1)]);
        // 2:1:1: swapping the heavy VM with a light one would crowd a core.
        assert!(plan(&[vm(0, 1.0, 30), vm(1, 0.5, -15), vm(1, 0.5, -15)], 2).is_empty());
    }

    #[test]
    fn the_furthest_behind_swaps_with_the_furthest_ahead_past_the_limit() {
        let third = 2.0 / 3.0;
        let moves = plan(&[vm(0, third, -20), vm(1, third, 8), vm(1, third, 12)], 2);
        assert_eq!(moves, [(2, 0), (0, 1)]);
    }

    #[test]
    fn a_pinned_vm_goes_where_it_may_and_swaps_respect_pins() {
        let mut pinned = vm(0, 1.0, 0);
        pinned.allowed = vec![1];
        assert_eq!(plan(&[pinned.clone(), vm(1, 1.0, 0)], 2), [(0, 1)]);
        // Two pinned to core 1 share it: no load move takes one away.
        let mut other = vm(1, 1.0, 0);
        other.allowed = vec![1];
        let mut here = pinned.clone();
        here.core = 1;
        assert!(plan(&[here, other], 2).is_empty());
        // A swap with a VM pinned where it is does not happen.
        let third = 2.0 / 3.0;
        let mut fast = vm(0, third, -30);
        fast.allowed = vec![0];
        assert!(plan(&[fast, vm(1, third, 15), vm(1, third, 15)], 2).is_empty());
    }
}
