//! The machine's shares with several cores, and where VMs go: pure
//! arithmetic, the way Linux CFS shares CPUs by weight.
//!
//! Weights are shares of all the cores together, but a VM cannot use more
//! than one core (a VM runs on one core at a time, its vCPUs taking turns
//! there): what its weight would give beyond that goes to the others, in
//! proportion to their weights (water-filling). Two VMs weighted 3:1 on two
//! cores get a core each; three weighted 2:1:1 get one core and half a core
//! each.

/// What each VM's weight gets of the whole machine (fractions that add up
/// to 1, or to less when the VMs together cannot use every core): `weights`
/// of the VMs that can run (0 for those that cannot), on `cores` cores.
pub fn machine_shares(weights: &[f64], cores: usize) -> Vec<f64> {
    let cap = |_vm: usize| 1.0 / cores.max(1) as f64;
    let mut shares = vec![0.0; weights.len()];
    let mut open: Vec<usize> = (0..weights.len()).filter(|&vm| weights[vm] > 0.0).collect();
    let mut left = 1.0;
    // Each round fills the VMs whose weight asks for more than they can
    // use; the rest share what is left by weight. At most one round per VM.
    loop {
        let total: f64 = open.iter().map(|&vm| weights[vm]).sum();
        if total <= 0.0 || left <= 0.0 {
            break;
        }
        let capped: Vec<usize> = open.iter().copied().filter(|&vm| left * weights[vm] / total > cap(vm)).collect();
        if capped.is_empty() {
            for &vm in &open {
                shares[vm] = left * weights[vm] / total;
            }
            break;
        }
        for &vm in &capped {
            shares[vm] = cap(vm);
            left -= cap(vm);
        }
        open.retain(|vm| !capped.contains(vm));
    }
    shares
}

/// Which of `cores` cores each VM starts on: the largest targets first,
/// each onto the core with the least target so far among those it may use
/// (longest processing time first), so that each core's VMs can have the
/// shares the machine's weights give them. `shares` are [`machine_shares`]'s;
/// `allowed[vm]` the cores a VM is pinned to (empty or absent: any).
pub fn place(shares: &[f64], cores: usize, allowed: &[Vec<usize>]) -> Vec<usize> {
    let cores = cores.max(1);
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]).then(a.cmp(&b)));
    let mut load = vec![0.0_f64; cores];
    let mut count = vec![0_usize; cores];
    let mut placed = vec![0; shares.len()];
    for vm in order {
        // Least loaded; among equals, the one with fewer VMs, then the first.
        let pinned = allowed.get(vm).filter(|pins| pins.iter().any(|&core| core < cores));
        let core = (0..cores)
            .filter(|core| pinned.is_none_or(|pins| pins.contains(core)))
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(count[a].cmp(&count[b])).then(a.cmp(&b)))
            .unwrap_or(0);
        load[core] += shares[vm];
        count[core] += 1;
        placed[vm] = core;
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f64], want: &[f64]) -> bool {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9)
    }

    #[test]
    fn one_core_shares_by_weight() {
        assert!(close(&machine_shares(&[70.0, 30.0], 1), &[0.7, 0.3]));
    }

    #[test]
    fn two_one_one_on_two_cores_gives_a_core_and_two_halves() {
        let shares = machine_shares(&[2.0, 1.0, 1.0], 2);
        assert!(close(&shares, &[0.5, 0.25, 0.25]), "{shares:?}");
        assert_eq!(place(&shares, 2, &[]), [0, 1, 1]);
    }

    #[test]
    fn what_a_weight_cannot_use_goes_to_the_others() {
        // 3:1 on two cores: a vCPU never gets more than a core.
        assert!(close(&machine_shares(&[3.0, 1.0], 2), &[0.5, 0.5]));
        // 70/30 too.
        assert!(close(&machine_shares(&[70.0, 30.0], 2), &[0.5, 0.5]));
        // 10:1:1 on 4 cores: the first capped at a core, the others at one each too.
        assert!(close(&machine_shares(&[10.0, 1.0, 1.0], 4), &[0.25, 0.25, 0.25]));
    }

    #[test]
    fn vms_that_cannot_run_get_nothing() {
        assert!(close(&machine_shares(&[2.0, 0.0, 1.0], 2), &[0.5, 0.0, 0.5]));
        assert!(close(&machine_shares(&[0.0, 0.0], 2), &[0.0, 0.0]));
    }

    #[test]
    fn placing_spreads_the_load_and_is_stable() {
        assert_eq!(place(&[0.5, 0.5], 2, &[]), [0, 1]);
        assert_eq!(place(&[0.25; 4], 2, &[]), [0, 1, 0, 1]);
        assert_eq!(place(&[0.3, 0.3, 0.3], 1, &[]), [0, 0, 0]);
        // A big one alone, the small ones together.
        assert_eq!(place(&[0.1, 0.5, 0.2, 0.2], 2, &[]), [1, 0, 1, 1]);
    }

    #[test]
    fn pinned_vms_start_on_their_cores() {
        // Two pinned to core 0 share it; the third goes where there is room.
        assert_eq!(place(&[0.5, 0.5, 0.5], 2, &[vec![0], vec![0], vec![]]), [0, 0, 1]);
        assert_eq!(place(&[0.5, 0.5], 2, &[vec![1], vec![1]]), [1, 1]);
    }
}
