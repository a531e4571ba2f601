//! Calibration of predicted probabilities: the Brier score, the expected
//! calibration error over equal-width bins, and the reliability curve, with
//! scikit-learn's conventions (`brier_score_loss`,
//! `calibration_curve(strategy="uniform")`).
//!
//! Probabilities must lie in [0, 1]; labels are `&[u8]` with 1 = positive
//! (anything else is negative), as in [`crate::eval::auc`].

use crate::error::{Error, Result};

/// One bin of a reliability curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bin {
    /// The bin's edges: cases with `lo < p <= hi` (the first bin also holds
    /// `p = 0`).
    pub lo: f64,
    pub hi: f64,
    /// Cases in the bin.
    pub n: usize,
    /// Mean predicted probability in the bin.
    pub mean_predicted: f64,
    /// Fraction of positives in the bin.
    pub fraction_positive: f64,
}

fn check(probs: &[f64], labels: &[u8], who: &str) -> Result<()> {
    if probs.len() != labels.len() {
        return Err(Error::Eval(format!(
            "{who}: {} probabilities but {} labels",
            probs.len(),
            labels.len()
        )));
    }
    if probs.is_empty() {
        return Err(Error::Eval(format!("{who}: no cases")));
    }
    if let Some(i) = probs
        .iter()
        .position(|p| !(p.is_finite() && (0.0..=1.0).contains(p)))
    {
        return Err(Error::Eval(format!(
            "{who}: probability {i} is {} (not in [0, 1])",
            probs[i]
        )));
    }
    Ok(())
}

/// The Brier score: the mean of `(p - y)^2` (scikit-learn's
/// `brier_score_loss(labels, probs)`).
pub fn brier_score(probs: &[f64], labels: &[u8]) -> Result<f64> {
    check(probs, labels, "brier_score")?;
    let s: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, &y)| (p - (y == 1) as u8 as f64).powi(2))
        .sum();
    Ok(s / probs.len() as f64)
}

/// The `k`-th of `bins + 1` equal-width bin edges on [0, 1], as numpy's
/// `linspace(0, 1, bins + 1)` computes it (`k * (1 / bins)`, the last edge
/// exactly 1), so that values on an edge fall where scikit-learn puts them.
fn edge(k: usize, bins: usize) -> f64 {
    if k >= bins {
        1.0
    } else {
        k as f64 * (1.0 / bins as f64)
    }
}

/// The bin of `p`: numpy's `searchsorted(edges[1:-1], p)` (side left), i.e.
/// the number of inner edges below `p`; bins are right-closed `(lo, hi]`,
/// with 0 in the first.
fn bin_of(p: f64, bins: usize) -> usize {
    (1..bins).filter(|&k| edge(k, bins) < p).count()
}

/// The reliability curve over `bins` equal-width bins on [0, 1]: one entry
/// per non-empty bin, in order (scikit-learn's
/// `calibration_curve(labels, probs, n_bins=bins, strategy="uniform")`
/// returns `fraction_positive` and `mean_predicted` of these entries).
pub fn reliability_curve(probs: &[f64], labels: &[u8], bins: usize) -> Result<Vec<Bin>> {
    check(probs, labels, "reliability_curve")?;
    if bins == 0 {
        return Err(Error::Eval("reliability_curve: 0 bins".into()));
    }
    let mut n = vec![0usize; bins];
    let mut sum_p = vec![0.0; bins];
    let mut pos = vec![0usize; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = bin_of(p, bins);
        n[b] += 1;
        sum_p[b] += p;
        pos[b] += (y == 1) as usize;
    }
    Ok((0..bins)
        .filter(|&b| n[b] > 0)
        .map(|b| Bin {
            lo: edge(b, bins),
            hi: edge(b + 1, bins),
            n: n[b],
            mean_predicted: sum_p[b] / n[b] as f64,
            fraction_positive: pos[b] as f64 / n[b] as f64,
        })
        .collect())
}

/// The expected calibration error over `bins` equal-width bins (the bins of
/// [`reliability_curve`]): `sum_b n_b / N * |fraction_positive_b -
/// mean_predicted_b|`.
pub fn expected_calibration_error(probs: &[f64], labels: &[u8], bins: usize) -> Result<f64> {
    let curve = reliability_curve(probs, labels, bins)?;
    let total = probs.len() as f64;
    Ok(curve
        .iter()
        .map(|b| b.n as f64 / total * (b.fraction_positive - b.mean_predicted).abs())
        .sum())
}

/// The logistic function, without overflow for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}
