//! Strict gang scheduling (`--policy gang`): when a VM of several vCPUs
//! runs, all its vCPUs run at once, each on its own core, or none of them
//! does (Ousterhout's co-scheduling, 1982). Pure arithmetic: which windows
//! of time each such VM gets.
//!
//! Time is cut into periods on one grid shared by every core (the run's
//! epoch). In each period every gang VM has one window, the VMs' windows
//! one after another; in its window a VM of k vCPUs takes k cores (its home
//! core and the next ones), and outside it none of its vCPUs runs. A
//! window's length is the VM's share of the machine spread over its vCPUs:
//! a 2-vCPU VM whose weight gives it one core of two runs half of each
//! period on both. VMs of one vCPU share the rest of the time by weight, as
//! under `fair`.

use super::shares::capped_shares;

/// One gang VM's window in each period (ns from the period's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Where it starts in the period.
    pub offset_ns: u64,
    /// How long it lasts.
    pub length_ns: u64,
}

/// Where `now` falls for one gang VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAt {
    /// Inside a window that ends at `end_ns` (monotonic).
    Inside {
        /// When it ends.
        end_ns: u64,
    },
    /// Between windows: the next starts at `start_ns`.
    Before {
        /// When it starts.
        start_ns: u64,
    },
}

/// Every gang VM's window, by VM id (`None`: the VM is not run in windows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GangPlan {
    /// The period's length (0: no gang VM).
    pub period_ns: u64,
    /// Each VM's window.
    pub windows: Vec<Option<Window>>,
}

/// A window shorter than this is not worth the switch of every core it takes.
const MIN_WINDOW_NS: u64 = 100_000;

/// Of each period, the part each VM of several vCPUs runs in under gang
/// (0 for the others): its share of the machine by weight (capped at a
/// core a vCPU) in cores, over its vCPUs, all of which run in its window;
/// scaled down to fit one period when they ask for more.
pub fn window_parts(weights: &[f64], vcpus: &[usize], cores: usize) -> Vec<f64> {
    let cores = cores.max(1);
    let caps: Vec<f64> = vcpus.iter().map(|&n| n.clamp(1, cores) as f64 / cores as f64).collect();
    let shares = capped_shares(weights, &caps);
    let gang = |vm: usize| vcpus[vm] > 1 && weights[vm] > 0.0;
    let parts: Vec<f64> = (0..weights.len())
        .map(|vm| if gang(vm) { shares[vm] * cores as f64 / vcpus[vm] as f64 } else { 0.0 })
        .collect();
    let total: f64 = parts.iter().sum();
    let scale = if total > 1.0 { 1.0 / total } else { 1.0 };
    parts.into_iter().map(|part| part * scale).collect()
}

/// What each VM gets under gang, in cores: a gang VM its window's part of
/// the time on each of its vCPUs' cores; a VM of one vCPU a share by weight
/// of the time outside the windows, at most that time on one core (a core
/// a gang VM leaves idle in its window is not theirs to use: strict gang's
/// fragmentation).
pub fn gang_cores(weights: &[f64], vcpus: &[usize], cores: usize) -> Vec<f64> {
    let cores = cores.max(1);
    let parts = window_parts(weights, vcpus, cores);
    let free = (1.0 - parts.iter().sum::<f64>()).max(0.0);
    let single = |vm: usize| vcpus[vm] <= 1;
    let single_weights: Vec<f64> = (0..weights.len()).map(|vm| if single(vm) { weights[vm] } else { 0.0 }).collect();
    // Over the time outside windows, each single may use a core.
    let single_shares = capped_shares(&single_weights, &vec![1.0 / cores as f64; weights.len()]);
    (0..weights.len())
        .map(|vm| if single(vm) { single_shares[vm] * cores as f64 * free } else { parts[vm] * vcpus[vm] as f64 })
        .collect()
}

impl GangPlan {
    /// The plan for VMs of `vcpus` vCPUs each with `weights` (0 for a VM
    /// that cannot run) on `cores` cores: VMs of several vCPUs get windows
    /// ([`window_parts`]) of a period of two quanta a gang VM.
    pub fn new(weights: &[f64], vcpus: &[usize], cores: usize, quantum_ns: u64) -> Self {
        let parts = window_parts(weights, vcpus, cores);
        let gangs = parts.iter().filter(|&&part| part > 0.0).count() as u64;
        if gangs == 0 {
            return Self { period_ns: 0, windows: vec![None; weights.len()] };
        }
        let period_ns = 2 * quantum_ns.max(MIN_WINDOW_NS) * gangs;
        let mut offset_ns = 0;
        let windows = parts
            .iter()
            .map(|&part| {
                if part <= 0.0 {
                    return None;
                }
                let length_ns = ((part * period_ns as f64) as u64).max(MIN_WINDOW_NS).min(period_ns - offset_ns);
                let window = Window { offset_ns, length_ns };
                offset_ns += length_ns;
                Some(window)
            })
            .collect();
        Self { period_ns, windows }
    }

    /// Where `now_ns` falls for VM `vm` on the grid that starts at
    /// `epoch_ns` (monotonic ns); `None` if the VM has no window.
    pub fn at(&self, vm: usize, epoch_ns: u64, now_ns: u64) -> Option<WindowAt> {
        let window = (*self.windows.get(vm)?)?;
        let since = now_ns.saturating_sub(epoch_ns);
        let period_start = epoch_ns + since / self.period_ns * self.period_ns;
        let start = period_start + window.offset_ns;
        let end = start + window.length_ns;
        Some(match now_ns {
            now if now < start => WindowAt::Before { start_ns: start },
            now if now + MIN_WINDOW_NS / 2 < end => WindowAt::Inside { end_ns: end },
            _ => WindowAt::Before { start_ns: start + self.period_ns },
        })
    }
}

/// The cores a gang VM whose home is `home` runs its `vcpus` vCPUs on, in
/// vCPU order: its home and the next ones, round the `cores`.
pub fn lane_cores(home: usize, vcpus: usize, cores: usize) -> Vec<usize> {
    (0..vcpus).map(|lane| (home + lane) % cores.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_two_vcpu_vm_beside_a_spinner_runs_half_of_each_period_on_both_cores() {
        // Equal weights on two cores: a core each; the pair spreads its core
        // over its two vCPUs, so it runs half the time on both.
        let plan = GangPlan::new(&[1.0, 1.0], &[2, 1], 2, 5 * MS);
        assert_eq!(plan.period_ns, 10 * MS);
        assert_eq!(plan.windows, vec![Some(Window { offset_ns: 0, length_ns: 5 * MS }), None]);
    }

    #[test]
    fn a_gang_vm_alone_runs_all_the_time_and_weights_set_window_lengths() {
        let alone = GangPlan::new(&[1.0], &[2], 2, MS);
        assert_eq!(alone.windows[0], Some(Window { offset_ns: 0, length_ns: alone.period_ns }));
        // 3:1 against a spinner: the pair may have both cores' worth 3/4 of
        // the machine, so three quarters of each period.
        let heavy = GangPlan::new(&[3.0, 1.0], &[2, 1], 2, MS);
        assert_eq!(heavy.windows[0].map(|w| w.length_ns), Some(heavy.period_ns * 3 / 4));
    }

    #[test]
    fn gang_vms_take_turns_within_a_period_and_never_overlap() {
        let plan = GangPlan::new(&[1.0, 1.0, 1.0], &[2, 2, 1], 2, MS);
        let first = plan.windows[0].expect("a gang VM");
        let second = plan.windows[1].expect("a gang VM");
        assert_eq!(second.offset_ns, first.offset_ns + first.length_ns);
        assert!(second.offset_ns + second.length_ns <= plan.period_ns);
        assert_eq!(plan.windows[2], None);
    }

    #[test]
    fn vms_that_cannot_run_or_have_one_vcpu_get_no_window() {
        let plan = GangPlan::new(&[0.0, 1.0], &[2, 1], 2, MS);
        assert_eq!(plan, GangPlan { period_ns: 0, windows: vec![None, None] });
        assert_eq!(plan.at(0, 0, 5), None);
    }

    #[test]
    fn the_grid_says_whether_now_is_inside_a_window_or_when_the_next_starts() {
        let plan = GangPlan::new(&[1.0, 1.0], &[2, 1], 2, 5 * MS);
        let epoch = 1_000 * MS;
        assert_eq!(plan.at(0, epoch, epoch + MS), Some(WindowAt::Inside { end_ns: epoch + 5 * MS }));
        assert_eq!(plan.at(0, epoch, epoch + 6 * MS), Some(WindowAt::Before { start_ns: epoch + 10 * MS }));
        assert_eq!(plan.at(0, epoch, epoch + 23 * MS), Some(WindowAt::Inside { end_ns: epoch + 25 * MS }));
        // Too little left of a window: the next one.
        assert_eq!(plan.at(0, epoch, epoch + 5 * MS - 10), Some(WindowAt::Before { start_ns: epoch + 10 * MS }));
    }

    #[test]
    fn under_gang_a_pair_gets_a_core_and_a_spinner_beside_it_half_a_core() {
        // The pair's window is half of each period on both cores; the
        // spinner has only the other half, on one core.
        let got = gang_cores(&[1.0, 1.0], &[2, 1], 2);
        assert!((got[0] - 1.0).abs() < 1e-9 && (got[1] - 0.5).abs() < 1e-9, "{got:?}");
        // Two singles share the time outside the window by weight, a core each at most.
        let three = gang_cores(&[2.0, 1.0, 1.0], &[2, 1, 1], 2);
        let sum_singles = three[1] + three[2];
        assert!((three[0] - 1.0).abs() < 1e-9 && (sum_singles - 1.0).abs() < 1e-9, "{three:?}");
    }

    #[test]
    fn lanes_are_the_home_core_and_the_next_ones() {
        assert_eq!(lane_cores(1, 2, 2), vec![1, 0]);
        assert_eq!(lane_cores(0, 3, 4), vec![0, 1, 2]);
    }
}
