//! Shares in time windows: how far each window's split of work (or of charged
//! time) is from the targets. Pure arithmetic over timestamped amounts.

use serde::Serialize;

/// Max and mean of an error over all windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorStats {
    /// The worst window.
    pub max: f64,
    /// The mean over windows.
    pub mean: f64,
    /// How many windows.
    pub windows: usize,
}

impl ErrorStats {
    fn of(errors: &[f64]) -> Self {
        let max = errors.iter().copied().fold(0.0, f64::max);
        let mean = if errors.is_empty() { 0.0 } else { errors.iter().sum::<f64>() / errors.len() as f64 };
        Self { max, mean, windows: errors.len() }
    }
}

/// Each VM's share of the amounts in each window of `window_ns` between
/// `start_ns` and `end_ns` (windows with nothing in them are left out).
/// `series[vm]` holds (time, amount) pairs in time order.
pub fn window_shares(series: &[Vec<(u64, f64)>], start_ns: u64, end_ns: u64, window_ns: u64) -> Vec<Vec<f64>> {
    let windows = ((end_ns.saturating_sub(start_ns)) / window_ns) as usize;
    let mut sums = vec![vec![0.0; series.len()]; windows];
    for (vm, points) in series.iter().enumerate() {
        for &(at, amount) in points {
            if at >= start_ns {
                let index = ((at - start_ns) / window_ns) as usize;
                if index < windows {
                    sums[index][vm] += amount;
                }
            }
        }
    }
    sums.into_iter()
        .filter_map(|window| {
            let total: f64 = window.iter().sum();
            (total > 0.0).then(|| window.iter().map(|amount| amount / total).collect())
        })
        .collect()
}

/// The largest |share - target| in each window, in percentage points.
pub fn absolute_error_pp(shares: &[Vec<f64>], targets: &[f64]) -> ErrorStats {
    let errors: Vec<f64> = shares
        .iter()
        .map(|window| {
            window.iter().zip(targets).map(|(share, target)| (share - target).abs() * 100.0).fold(0.0, f64::max)
        })
        .collect();
    ErrorStats::of(&errors)
}

/// The largest |share / target - 1| in each window, in percent.
pub fn relative_error_pct(shares: &[Vec<f64>], targets: &[f64]) -> ErrorStats {
    let errors: Vec<f64> = shares
        .iter()
        .map(|window| {
            window.iter().zip(targets).map(|(share, target)| (share / target - 1.0).abs() * 100.0).fold(0.0, f64::max)
        })
        .collect();
    ErrorStats::of(&errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// One unit every `every` ns from `from` to `to`.
    fn ticks(from: u64, to: u64, every: u64) -> Vec<(u64, f64)> {
        (0..).map(|i| from + i * every).take_while(|&t| t < to).map(|t| (t, 1.0)).collect()
    }

    #[test]
    fn a_perfect_70_30_split_has_no_error() {
        // 7 units of A and 3 of B in every 10 ms.
        let series = vec![ticks(0, 1000 * MS, 10 * MS / 7), ticks(0, 1000 * MS, 10 * MS / 3)];
        let shares = window_shares(&series, 0, 1000 * MS, 100 * MS);
        assert_eq!(shares.len(), 10);
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
    fn relative_errors_compare_each_share_with_its_target() {
        let shares = vec![vec![0.26, 0.74], vec![0.25, 0.75]];
        let error = relative_error_pct(&shares, &[0.25, 0.75]);
        assert!((error.max - 4.0).abs() < 1e-9, "{error:?}");
    }

    #[test]
    fn amounts_outside_the_range_and_empty_windows_are_left_out() {
        let series = vec![vec![(5, 1.0), (150, 2.0), (999, 1.0)], vec![(160, 2.0)]];
        let shares = window_shares(&series, 100, 300, 100);
        assert_eq!(shares, vec![vec![0.5, 0.5]]);
    }
}
