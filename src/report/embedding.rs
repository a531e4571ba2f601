//! What the encoder separates: the frozen test features of the linear
//! probe's encoders (PIRL beside random init), coloured by label, on their
//! first two principal components (of the training features) and as a
//! t-SNE map ([`crate::eval::tsne`]).

use crate::protocol::{ArmKind, ArmResult};
use crate::report::canvas::Rgb;
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::format::{fmt_pct, init_name};
use crate::report::headline::fractions;

const POSITIVE: Rgb = (214, 39, 40);
const NEGATIVE: Rgb = (31, 119, 180);

/// Which 2-D picture of the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// `ArmResult::test_embedding`.
    Pca,
    /// `ArmResult::test_tsne`.
    Tsne,
}

impl Projection {
    fn points(self, r: &ArmResult) -> &[(f64, f64)] {
        match self {
            Projection::Pca => &r.test_embedding,
            Projection::Tsne => &r.test_tsne,
        }
    }

    /// The figure's file-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Projection::Pca => "features",
            Projection::Tsne => "tsne",
        }
    }

    fn axes(self) -> [&'static str; 2] {
        match self {
            Projection::Pca => ["first principal component", "second principal component"],
            Projection::Tsne => ["t-SNE 1 (arbitrary units)", "t-SNE 2 (arbitrary units)"],
        }
    }
}

/// One chart per init of each linear-probe arm, at the largest fraction and
/// the first seed: the principal components of every init first, then the
/// t-SNE maps in the same order (so on the page PIRL stands beside random
/// init, the t-SNE map under its PCA); a run without a projection (or with
/// one of another length than the labels) gives no chart of it. Each entry
/// is (file stem, chart).
pub fn charts(results: &[ArmResult], labels: &[u8]) -> Vec<(String, Chart)> {
    let Some(&largest) = fractions(results).last() else {
        return Vec::new();
    };
    let first_seed = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let runs: Vec<&ArmResult> = results
        .iter()
        .filter(|r| r.kind == ArmKind::LinearProbe && r.fraction == largest && r.seed == first_seed)
        .collect();
    let mut out = Vec::new();
    for proj in [Projection::Pca, Projection::Tsne] {
        for r in &runs {
            let pts = proj.points(r);
            if pts.is_empty() || pts.len() != labels.len() {
                continue;
            }
            let stem = crate::report::format::file_stem(&format!("{}_{}", r.arm, r.init));
            out.push((
                format!("{}_{stem}", proj.prefix()),
                chart(r, pts, labels, proj, largest),
            ));
        }
    }
    out
}

fn chart(r: &ArmResult, pts: &[(f64, f64)], labels: &[u8], proj: Projection, f: f64) -> Chart {
    let pick = |y: u8| -> Vec<(f64, f64)> {
        pts.iter()
            .zip(labels)
            .filter(|(_, l)| **l == y)
            .map(|(p, _)| *p)
            .collect()
    };
    let range = |g: fn(&(f64, f64)) -> f64| {
        let v: Vec<f64> = pts.iter().map(g).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad, hi + pad)
    };
    let what = match proj {
        Projection::Pca => "PCA",
        Projection::Tsne => "t-SNE",
    };
    let [xl, yl] = proj.axes();
    Chart {
        title: format!(
            "{what}: {}, {}, {} % labels, seed {}",
            r.arm,
            init_name(&r.init),
            fmt_pct(f),
            r.seed
        ),
        x: Axis::linear(xl, range(|p| p.0)),
        y: Axis::linear(yl, range(|p| p.1)),
        curves: vec![
            Curve::scatter("other", pick(0), NEGATIVE),
            Curve::scatter("melanoma (positive)", pick(1), POSITIVE),
        ],
        diagonal: false,
        hlines: Vec::new(),
        size: chart::SIZE,
    }
}
