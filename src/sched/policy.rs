//! Scheduling policies as pure decisions: which VM runs next and for how long,
//! given weights and the time each slice was actually charged. No clock and no
//! KVM here, so the policies are tested with a simulated clock.
//!
//! - `io`: round robin, each slice lasting until the VM's next I/O exit.
//! - `rr`: round robin, one quantum each.
//! - `fair`: the quantum is a *period* split by weight (Neo 70 / Morpheus 30 at
//!   1 ms: 0.7 ms and 0.3 ms of every ms), as the seed's QUANTUM x FRAC did,
//!   kept exact by deficit round robin on measured time. Each visit adds a VM's
//!   entitlement (quantum x its share) to its credit, and the VM then runs as
//!   many slices as its credit covers; it is charged what it really used, so
//!   early exits, yields and commands are paid back in the next periods.
//!
//!   All fair slices have the same length, the *unit* (the smallest
//!   entitlement, at least [`MIN_SLICE_NS`], and at most four slices a period
//!   for the heaviest VM). So every VM is kicked once per equal amount of
//!   charged time, and the time each kick wastes (the entry into the guest,
//!   a few microseconds) costs every VM the same fraction of its share; with
//!   slices in proportion to weight it would move work to the heavy VMs.
//!   Splitting every period (rather than giving whole quanta in stride order)
//!   keeps the error in short windows small.

use crate::config::Policy;

/// No slice is shorter than this: below it a kick costs more than the slice.
pub const MIN_SLICE_NS: u64 = 50_000;

/// What the planner needs to know of a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Scheduling weight (> 0).
    pub weight: f64,
    /// Whether it can run now (not paused, halted or crashed).
    pub runnable: bool,
}

/// The next slice: a VM, and how long it may run (None: until its next I/O exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// The VM to run.
    pub vm: usize,
    /// Its length in ns, or None for "until I/O" (`io`).
    pub length_ns: Option<u64>,
}

/// Picks slices for one policy and keeps its accounting.
#[derive(Debug, Clone)]
pub struct Planner {
    policy: Policy,
    quantum_ns: u64,
    /// Per VM (`fair`): time earned and not yet used, in ns, at most two quanta
    /// (a VM that slept cannot come back with more than that).
    credit_ns: Vec<i64>,
    /// The VM whose visit is under way (`fair`): it runs while its credit lasts.
    visiting: Option<usize>,
    next: usize,
}

impl Planner {
    /// A planner for `vms` VMs.
    pub fn new(policy: Policy, quantum_ns: u64, vms: usize) -> Self {
        Self { policy, quantum_ns, credit_ns: vec![0; vms], visiting: None, next: 0 }
    }

    /// The policy it plans for.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The quantum (the period, under `fair`).
    pub fn quantum_ns(&self) -> u64 {
        self.quantum_ns
    }

    /// Changes the quantum from the next slice on.
    pub fn set_quantum(&mut self, quantum_ns: u64) {
        self.quantum_ns = quantum_ns;
    }

    /// Forgets `vm`'s credit (it was paused, restarted, or its weight changed).
    pub fn reset(&mut self, vm: usize) {
        self.credit_ns[vm] = 0;
    }

    /// The next slice, or None when no VM is runnable.
    pub fn next_slice(&mut self, vms: &[Candidate]) -> Option<Slice> {
        let (count, start) = (vms.len(), self.next);
        let order = (0..count).map(move |offset| (start + offset) % count);
        let slice = match self.policy {
            Policy::Io => order.clone().find(|&vm| vms[vm].runnable).map(|vm| Slice { vm, length_ns: None }),
            Policy::Rr => {
                order.clone().find(|&vm| vms[vm].runnable).map(|vm| Slice { vm, length_ns: Some(self.quantum_ns) })
            }
            Policy::Fair => self.next_fair_slice(vms, order),
        }?;
        self.next = slice.vm + 1;
        Some(slice)
    }

    /// Deficit round robin from `self.next`: the VM being visited goes on while
    /// its credit covers a unit; otherwise every VM visited earns its
    /// entitlement and the first whose credit covers a unit runs.
    fn next_fair_slice(&mut self, vms: &[Candidate], order: impl Iterator<Item = usize> + Clone) -> Option<Slice> {
        let runnable: Vec<usize> = order.filter(|&vm| vms[vm].runnable).collect();
        let total: f64 = runnable.iter().map(|&vm| vms[vm].weight).sum();
        let entitled = |vm: usize| ((self.quantum_ns as f64 * vms[vm].weight / total) as i64).max(1);
        let (lightest, heaviest) =
            runnable.iter().fold((i64::MAX, 0), |(low, high), &vm| (low.min(entitled(vm)), high.max(entitled(vm))));
        let unit = lightest.max(MIN_SLICE_NS as i64).max(heaviest / 4).min(self.quantum_ns as i64);
        let slice = |vm| Some(Slice { vm, length_ns: Some(unit as u64) });

        if let Some(vm) = self.visiting.take() {
            if vms[vm].runnable && self.credit_ns[vm] >= unit {
                self.visiting = Some(vm);
                return slice(vm);
            }
        }
        let bound = 2 * self.quantum_ns as i64;
        for _pass in 0..2 {
            for &vm in &runnable {
                self.credit_ns[vm] = (self.credit_ns[vm] + entitled(vm)).min(bound);
                if self.credit_ns[vm] >= unit {
                    self.visiting = Some(vm);
                    return slice(vm);
                }
            }
            // Nobody's credit covers a unit yet (many light VMs): skip ahead the
            // whole passes it takes until the first one's does.
            let passes =
                runnable.iter().map(|&vm| (unit - self.credit_ns[vm] + entitled(vm) - 1) / entitled(vm)).min()?;
            for &vm in &runnable {
                self.credit_ns[vm] = (self.credit_ns[vm] + (passes - 1).max(0) * entitled(vm)).min(bound);
            }
        }
        unreachable!("after skipping ahead, the next pass finds a VM whose credit covers a unit")
    }

    /// Records that `vm`'s slice was charged `charged_ns`; `ended_early` when
    /// the VM gave the CPU back itself (a yield, a halt), which ends its visit.
    pub fn charge(&mut self, vm: usize, charged_ns: u64, ended_early: bool) {
        if self.policy == Policy::Fair {
            let bound = 2 * self.quantum_ns as i64;
            self.credit_ns[vm] = (self.credit_ns[vm] - charged_ns as i64).clamp(-bound, bound);
            if ended_early && self.visiting == Some(vm) {
                self.visiting = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn candidates(weights: &[f64]) -> Vec<Candidate> {
        weights.iter().map(|&weight| Candidate { weight, runnable: true }).collect()
    }

    /// Runs the planner for `total_ns` of simulated time. `use_of` says how much
    /// of a slice each VM uses (1.0: all of it; less: it yields early).
    fn simulate(
        planner: &mut Planner,
        vms: &[Candidate],
        total_ns: u64,
        mut use_of: impl FnMut(usize, u64) -> u64,
    ) -> Vec<u64> {
        let mut got = vec![0; vms.len()];
        let mut now = 0;
        while now < total_ns {
            let slice = planner.next_slice(vms).expect("a runnable VM");
            let used = use_of(slice.vm, slice.length_ns.unwrap());
            got[slice.vm] += used;
            now += used.max(1);
            planner.charge(slice.vm, used, used < slice.length_ns.unwrap());
        }
        got
    }

    fn shares(got: &[u64]) -> Vec<f64> {
        let total: u64 = got.iter().sum();
        got.iter().map(|&g| g as f64 / total as f64).collect()
    }

    #[test]
    fn fair_splits_each_period_by_weight_in_equal_units() {
        // 70/30 at 1 ms: units of 0.3 ms; Neo runs 7 of them every 3 periods
        // (0.6, 0.6, 0.9 ms), Morpheus one each period.
        let vms = candidates(&[70.0, 30.0]);
        let mut planner = Planner::new(Policy::Fair, MS, 2);
        let mut order = Vec::new();
        for _ in 0..10 {
            let slice = planner.next_slice(&vms).unwrap();
            assert_eq!(slice.length_ns, Some(300_000));
            order.push(slice.vm);
            planner.charge(slice.vm, 300_000, false);
        }
        assert_eq!(order, [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn fair_honours_any_number_of_weights_over_time() {
        let weights = [5.0, 1.0, 3.0, 1.0, 10.0, 20.0];
        let vms = candidates(&weights);
        let mut planner = Planner::new(Policy::Fair, MS, vms.len());
        let got = simulate(&mut planner, &vms, 1000 * MS, |_, length| length);
        let total: f64 = weights.iter().sum();
        for (share, weight) in shares(&got).iter().zip(weights) {
            assert!((share - weight / total).abs() < 0.002, "{share} vs {}", weight / total);
        }
    }

    #[test]
    fn fair_repays_early_exits() {
        // VM 0 uses only half of every other slice; over time it still gets 70%.
        let vms = candidates(&[70.0, 30.0]);
        let mut planner = Planner::new(Policy::Fair, MS, 2);
        let mut calls = 0;
        let got = simulate(&mut planner, &vms, 2000 * MS, |vm, length| {
            calls += 1;
            if vm == 0 && calls % 4 == 1 { length / 2 } else { length }
        });
        let share = shares(&got)[0];
        assert!((share - 0.7).abs() < 0.005, "{share}");
    }

    #[test]
    fn fair_credit_is_bounded_so_a_sleeper_cannot_hog_later() {
        let vms = candidates(&[1.0, 1.0]);
        let mut planner = Planner::new(Policy::Fair, MS, 2);
        for _ in 0..100 {
            let slice = planner.next_slice(&vms).unwrap();
            let used = if slice.vm == 0 { 0 } else { slice.length_ns.unwrap() };
            planner.charge(slice.vm, used, used == 0);
        }
        let slice = planner.next_slice(&vms).unwrap();
        assert_eq!(slice.vm, 0);
        assert!(slice.length_ns.unwrap() <= 2 * MS, "{slice:?}");
    }

    #[test]
    fn weight_changes_take_effect_at_the_next_slice() {
        let mut vms = candidates(&[70.0, 30.0]);
        let mut planner = Planner::new(Policy::Fair, MS, 2);
        simulate(&mut planner, &vms, 100 * MS, |_, length| length);
        vms[0].weight = 75.0;
        vms[1].weight = 25.0;
        let got = simulate(&mut planner, &vms, 100 * MS, |_, length| length);
        assert!((shares(&got)[0] - 0.75).abs() < 0.01, "{:?}", shares(&got));
    }

    #[test]
    fn fair_and_rr_never_starve_a_runnable_vm() {
        for policy in [Policy::Fair, Policy::Rr] {
            let vms = candidates(&[1000.0, 1.0, 1.0]);
            let mut planner = Planner::new(policy, MS, 3);
            // Weight 1 in 1002 earns 1 us per 1 ms period, so under `fair` its
            // 0.25 ms slice comes once every 250 periods: within 300 ms.
            let got = simulate(&mut planner, &vms, 300 * MS, |_, length| length);
            assert!(got.iter().all(|&ns| ns >= MIN_SLICE_NS), "{policy:?}: {got:?}");
        }
    }

    #[test]
    fn fair_with_many_vms_gives_each_its_share() {
        let vms = candidates(&[1.0; 256]);
        let mut planner = Planner::new(Policy::Fair, MS, vms.len());
        let got = simulate(&mut planner, &vms, 2000 * MS, |_, length| length);
        for share in shares(&got) {
            assert!((share * 256.0 - 1.0).abs() < 0.05, "{share}");
        }
    }

    #[test]
    fn rr_gives_equal_quanta_and_io_runs_until_io() {
        let vms = candidates(&[9.0, 1.0]);
        let mut rr = Planner::new(Policy::Rr, 2 * MS, 2);
        let got = simulate(&mut rr, &vms, 100 * MS, |_, length| length);
        assert_eq!(got[0], got[1]);
        let mut io = Planner::new(Policy::Io, MS, 2);
        assert_eq!(io.next_slice(&vms), Some(Slice { vm: 0, length_ns: None }));
        assert_eq!(io.next_slice(&vms), Some(Slice { vm: 1, length_ns: None }));
    }

    #[test]
    fn paused_vms_are_skipped_and_their_share_goes_to_the_others() {
        let mut vms = candidates(&[1.0, 1.0, 2.0]);
        vms[1].runnable = false;
        let mut planner = Planner::new(Policy::Fair, MS, 3);
        let got = simulate(&mut planner, &vms, 300 * MS, |_, length| length);
        assert_eq!(got[1], 0);
        assert!((shares(&got)[2] - 2.0 / 3.0).abs() < 0.01);
        vms.iter_mut().for_each(|vm| vm.runnable = false);
        assert_eq!(planner.next_slice(&vms), None);
    }
}
