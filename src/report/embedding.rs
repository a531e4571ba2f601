//! What the encoder separates: the frozen test features of the linear
//! probe's encoders (PIRL beside random init) on their first two principal
//! components (of the training features), coloured by label.

use crate::protocol::{ArmKind, ArmResult};
use crate::report::canvas::Rgb;
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::format::{fmt_pct, init_name};
use crate::report::headline::fractions;

const POSITIVE: Rgb = (214, 39, 40);
const NEGATIVE: Rgb = (31, 119, 180);

/// One chart per init of each linear-probe arm, at the largest fraction and
/// the first seed; none when no run carries the projection.
pub fn charts(results: &[ArmResult], labels: &[u8]) -> Vec<(String, Chart)> {
    let Some(&largest) = fractions(results).last() else {
        return Vec::new();
    };
    let first_seed = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let runs: Vec<&ArmResult> = results
        .iter()
        .filter(|r| {
            r.kind == ArmKind::LinearProbe
                && r.fraction == largest
                && r.seed == first_seed
                && r.test_embedding.len() == labels.len()
        })
        .collect();
    runs.iter()
        .map(|r| {
            let pick = |y: u8| -> Vec<(f64, f64)> {
                r.test_embedding
                    .iter()
                    .zip(labels)
                    .filter(|(_, l)| **l == y)
                    .map(|(p, _)| *p)
                    .collect()
            };
            let range = |f: fn(&(f64, f64)) -> f64| {
                let v: Vec<f64> = r.test_embedding.iter().map(f).collect();
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let pad = ((hi - lo) * 0.05).max(1e-6);
                (lo - pad, hi + pad)
            };
            let chart = Chart {
                title: format!(
                    "Frozen test features, {}: {} ({} % labels, seed {})",
                    r.arm,
                    init_name(&r.init),
                    fmt_pct(largest),
                    r.seed
                ),
                x: Axis::linear("first principal component", range(|p| p.0)),
                y: Axis::linear("second principal component", range(|p| p.1)),
                curves: vec![
                    Curve::scatter("other", pick(0), NEGATIVE),
                    Curve::scatter("melanoma (positive)", pick(1), POSITIVE),
                ],
                diagonal: false,
                hlines: Vec::new(),
                size: chart::SIZE,
            };
            (format!("{}_{}", r.arm, r.init), chart)
        })
        .collect()
}
