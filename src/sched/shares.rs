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
    capped_shares(weights, &vec![1.0 / cores.max(1) as f64; weights.len()])
}

/// The same weighted water-filling with each VM's own cap (`caps[vm]`, a
/// fraction of the machine): a VM whose vCPUs all run at once (`gang`) can
/// use as many cores as it has vCPUs.
pub fn capped_shares(weights: &[f64], caps: &[f64]) -> Vec<f64> {
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
        let capped: Vec<usize> = open.iter().copied().filter(|&vm| left * weights[vm] / total > caps[vm]).collect();
        if capped.is_empty() {
            for &vm in &open {
                shares[vm] = left * weights[vm] / total;
            }
            break;
        }
        for &vm in &capped {
            shares[vm] = caps[vm];
            left -= caps[vm];
        }
        open.retain(|vm| !capped.contains(vm));
    }
    shares
}

/// [`machine_shares`] for VMs pinned to cores: `allowed[vm]` the cores a
/// VM may use (empty or absent: any). The same weighted water-filling,
/// where a group of VMs pinned to the same cores also cannot together have
/// more than those cores: VMs' shares grow with their weights until a VM
/// reaches a core or the cores its group may use are full, and what is left
/// goes on to the others. Two VMs of equal weight pinned to core 0 of two
/// get a quarter of the machine each (half a core), and a third unpinned
/// one the other core.
pub fn pinned_machine_shares(weights: &[f64], cores: usize, allowed: &[Vec<usize>]) -> Vec<f64> {
    let cores = cores.max(1);
    let sets: Vec<Vec<usize>> = (0..weights.len())
        .map(|vm| {
            let mut set: Vec<usize> = allowed.get(vm).into_iter().flatten().copied().filter(|&c| c < cores).collect();
            set.sort_unstable();
            set.dedup();
            if set.is_empty() { (0..cores).collect() } else { set }
        })
        .collect();
    if sets.iter().all(|set| set.len() == cores) {
        return machine_shares(weights, cores);
    }
    // VMs with the same cores form a group: feasibility depends only on
    // each group's total.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let group_of: Vec<usize> = sets
        .iter()
        .map(|set| match groups.iter().position(|group| group == set) {
            Some(index) => index,
            None => {
                groups.push(set.clone());
                groups.len() - 1
            }
        })
        .collect();
    // Cores' worth each VM has; open VMs grow with their weights at `level`.
    let mut cores_of = vec![0.0; weights.len()];
    let mut open: Vec<bool> = weights.iter().map(|&weight| weight > 0.0).collect();
    let at = |cores_of: &[f64], open: &[bool], level: f64| -> Vec<f64> {
        (0..weights.len()).map(|vm| if open[vm] { (weights[vm] * level).min(1.0) } else { cores_of[vm] }).collect()
    };
    let totals = |amounts: &[f64]| {
        let mut totals = vec![0.0; groups.len()];
        for (vm, &amount) in amounts.iter().enumerate() {
            totals[group_of[vm]] += amount;
        }
        totals
    };
    let fits = |amounts: &[f64]| fits_cores(&totals(amounts), &groups, cores);
    let mut level = 0.0_f64;
    while open.iter().any(|&o| o) {
        // The level at which every open VM has a core: the most there is.
        let top = (0..weights.len()).filter(|&vm| open[vm]).map(|vm| 1.0 / weights[vm]).fold(0.0, f64::max);
        let (mut low, mut high) = (level, top);
        if fits(&at(&cores_of, &open, high)) {
            low = high;
        } else {
            for _ in 0..64 {
                let middle = (low + high) / 2.0;
                if fits(&at(&cores_of, &open, middle)) { low = middle } else { high = middle }
            }
        }
        level = low;
        let amounts = at(&cores_of, &open, level);
        // Who stops here: every VM of a group that cannot have more (one
        // flow a group: they share its cores), and a VM at a core.
        let reached = totals(&amounts);
        let full: Vec<bool> = (0..groups.len())
            .map(|group| {
                let mut more = reached.clone();
                more[group] += 1e-6;
                (0..weights.len()).any(|vm| open[vm] && group_of[vm] == group) && !fits_cores(&more, &groups, cores)
            })
            .collect();
        let mut stopped = false;
        for vm in 0..weights.len() {
            if open[vm] && (amounts[vm] >= 1.0 - 1e-9 || full[group_of[vm]]) {
                (cores_of[vm], open[vm], stopped) = (amounts[vm], false, true);
            }
        }
        if !stopped {
            // Only rounding keeps them apart: they have what there is.
            for vm in 0..weights.len() {
                if open[vm] {
                    (cores_of[vm], open[vm]) = (amounts[vm], false);
                }
            }
        }
    }
    cores_of.iter().map(|&amount| amount / cores as f64).collect()
}

/// Whether groups of VMs wanting `totals` cores' worth, each on its cores
/// `groups`, fit `cores` cores of one each: a flow from the groups to their
/// cores (Edmonds-Karp on a graph of groups and cores) carries them all.
fn fits_cores(totals: &[f64], groups: &[Vec<usize>], cores: usize) -> bool {
    // Nodes: 0 source, 1..=g groups, then cores, then the sink.
    let g = groups.len();
    let (source, sink) = (0, g + cores + 1);
    let nodes = sink + 1;
    let mut capacity = vec![vec![0.0_f64; nodes]; nodes];
    for (group, set) in groups.iter().enumerate() {
        capacity[source][1 + group] = totals[group];
        for &core in set {
            capacity[1 + group][1 + g + core] = f64::INFINITY;
        }
    }
    for core in 0..cores {
        capacity[1 + g + core][sink] = 1.0;
    }
    let wanted: f64 = totals.iter().sum();
    let mut flow = 0.0;
    loop {
        // The shortest path with room left, by breadth first.
        let mut came_from = vec![usize::MAX; nodes];
        came_from[source] = source;
        let mut queue = std::collections::VecDeque::from([source]);
        while let Some(node) = queue.pop_front() {
            for next in 0..nodes {
                if came_from[next] == usize::MAX && capacity[node][next] > 1e-12 {
                    came_from[next] = node;
                    queue.push_back(next);
                }
            }
        }
        if came_from[sink] == usize::MAX {
            break;
        }
        let mut room = f64::INFINITY;
        let mut node = sink;
        while node != source {
            room = room.min(capacity[came_from[node]][node]);
            node = came_from[node];
        }
        let mut node = sink;
        while node != source {
            let previous = came_from[node];
            capacity[previous][node] -= room;
            capacity[node][previous] += room;
            node = previous;
        }
        flow += room;
    }
    flow >= wanted - 1e-9
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
    fn pinned_vms_share_their_cores_and_the_others_have_the_rest() {
        // Two pinned to core 0 of two share it: a quarter of the machine each.
        let both = pinned_machine_shares(&[1.0, 1.0], 2, &[vec![0], vec![0]]);
        assert!(close(&both, &[0.25, 0.25]), "{both:?}");
        // A third, unpinned, has core 1.
        let three = pinned_machine_shares(&[1.0, 1.0, 1.0], 2, &[vec![0], vec![0], vec![]]);
        assert!(close(&three, &[0.25, 0.25, 0.5]), "{three:?}");
        // By weight within the pinned core: 3:1 on core 0.
        let weighted = pinned_machine_shares(&[3.0, 1.0, 1.0], 2, &[vec![0], vec![0], vec![1]]);
        assert!(close(&weighted, &[0.375, 0.125, 0.5]), "{weighted:?}");
        // Unpinned VMs go where the pinned leave room: a heavy VM pinned to
        // core 0, three light ones free on two cores: it keeps core 0 to
        // itself only as far as their weights let it.
        let mixed = pinned_machine_shares(&[4.0, 1.0, 1.0, 1.0], 2, &[vec![0], vec![], vec![], vec![]]);
        assert!(close(&mixed, &[0.5, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0]), "{mixed:?}");
        // Pinned to every core, or to none: the machine's shares as they were.
        let all = pinned_machine_shares(&[2.0, 1.0, 1.0], 2, &[vec![0, 1], vec![], vec![1, 0]]);
        assert!(close(&all, &machine_shares(&[2.0, 1.0, 1.0], 2)), "{all:?}");
        // A pin to a core the run lacks counts as none; a VM that cannot run gets nothing.
        let odd = pinned_machine_shares(&[1.0, 0.0, 1.0], 2, &[vec![5], vec![0], vec![0]]);
        assert!(close(&odd, &[0.5, 0.0, 0.5]), "{odd:?}");
    }

    #[test]
    fn pinned_vms_start_on_their_cores() {
        // Two pinned to core 0 share it; the third goes where there is room.
        assert_eq!(place(&[0.5, 0.5, 0.5], 2, &[vec![0], vec![0], vec![]]), [0, 0, 1]);
        assert_eq!(place(&[0.5, 0.5], 2, &[vec![1], vec![1]]), [1, 1]);
    }
}
