//! Scheduling policies as pure decisions: which VM runs next and for how long,
//! given weights and the time each slice was actually charged. No clock and no
//! KVM here, so the policies are tested with a simulated clock.
//!
//! - `io`: round robin, each slice lasting until the VM's next I/O exit.
//! - `rr`: round robin, one quantum each.
//! - `fair`: weighted fair sharing on measured time. Every VM has a *lag*:
//!   the time it was entitled to (its share of all time charged while it could
//!   run) minus the time it was charged. The next slice goes to a runnable VM
//!   that is not ahead (lag >= 0), the one whose next unit is due soonest in
//!   virtual time (EEVDF, see [`fair`]), so whoever is behind catches up, and
//!   early exits, yields and commands are paid back by themselves.
//!
//!   All fair slices have the same length, the *unit*. So every VM is kicked
//!   once per equal amount of charged time, and the time each kick wastes (the
//!   entry into the guest, a few microseconds) costs every VM the same
//!   fraction of its share; slices in proportion to weight would move work to
//!   the heavy VMs. The units interleave as evenly as the weights allow
//!   (70/30: N M N N M N N M N N), so no VM's lag strays more than about one
//!   unit from zero, and a window of time holds each VM's share to within a
//!   unit. The unit is the quantum split by weight (the lightest VM's
//!   entitlement per quantum) but at most [`MAX_UNIT_FRACTION`] of the
//!   quantum, at least [`MIN_SLICE_NS`], and large enough that the heaviest VM
//!   needs no more than four slices per quantum (many light VMs).
//!
//! A slice costs O(log N) under every policy: the planner is told when a VM's
//! weight or state changes, and keeps what it needs ordered.

mod fair;
mod heap;

use std::collections::BTreeSet;

use fair::FairQueue;

use crate::config::Policy;

/// No slice is shorter than this. A kick costs 20-25 us of KVM_RUN here, and
/// with 256 VMs identical guests did 3-7 % different work for the same charged
/// time at 50 us slices against 2-3 % at 100 us (`bench`'s `speed_spread_pct`).
pub const MIN_SLICE_NS: u64 = 100_000;

/// The longest fair unit, as a fraction of the quantum: a window of time can
/// hold up to about a unit too much or too little of a VM's share, and each
/// unit costs a kick, so this trades precision in short windows for overhead.
pub const MAX_UNIT_FRACTION: f64 = 0.2;

/// What the planner needs to know of a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Scheduling weight (> 0).
    pub weight: f64,
    /// Whether it can run now (not paused, halted or crashed).
    pub runnable: bool,
    /// This change is a sleep or the wake from one: the VM keeps its lag
    /// across it (a sleeper that ran ahead does not come back forgiven).
    pub keeps_lag: bool,
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
    /// The VMs that can run (`io`, `rr`).
    runnable: BTreeSet<usize>,
    /// The VMs that can run, in virtual time (`fair`).
    fair: FairQueue,
    /// The VM that just gave its slice back (`fair`): the next slice goes to
    /// another one if any can run, whatever the lags say.
    gave_back: Option<usize>,
    /// Where round robin goes on from (`io`, `rr`).
    next: usize,
    /// A sleeper that just woke with lag to spare, to run next (`fair`
    /// with wake-up preemption).
    woken: Option<usize>,
}

impl Planner {
    /// A planner for `vms`, as they are now (see [`set_candidate`](Self::set_candidate)).
    pub fn new(policy: Policy, quantum_ns: u64, vms: &[Candidate]) -> Self {
        let mut planner = Self {
            policy,
            quantum_ns,
            runnable: BTreeSet::new(),
            fair: FairQueue::new(vms.len(), quantum_ns),
            gave_back: None,
            next: 0,
            woken: None,
        };
        for (vm, &candidate) in vms.iter().enumerate() {
            planner.set_candidate(vm, candidate);
        }
        planner
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
        self.fair.set_bounds(quantum_ns, self.fair_unit_ns());
    }

    /// `vm`'s weight or state was set (it may be as it was). A VM that can
    /// run comes in afresh, at a lag of zero: it started, resumed, restarted,
    /// was let go by gdb, or has a new weight.
    pub fn set_candidate(&mut self, vm: usize, candidate: Candidate) {
        if candidate.runnable {
            self.runnable.insert(vm);
        } else {
            self.runnable.remove(&vm);
        }
        if self.policy.weighs() {
            self.fair.set(vm, candidate.runnable.then_some(candidate.weight), candidate.keeps_lag);
            self.fair.set_bounds(self.quantum_ns, self.fair_unit_ns());
        }
    }

    /// The next slice, or None when no VM is runnable.
    pub fn next_slice(&mut self) -> Option<Slice> {
        let slice = match self.policy {
            Policy::Io => self.next_in_turn().map(|vm| Slice { vm, length_ns: None }),
            Policy::Rr => self.next_in_turn().map(|vm| Slice { vm, length_ns: Some(self.quantum_ns) }),
            Policy::Fair | Policy::Gang => {
                // A sleeper that woke owed time goes first (wake-up preemption).
                let woken = self.woken.take().filter(|&vm| self.runnable.contains(&vm) && self.fair.lag_ns(vm) > 0.0);
                let vm = woken.or_else(|| self.fair.pick(self.gave_back.take()));
                vm.map(|vm| Slice { vm, length_ns: Some(self.fair.unit_ns()) })
            }
        }?;
        self.next = slice.vm + 1;
        Some(slice)
    }

    /// `vm` woke from a sleep: under `fair`, if it is owed time, it runs
    /// next, before the VM whose slice its wake cut short (wake-up
    /// preemption, `--wake-preempt`).
    pub fn woke(&mut self, vm: usize) {
        // Of several waking together, the one due first.
        self.woken.get_or_insert(vm);
    }

    /// The first runnable VM from `next` on, round the end.
    fn next_in_turn(&self) -> Option<usize> {
        self.runnable.range(self.next..).next().or_else(|| self.runnable.first()).copied()
    }

    /// How long the slice after the one [`next_slice`](Self::next_slice) just
    /// gave is likely to be (None: it will end at an I/O exit, not a
    /// deadline), if the same VMs can still run then.
    pub fn following_length_ns(&self) -> Option<u64> {
        match self.policy {
            Policy::Io => None,
            Policy::Rr => Some(self.quantum_ns),
            Policy::Fair | Policy::Gang => Some(self.fair.unit_ns()),
        }
    }

    /// The length of every fair slice, from the runnable VMs' shares.
    fn fair_unit_ns(&self) -> u64 {
        let quantum = self.quantum_ns as f64;
        let (lightest, heaviest) = self.fair.share_range();
        let (lightest, heaviest) = (lightest * quantum, heaviest * quantum);
        lightest.min(quantum * MAX_UNIT_FRACTION).max(heaviest / 4.0).max(MIN_SLICE_NS as f64).min(quantum) as u64
    }

    /// Records that `vm`'s slice was charged `charged_ns`: every VM that could
    /// run earns its share of that time, and `vm` pays for it. `gave_back`
    /// when the VM ended its slice itself (a yield, a halt): another VM runs
    /// next, so that a guest yielding in a loop cannot keep the CPU.
    pub fn charge(&mut self, vm: usize, charged_ns: u64, gave_back: bool) {
        if self.policy.weighs() {
            self.gave_back = gave_back.then_some(vm);
            self.fair.charge(vm, charged_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn candidates(weights: &[f64]) -> Vec<Candidate> {
        weights.iter().map(|&weight| Candidate { weight, runnable: true, keeps_lag: false }).collect()
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
            let slice = planner.next_slice().expect("a runnable VM");
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
    fn fair_interleaves_equal_units_by_lag() {
        // 70/30 at 1 ms: units of 0.2 ms (a fifth of the quantum, below
        // Morpheus's 0.3 ms), as evenly spread as 7:3 allows.
        let vms = candidates(&[70.0, 30.0]);
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        let mut order = Vec::new();
        for _ in 0..10 {
            let slice = planner.next_slice().unwrap();
            assert_eq!(slice.length_ns, Some(200_000));
            order.push(slice.vm);
            planner.charge(slice.vm, 200_000, false);
        }
        assert_eq!(order, [0, 1, 0, 0, 1, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_sleeper_that_wakes_owed_time_runs_next_only_when_told_it_woke() {
        // Two heavy VMs and a light one: by deadline an owed heavy one goes
        // first even when the light one is owed too; told that the light one
        // just woke owed time, the planner runs it first.
        let run = |told: bool| {
            // B ran; A (heavy) and C (light, the sleeper) are both owed time.
            let mut planner = Planner::new(Policy::Fair, MS, &candidates(&[10.0, 10.0, 1.0]));
            planner.charge(1, 200_000, false);
            let asleep = Candidate { weight: 1.0, runnable: false, keeps_lag: true };
            planner.set_candidate(2, asleep);
            planner.set_candidate(2, Candidate { runnable: true, ..asleep });
            assert!(planner.fair.lag_ns(0) > 0.0 && planner.fair.lag_ns(2) > 0.0, "both are owed time");
            if told {
                planner.woke(2);
            }
            planner.next_slice().unwrap().vm
        };
        assert_eq!(run(false), 0, "by deadline the heavy VM goes first");
        assert_eq!(run(true), 2, "told it woke owed time: it goes first");
        // Told of a VM that is owed nothing: the deadlines decide.
        let mut even = Planner::new(Policy::Fair, MS, &candidates(&[1.0, 1.0]));
        even.charge(1, 500_000, false);
        even.woke(1);
        assert_eq!(even.next_slice().unwrap().vm, 0, "VM 1 is ahead: it waits");
    }

    #[test]
    fn fair_keeps_every_vm_within_about_a_unit_of_its_share_at_all_times() {
        for weights in [&[70.0, 30.0][..], &[50.0, 50.0], &[5.0, 1.0, 3.0, 1.0, 10.0, 20.0], &[1.0; 16]] {
            let vms = candidates(weights);
            let total_weight: f64 = weights.iter().sum();
            let mut planner = Planner::new(Policy::Fair, MS, &vms);
            let (mut got, mut now, mut worst) = (vec![0u64; vms.len()], 0u64, 0f64);
            let mut unit = 0;
            while now < 500 * MS {
                let slice = planner.next_slice().unwrap();
                unit = slice.length_ns.unwrap();
                got[slice.vm] += unit;
                now += unit;
                planner.charge(slice.vm, unit, false);
                for (vm, &ns) in got.iter().enumerate() {
                    worst = worst.max((ns as f64 - now as f64 * weights[vm] / total_weight).abs());
                }
            }
            // A balanced interleaving of equal units cannot do better than
            // (1 - share) of a unit; lag picking stays within 1.5 units.
            assert!(worst <= 1.5 * unit as f64, "{weights:?}: {worst} ns off with units of {unit} ns");
        }
    }

    #[test]
    fn fair_honours_any_number_of_weights_over_time() {
        let weights = [5.0, 1.0, 3.0, 1.0, 10.0, 20.0];
        let vms = candidates(&weights);
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
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
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        let mut calls = 0;
        let got = simulate(&mut planner, &vms, 2000 * MS, |vm, length| {
            calls += 1;
            if vm == 0 && calls % 4 == 1 { length / 2 } else { length }
        });
        let share = shares(&got)[0];
        assert!((share - 0.7).abs() < 0.005, "{share}");
    }

    #[test]
    fn fair_lag_is_bounded_so_a_sleeper_cannot_hog_later() {
        let vms = candidates(&[1.0, 1.0]);
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        // VM 0 gives every slice back at once for a while (VM 1 still gets
        // every other one)...
        let mut others = 0;
        for _ in 0..100 {
            let slice = planner.next_slice().unwrap();
            let used = if slice.vm == 0 { 0 } else { slice.length_ns.unwrap() };
            others += slice.vm;
            planner.charge(slice.vm, used, used == 0);
        }
        assert_eq!(others, 50);
        // ...then wants all it can get: VM 1 (a quantum behind) gets its turn
        // again within two quanta, when their lags meet.
        let mut hogged = 0;
        loop {
            let slice = planner.next_slice().unwrap();
            if slice.vm == 1 {
                break;
            }
            hogged += slice.length_ns.unwrap();
            planner.charge(0, slice.length_ns.unwrap(), false);
        }
        assert!((MS..=2 * MS).contains(&hogged), "{hogged}");
    }

    #[test]
    fn weight_changes_take_effect_at_the_next_slice() {
        let mut vms = candidates(&[70.0, 30.0]);
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        simulate(&mut planner, &vms, 100 * MS, |_, length| length);
        vms[0].weight = 75.0;
        vms[1].weight = 25.0;
        planner.set_candidate(0, vms[0]);
        planner.set_candidate(1, vms[1]);
        let got = simulate(&mut planner, &vms, 100 * MS, |_, length| length);
        assert!((shares(&got)[0] - 0.75).abs() < 0.01, "{:?}", shares(&got));
    }

    #[test]
    fn fair_and_rr_never_starve_a_runnable_vm() {
        for policy in [Policy::Fair, Policy::Rr] {
            let vms = candidates(&[1000.0, 1.0, 1.0]);
            let mut planner = Planner::new(policy, MS, &vms);
            // Weight 1 in 1002 earns 1 us per 1 ms, so under `fair` its
            // 0.25 ms slice (a quarter of the heavy VM's quantum) comes once
            // every 250 ms or so.
            let got = simulate(&mut planner, &vms, 300 * MS, |_, length| length);
            assert!(got.iter().all(|&ns| ns >= MIN_SLICE_NS), "{policy:?}: {got:?}");
        }
    }

    #[test]
    fn fair_with_many_vms_gives_each_its_share() {
        let vms = candidates(&[1.0; 256]);
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        let got = simulate(&mut planner, &vms, 2000 * MS, |_, length| length);
        for share in shares(&got) {
            assert!((share * 256.0 - 1.0).abs() < 0.05, "{share}");
        }
    }

    #[test]
    fn rr_gives_equal_quanta_and_io_runs_until_io() {
        let vms = candidates(&[9.0, 1.0]);
        let mut rr = Planner::new(Policy::Rr, 2 * MS, &vms);
        let got = simulate(&mut rr, &vms, 100 * MS, |_, length| length);
        assert_eq!(got[0], got[1]);
        let mut io = Planner::new(Policy::Io, MS, &vms);
        assert_eq!(io.next_slice(), Some(Slice { vm: 0, length_ns: None }));
        assert_eq!(io.next_slice(), Some(Slice { vm: 1, length_ns: None }));
    }

    #[test]
    fn paused_vms_are_skipped_and_their_share_goes_to_the_others() {
        let mut vms = candidates(&[1.0, 1.0, 2.0]);
        vms[1].runnable = false;
        let vms = vms;
        let mut planner = Planner::new(Policy::Fair, MS, &vms);
        let got = simulate(&mut planner, &vms, 300 * MS, |_, length| length);
        assert_eq!(got[1], 0);
        assert!((shares(&got)[2] - 2.0 / 3.0).abs() < 0.01);
        for (vm, &candidate) in vms.iter().enumerate() {
            planner.set_candidate(vm, Candidate { runnable: false, ..candidate });
        }
        assert_eq!(planner.next_slice(), None);
    }
}
