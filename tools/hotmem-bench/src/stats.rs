//! Statistics of repeated measurements: median, min–max, quartiles (IQR),
//! and the geometric mean of paired ratios; and the clamp of guest CPU
//! times to the resolution they are counted with.
//!
//! Quartiles use linear interpolation between order statistics (type 7 of
//! Hyndman & Fan, what numpy and R use by default), so the median of an
//! even number of samples is the mean of the middle two.

use serde::{Deserialize, Serialize};

/// Guest CPU time is counted in USER_HZ ticks of `/proc/stat`: 10 ms.
pub const CPU_TICK_MS: f64 = 10.0;

/// Summary of a set of samples (any order, non-finite values ignored).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples summarised.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
}

impl Summary {
    /// The summary of `samples`, `None` if none is finite.
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut s: Vec<f64> = samples.into_iter().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Self {
            n: s.len(),
            median: quantile_sorted(&s, 0.5),
            min: s[0],
            max: s[s.len() - 1],
            q1: quantile_sorted(&s, 0.25),
            q3: quantile_sorted(&s, 0.75),
        })
    }

    /// Interquartile range.
    pub fn iqr(&self) -> f64 {
        self.q3 - self.q1
    }

    /// `median [min–max]`, with `decimals` digits after the point; a
    /// single sample is just its value.
    pub fn render(&self, decimals: usize) -> String {
        if self.n == 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} [{:.*}–{:.*}]",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

/// The `p` quantile (0 ≤ p ≤ 1) of sorted, non-empty `s`, interpolated.
fn quantile_sorted(s: &[f64], p: f64) -> f64 {
    let pos = (s.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Geometric mean of `values`; `None` if there are none or one is not a
/// positive finite number (a ratio with a zero or missing side has no
/// geometric mean).
pub fn geomean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut n = 0usize;
    let mut log_sum = 0.0;
    for v in values {
        if !(v.is_finite() && v > 0.0) {
            return None;
        }
        log_sum += v.ln();
        n += 1;
    }
    (n > 0).then(|| (log_sum / n as f64).exp())
}

/// Geometric mean of the ratios `a[i] / b[i]` of paired samples (run `i`
/// of each side); `None` if the sides differ in length, are empty, or a
/// ratio is not positive and finite.
pub fn geomean_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    geomean(a.iter().zip(b).map(|(x, y)| x / y))
}

/// A guest CPU time made comparable: counted in whole ticks, anything
/// below one tick is "less than one tick", so a ratio uses at least one.
pub fn clamp_cpu_ms(ms: f64) -> f64 {
    ms.max(CPU_TICK_MS)
}

/// `vanilla / hotmem` of guest CPU times, both clamped to one tick
/// ([`clamp_cpu_ms`]): a mean of 2.5 ms from one 10 ms tick in four
/// reclaims is not a measurement, and dividing by it would inflate the
/// ratio fourfold. `None` without both sides.
pub fn cpu_ratio(vanilla_ms: Option<f64>, hotmem_ms: Option<f64>) -> Option<f64> {
    let (v, h) = (vanilla_ms?, hotmem_ms?);
    (v.is_finite() && h.is_finite()).then(|| clamp_cpu_ms(v) / clamp_cpu_ms(h))
}

/// A CPU time for a table: `<10` below one tick, else whole ms.
pub fn render_cpu_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(v) if v < CPU_TICK_MS => format!("<{CPU_TICK_MS:.0}"),
        Some(v) => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_quartiles() {
        let s = Summary::of([5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (5, 3.0, 1.0, 5.0));
        assert_eq!((s.q1, s.q3, s.iqr()), (2.0, 4.0, 2.0));
        // Even count: the median is the mean of the middle two, quartiles
        // interpolate (numpy's default).
        let s = Summary::of([4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.q1, s.q3), (2.5, 1.75, 3.25));
        let one = Summary::of([7.0]).unwrap();
        assert_eq!(
            (one.median, one.min, one.max, one.iqr()),
            (7.0, 7.0, 7.0, 0.0)
        );
        assert_eq!(one.render(1), "7.0");
        assert_eq!(s.render(1), "2.5 [1.0–4.0]");
    }

    #[test]
    fn non_finite_samples_are_ignored_and_none_is_no_summary() {
        let s = Summary::of([f64::NAN, 2.0, f64::INFINITY, 4.0]).unwrap();
        assert_eq!((s.n, s.median), (2, 3.0));
        assert_eq!(Summary::of([]), None);
        assert_eq!(Summary::of([f64::NAN]), None);
    }

    #[test]
    fn geometric_mean_of_ratios() {
        let g = geomean([2.0, 8.0]).unwrap();
        assert!((g - 4.0).abs() < 1e-12, "{g}");
        // Ratios 10, 1000 → 100, not the arithmetic 505.
        let g = geomean_ratio(&[100.0, 1000.0], &[10.0, 1.0]).unwrap();
        assert!((g - 100.0).abs() < 1e-9, "{g}");
        // The geometric mean of inverted ratios is the inverse.
        let inv = geomean_ratio(&[10.0, 1.0], &[100.0, 1000.0]).unwrap();
        assert!((inv * 100.0 - 1.0).abs() < 1e-12, "{inv}");
        assert_eq!(geomean_ratio(&[1.0], &[1.0, 2.0]), None, "unpaired");
        assert_eq!(geomean_ratio(&[], &[]), None);
        assert_eq!(geomean_ratio(&[1.0], &[0.0]), None, "division by zero");
        assert_eq!(geomean([1.0, -1.0]), None);
    }

    #[test]
    fn cpu_times_are_clamped_to_one_tick() {
        assert_eq!(clamp_cpu_ms(0.0), CPU_TICK_MS);
        assert_eq!(clamp_cpu_ms(2.5), CPU_TICK_MS);
        assert_eq!(clamp_cpu_ms(30.0), 30.0);
        // A 2.5 ms mean (one tick in four reclaims) counts as one tick.
        assert_eq!(cpu_ratio(Some(237.5), Some(2.5)), Some(23.75));
        assert_eq!(cpu_ratio(Some(240.0), Some(0.0)), Some(24.0));
        assert_eq!(cpu_ratio(Some(200.0), Some(40.0)), Some(5.0));
        // Both below a tick: no difference that can be seen.
        assert_eq!(cpu_ratio(Some(5.0), Some(0.0)), Some(1.0));
        assert_eq!(cpu_ratio(None, Some(10.0)), None);
        assert_eq!(render_cpu_ms(Some(2.5)), "<10");
        assert_eq!(render_cpu_ms(Some(20.0)), "20");
        assert_eq!(render_cpu_ms(None), "-");
    }
}
