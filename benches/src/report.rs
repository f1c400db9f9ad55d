//! Results: one row per figure with its values on both sides, the ratio mirror/native, the
//! target it is held to; printed as a table and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{median, min_max};

/// A target on the ratio mirror/native: at least `ratio` for throughputs, at most `ratio`
/// for latencies.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Target {
    pub op: &'static str,
    pub ratio: f64,
}

impl Target {
    pub fn at_least(ratio: f64) -> Target {
        Target { op: ">=", ratio }
    }
    pub fn at_most(ratio: f64) -> Target {
        Target { op: "<=", ratio }
    }
    pub fn met(&self, ratio: f64) -> bool {
        match self.op {
            ">=" => ratio >= self.ratio,
            _ => ratio <= self.ratio,
        }
    }
}

/// One figure, measured once per repetition on each side.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable key for machines ("seq_write_mb_s").
    pub id: &'static str,
    pub workload: &'static str,
    pub metric: &'static str,
    pub target: Target,
    pub native: Vec<f64>,
    pub mirror: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Side {
    pub median: f64,
    pub values: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct RowJson {
    pub id: &'static str,
    pub workload: &'static str,
    pub metric: &'static str,
    pub native: Side,
    pub mirror: Side,
    /// Median on the mirror over median natively.
    pub ratio: f64,
    /// Range of the per-repetition ratios (each repetition ran both sides back to back).
    pub paired_ratio_min: f64,
    pub paired_ratio_max: f64,
    pub target: Target,
    pub met: bool,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        median(&self.mirror) / median(&self.native)
    }

    pub fn paired_ratios(&self) -> (f64, f64) {
        let r: Vec<f64> = self
            .native
            .iter()
            .zip(&self.mirror)
            .map(|(n, m)| m / n)
            .collect();
        min_max(&r)
    }

    pub fn met(&self) -> bool {
        self.target.met(self.ratio())
    }

    pub fn json(&self) -> RowJson {
        let (lo, hi) = self.paired_ratios();
        RowJson {
            id: self.id,
            workload: self.workload,
            metric: self.metric,
            native: Side {
                median: median(&self.native),
                values: self.native.clone(),
            },
            mirror: Side {
                median: median(&self.mirror),
                values: self.mirror.clone(),
            },
            ratio: self.ratio(),
            paired_ratio_min: lo,
            paired_ratio_max: hi,
            target: self.target,
            met: self.met(),
        }
    }
}

/// What the primary sent to the peer during one workload's runs (medians per run).
#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    pub workload: &'static str,
    pub ops_per_run: f64,
    pub data_mib_per_run: f64,
}

/// A workload not measured, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub workload: &'static str,
    pub reason: String,
}

/// Format a figure with about four significant digits.
pub fn fig(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The results table, one line per figure.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:<9} {:>10} {:>10} {:>7} {:>8}  {:<6} {:>13}",
        "workload", "metric", "native", "mirror", "ratio", "target", "", "paired ratios"
    );
    for r in rows {
        let (lo, hi) = r.paired_ratios();
        let _ = writeln!(
            out,
            "{:<34} {:<9} {:>10} {:>10} {:>7.3} {:>8}  {:<6} {:>13}",
            r.workload,
            r.metric,
            fig(median(&r.native)),
            fig(median(&r.mirror)),
            r.ratio(),
            format!("{} {}", r.target.op, r.target.ratio),
            if r.met() { "ok" } else { "MISSED" },
            format!("{lo:.2}..{hi:.2}"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(native: Vec<f64>, mirror: Vec<f64>, target: Target) -> Row {
        Row {
            id: "x",
            workload: "w",
            metric: "MB/s",
            target,
            native,
            mirror,
        }
    }

    #[test]
    fn ratio_of_medians_and_verdict() {
        let r = row(
            vec![100.0, 200.0, 300.0],
            vec![50.0, 100.0, 150.0],
            Target::at_least(0.45),
        );
        assert_eq!(r.ratio(), 0.5);
        assert!(r.met());
        assert_eq!(r.paired_ratios(), (0.5, 0.5));
        let lat = row(vec![1.0], vec![2.5], Target::at_most(2.0));
        assert!(!lat.met());
        assert!(table(&[r, lat]).contains("MISSED"));
    }

    #[test]
    fn figures_keep_four_digits() {
        assert_eq!(fig(1234.56), "1235");
        assert_eq!(fig(123.456), "123.5");
        assert_eq!(fig(12.3456), "12.35");
        assert_eq!(fig(1.23456), "1.235");
    }
}
