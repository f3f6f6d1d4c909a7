//! How long shares take to settle: from a change (an unpin) to the end of
//! the first window from which every VM's share of the machine, window
//! after window, stays within a tolerance of where it ends up.

/// A span of time one VM held a core (ns, any one clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The VM.
    pub vm: usize,
    /// When it started.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
}

/// Each VM's share of `cores` cores over the window `[end - window, end)`.
fn shares(held: &[Held], vms: usize, cores: usize, end_ns: u64, window_ns: u64) -> Vec<f64> {
    let start_ns = end_ns.saturating_sub(window_ns);
    let mut ns = vec![0u64; vms];
    for span in held.iter().filter(|span| span.vm < vms) {
        ns[span.vm] += span.end_ns.min(end_ns).saturating_sub(span.start_ns.max(start_ns));
    }
    ns.iter().map(|&held| held as f64 / (window_ns * cores as u64) as f64).collect()
}

/// How shares are judged settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judge {
    /// The window a share is taken over.
    pub window_ns: u64,
    /// How often a window ends.
    pub step_ns: u64,
    /// How far (a fraction of the machine) a share may be from where it ends up.
    pub tolerance: f64,
    /// Where it ends up: its mean over this much before the end.
    pub final_ns: u64,
}

/// From `changed_ns` to the end of the first window after it from which,
/// to `until_ns`, every VM's share of `cores` cores stays within the
/// tolerance of where it ends up; None if it never does.
pub fn settle_ns(held: &[Held], vms: usize, cores: usize, changed_ns: u64, until_ns: u64, judge: Judge) -> Option<u64> {
    let Judge { window_ns, step_ns, tolerance, final_ns } = judge;
    let ends: Vec<u64> = (1..).map(|step| changed_ns + step * step_ns).take_while(|&end| end <= until_ns).collect();
    let final_share = shares(held, vms, cores, until_ns, final_ns);
    let within = |end: u64| {
        shares(held, vms, cores, end, window_ns)
            .iter()
            .zip(&final_share)
            .all(|(share, last)| (share - last).abs() <= tolerance)
    };
    // The first window end from which every later one is within.
    let mut settled = None;
    for &end in ends.iter().rev() {
        if end < changed_ns + window_ns / 2 || !within(end) {
            break;
        }
        settled = Some(end);
    }
    settled.map(|end| end - changed_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_vm_that_moves_to_the_idle_core_settles_once_a_window_holds_only_the_new_placement() {
        // Two VMs share core 0 in 1 ms turns until 500 ms; from 520 ms b has
        // core 1 to itself and a keeps core 0. Settled: the first 100 ms
        // window that holds none of b's 20 ms gap, which ends at 620 ms.
        let judge = Judge { window_ns: 100 * MS, step_ns: 10 * MS, tolerance: 0.01, final_ns: 500 * MS };
        let mut held = Vec::new();
        for ms in 0..500 {
            held.push(Held { vm: (ms % 2) as usize, start_ns: ms * MS, end_ns: (ms + 1) * MS });
        }
        held.push(Held { vm: 0, start_ns: 500 * MS, end_ns: 2000 * MS });
        held.push(Held { vm: 1, start_ns: 520 * MS, end_ns: 2000 * MS });
        assert_eq!(settle_ns(&held, 2, 2, 500 * MS, 2000 * MS, judge), Some(120 * MS));
        // A VM that never settles: its share swings to the end.
        let mut swinging = Vec::new();
        for ms in (0..2000).step_by(200) {
            swinging.push(Held { vm: 0, start_ns: ms * MS, end_ns: (ms + 100) * MS });
        }
        assert_eq!(settle_ns(&swinging, 1, 1, 500 * MS, 2000 * MS, judge), None);
    }
}
