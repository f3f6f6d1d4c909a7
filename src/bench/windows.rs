//! Shares in time windows: how far each window's split of work (or of charged
//! time) is from the targets. Pure arithmetic over timestamped amounts.

use serde::Serialize;

use crate::stats::nearest_rank;

/// Max, 99th percentile and mean of an error over all windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorStats {
    /// The worst window.
    pub max: f64,
    /// The 99th percentile (nearest rank): below the max when the worst
    /// windows are rare events, close to it when they are the pattern.
    pub p99: f64,
    /// The mean over windows.
    pub mean: f64,
    /// How many windows.
    pub windows: usize,
    /// Windows left out as stalled (see [`STALLED_FRACTION`]).
    pub stalled_windows: usize,
}

impl ErrorStats {
    fn of(errors: &[f64], stalled_windows: usize) -> Self {
        let mut sorted = errors.to_vec();
        sorted.sort_by(f64::total_cmp);
        let max = sorted.last().copied().unwrap_or(0.0);
        let p99 = nearest_rank(&sorted, 0.99).unwrap_or(0.0);
        let mean = if errors.is_empty() { 0.0 } else { errors.iter().sum::<f64>() / errors.len() as f64 };
        Self { max, p99, mean, windows: errors.len(), stalled_windows }
    }
}

/// An amount spread evenly over a span of time (from == to: all at one instant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Where the span starts (ns).
    pub from: u64,
    /// Where it ends (ns).
    pub to: u64,
    /// How much is spread over it.
    pub amount: f64,
}

impl Spread {
    /// An amount at one instant.
    pub fn at(time: u64, amount: f64) -> Self {
        Self { from: time, to: time, amount }
    }
}

/// A window is *stalled* when it holds less than this fraction of the median
/// window's total: the host gave the guests so little of it (a stall of the
/// whole machine) that its split says nothing about the scheduler.
pub const STALLED_FRACTION: f64 = 0.5;

/// Each VM's share in the windows that were not stalled, and how many were.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowShares {
    /// Per window, each VM's share of its total.
    pub shares: Vec<Vec<f64>>,
    /// Windows left out because the guests got less than
    /// [`STALLED_FRACTION`] of the usual amount in them.
    pub stalled: usize,
}

/// Each VM's share of the amounts in each window of `window_ns` between
/// `start_ns` and `end_ns`. Each amount counts in the windows its span
/// overlaps, in proportion. Stalled windows are counted, not shared out.
pub fn window_shares(series: &[Vec<Spread>], start_ns: u64, end_ns: u64, window_ns: u64) -> WindowShares {
    let windows = ((end_ns.saturating_sub(start_ns)) / window_ns) as usize;
    let mut sums = vec![vec![0.0; series.len()]; windows];
    let window_of = |time: u64| time.checked_sub(start_ns).map(|offset| (offset / window_ns) as usize);
    for (vm, spreads) in series.iter().enumerate() {
        for spread in spreads {
            let (Some(first), Some(last)) = (window_of(spread.from.max(start_ns)), window_of(spread.to)) else {
                continue;
            };
            let length = (spread.to - spread.from).max(1) as f64;
            let last = last.min(windows.saturating_sub(1));
            for (index, window) in sums.iter_mut().enumerate().take(last + 1).skip(first) {
                if spread.from == spread.to {
                    window[vm] += spread.amount;
                    break;
                }
                let window_start = start_ns + index as u64 * window_ns;
                let overlap = spread.to.min(window_start + window_ns).saturating_sub(spread.from.max(window_start));
                window[vm] += spread.amount * overlap as f64 / length;
            }
        }
    }
    let totals: Vec<f64> = sums.iter().map(|window| window.iter().sum()).collect();
    let mut sorted = totals.clone();
    sorted.sort_by(f64::total_cmp);
    let usual = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let mut result = WindowShares::default();
    for (window, total) in sums.into_iter().zip(totals) {
        if total > 0.0 && total >= STALLED_FRACTION * usual {
            result.shares.push(window.iter().map(|amount| amount / total).collect());
        } else {
            result.stalled += 1;
        }
    }
    result
}

/// The largest |share - target| in each window, in percentage points.
pub fn absolute_error_pp(windows: &WindowShares, targets: &[f64]) -> ErrorStats {
    let errors: Vec<f64> = windows
        .shares
        .iter()
        .map(|window| {
            window.iter().zip(targets).map(|(share, target)| (share - target).abs() * 100.0).fold(0.0, f64::max)
        })
        .collect();
    ErrorStats::of(&errors, windows.stalled)
}

/// The largest |share / target - 1| in each window, in percent.
pub fn relative_error_pct(windows: &WindowShares, targets: &[f64]) -> ErrorStats {
    let errors: Vec<f64> = windows
        .shares
        .iter()
        .map(|window| {
            window.iter().zip(targets).map(|(share, target)| (share / target - 1.0).abs() * 100.0).fold(0.0, f64::max)
        })
        .collect();
    ErrorStats::of(&errors, windows.stalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// One unit every `every` ns from `from` to `to`.
    fn ticks(from: u64, to: u64, every: u64) -> Vec<Spread> {
        (0..).map(|i| from + i * every).take_while(|&t| t < to).map(|t| Spread::at(t, 1.0)).collect()
    }

    #[test]
    fn a_perfect_70_30_split_has_no_error() {
        // 7 units of A and 3 of B in every 10 ms.
        let series = vec![ticks(0, 1000 * MS, 10 * MS / 7), ticks(0, 1000 * MS, 10 * MS / 3)];
        let shares = window_shares(&series, 0, 1000 * MS, 100 * MS);
        assert_eq!((shares.shares.len(), shares.stalled), (10, 0));
        let error = absolute_error_pp(&shares, &[0.7, 0.3]);
        assert!(error.max < 0.5, "{error:?}");
    }

    #[test]
    fn a_skewed_window_shows_up_as_its_error() {
        // 50/50 in the first window, 70/30 in the second.
        let series = vec![
            [ticks(0, 100 * MS, 2 * MS), ticks(100 * MS, 200 * MS, 10 * MS / 7)].concat(),
            [ticks(0, 100 * MS, 2 * MS), ticks(100 * MS, 200 * MS, 10 * MS / 3)].concat(),
        ];
        let shares = window_shares(&series, 0, 200 * MS, 100 * MS);
        let error = absolute_error_pp(&shares, &[0.7, 0.3]);
        assert!((error.max - 20.0).abs() < 0.5, "{error:?}");
        assert!((error.mean - 10.0).abs() < 0.5, "{error:?}");
        assert_eq!(error.windows, 2);
    }

    #[test]
    fn the_99th_percentile_leaves_out_a_rare_worst_window() {
        // 199 windows 1 pp off, one 30 pp off: max 30, p99 1.
        let errors: Vec<f64> = (0..200).map(|i| if i == 77 { 30.0 } else { 1.0 }).collect();
        let stats = ErrorStats::of(&errors, 0);
        assert_eq!((stats.max, stats.p99, stats.windows), (30.0, 1.0, 200));
        // With 50 windows the 99th percentile is the worst one.
        assert_eq!(ErrorStats::of(&errors[50..100], 0).p99, 30.0);
        assert_eq!(ErrorStats::of(&[], 0).p99, 0.0);
    }

    #[test]
    fn relative_errors_compare_each_share_with_its_target() {
        let shares = WindowShares { shares: vec![vec![0.26, 0.74], vec![0.25, 0.75]], stalled: 0 };
        let error = relative_error_pct(&shares, &[0.25, 0.75]);
        assert!((error.max - 4.0).abs() < 1e-9, "{error:?}");
    }

    #[test]
    fn amounts_outside_the_range_are_left_out_and_empty_windows_count_as_stalled() {
        let series =
            vec![vec![Spread::at(5, 1.0), Spread::at(150, 2.0), Spread::at(999, 1.0)], vec![Spread::at(160, 2.0)]];
        let shares = window_shares(&series, 100, 300, 100);
        assert_eq!(shares, WindowShares { shares: vec![vec![0.5, 0.5]], stalled: 1 });
    }

    #[test]
    fn windows_with_less_than_half_the_usual_amount_are_stalled() {
        // Ten units a window, except window 2 (a host stall: two units, both A's).
        let a: Vec<Spread> = (0..5)
            .flat_map(|w| (0..if w == 2 { 2 } else { 7 }).map(move |i| w * 100 + i))
            .map(|t| Spread::at(t, 1.0))
            .collect();
        let b: Vec<Spread> = (0..5)
            .filter(|&w| w != 2)
            .flat_map(|w| (0..3).map(move |i| w * 100 + 50 + i))
            .map(|t| Spread::at(t, 1.0))
            .collect();
        let shares = window_shares(&[a, b], 0, 500, 100);
        assert_eq!(shares.stalled, 1);
        let error = absolute_error_pp(&shares, &[0.7, 0.3]);
        assert!(error.max < 1e-9, "{error:?}");
        assert_eq!((error.windows, error.stalled_windows), (4, 1));
    }

    #[test]
    fn spans_are_shared_between_the_windows_they_cross() {
        // A: 300 spread over 50..350 (50 in window 0, 100 in 1, 100 in 2, 50 in 3).
        // B: 100 at 120 (window 1).
        let series = vec![vec![Spread { from: 50, to: 350, amount: 300.0 }], vec![Spread::at(120, 100.0)]];
        let shares = window_shares(&series, 0, 400, 100);
        assert_eq!(shares.shares, vec![vec![1.0, 0.0], vec![0.5, 0.5], vec![1.0, 0.0], vec![1.0, 0.0]]);
    }
}
