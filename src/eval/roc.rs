//! ROC curves and operating points: scikit-learn's `roc_curve`, sensitivity
//! and specificity with Clopper-Pearson intervals at a threshold, thresholds
//! chosen for a minimum specificity or sensitivity or by Youden's J, and the
//! partial AUC over a high-sensitivity range as pROC computes it.
//!
//! A case is called positive when its score is `>=` the threshold. Labels are
//! `&[u8]` with 1 = positive (anything else is negative).

use crate::error::{Error, Result};
use crate::eval::auc::check;
use crate::eval::stats::clopper_pearson;

/// One point of a ROC curve: calling `score >= threshold` positive gives this
/// false- and true-positive rate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RocPoint {
    pub fpr: f64,
    pub tpr: f64,
    pub threshold: f64,
}

/// Sensitivity and specificity at a threshold, each with its exact
/// (Clopper-Pearson) 95 % interval.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OperatingPoint {
    pub threshold: f64,
    pub sensitivity: f64,
    pub sens_lo: f64,
    pub sens_hi: f64,
    pub specificity: f64,
    pub spec_lo: f64,
    pub spec_hi: f64,
    /// `(sensitivity + specificity) / 2`.
    pub balanced_accuracy: f64,
}

/// Cumulative counts at each distinct score, thresholds decreasing:
/// `(threshold, true positives, false positives)` with `score >= threshold`
/// called positive; preceded by `(+inf, 0, 0)`.
fn sweep(scores: &[f64], labels: &[u8]) -> Vec<(f64, u64, u64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = vec![(f64::INFINITY, 0u64, 0u64)];
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_group = k + 1 == order.len() || scores[order[k + 1]] != scores[i];
        if last_of_group {
            out.push((scores[i], tp, fp));
        }
    }
    out
}

fn operating_point(threshold: f64, tp: u64, fp: u64, n_pos: u64, n_neg: u64) -> OperatingPoint {
    let tn = n_neg - fp;
    let sensitivity = tp as f64 / n_pos as f64;
    let specificity = tn as f64 / n_neg as f64;
    let (sens_lo, sens_hi) = clopper_pearson(tp, n_pos, 0.95);
    let (spec_lo, spec_hi) = clopper_pearson(tn, n_neg, 0.95);
    OperatingPoint {
        threshold,
        sensitivity,
        sens_lo,
        sens_hi,
        specificity,
        spec_lo,
        spec_hi,
        balanced_accuracy: (sensitivity + specificity) / 2.0,
    }
}

/// The ROC curve with scikit-learn's conventions
/// (`sklearn.metrics.roc_curve(labels, scores, drop_intermediate=True)`):
/// one point per distinct score, thresholds decreasing, preceded by (0, 0)
/// at threshold +inf; when there are more than two distinct scores, a point
/// is dropped where the second differences of both the false- and the
/// true-positive counts are zero (the first and last are always kept).
pub fn roc_curve(scores: &[f64], labels: &[u8]) -> Result<Vec<RocPoint>> {
    let (n_pos, n_neg) = check(scores, labels, "roc_curve")?;
    let pts = sweep(scores, labels);
    let body = &pts[1..];
    let kept: Vec<(f64, u64, u64)> = if body.len() > 2 {
        let d2 = |a: u64, b: u64, c: u64| c as i64 - 2 * b as i64 + a as i64;
        let mut k = vec![body[0]];
        for w in body.windows(3) {
            if d2(w[0].2, w[1].2, w[2].2) != 0 || d2(w[0].1, w[1].1, w[2].1) != 0 {
                k.push(w[1]);
            }
        }
        k.push(body[body.len() - 1]);
        k
    } else {
        body.to_vec()
    };
    let (p, q) = (n_pos as f64, n_neg as f64);
    Ok(std::iter::once(pts[0])
        .chain(kept)
        .map(|(threshold, tp, fp)| RocPoint {
            fpr: fp as f64 / q,
            tpr: tp as f64 / p,
            threshold,
        })
        .collect())
}

/// Sensitivity and specificity (with Clopper-Pearson 95 % intervals) when
/// `score >= threshold` is called positive. It does not validate: a class
/// with no cases gives a NaN rate with interval (0, 1), a non-finite score is
/// compared as it is. Panics if the lengths differ.
pub fn at_threshold(scores: &[f64], labels: &[u8], threshold: f64) -> OperatingPoint {
    assert_eq!(
        scores.len(),
        labels.len(),
        "at_threshold: {} scores but {} labels",
        scores.len(),
        labels.len()
    );
    let n_pos = labels.iter().filter(|&&l| l == 1).count() as u64;
    let n_neg = labels.len() as u64 - n_pos;
    let (mut tp, mut fp) = (0u64, 0u64);
    for (s, l) in scores.iter().zip(labels) {
        if *s >= threshold {
            if *l == 1 {
                tp += 1;
            } else {
                fp += 1;
            }
        }
    }
    operating_point(threshold, tp, fp, n_pos, n_neg)
}

fn check_rate(v: f64, what: &str, who: &str) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::Eval(format!("{who}: {what} {v} is not in [0, 1]")));
    }
    Ok(())
}

/// The operating point of highest sensitivity among the thresholds whose
/// specificity is at least `min_spec` (ties: the higher specificity, i.e. the
/// higher threshold). Thresholds are the distinct scores and +inf (nothing
/// called positive, specificity 1).
pub fn sensitivity_at_specificity(
    scores: &[f64],
    labels: &[u8],
    min_spec: f64,
) -> Result<OperatingPoint> {
    let who = "sensitivity_at_specificity";
    let (n_pos, n_neg) = check(scores, labels, who)?;
    check_rate(min_spec, "min_spec", who)?;
    let (p, q) = (n_pos as u64, n_neg as u64);
    let pts = sweep(scores, labels);
    // Specificity falls as the threshold falls: the admissible points are a
    // prefix, and the +inf point (specificity 1) is always in it.
    let last = pts
        .iter()
        .rposition(|&(_, _, fp)| (q - fp) as f64 / q as f64 >= min_spec)
        .unwrap_or(0);
    let best = pts
        .iter()
        .position(|&(_, tp, _)| tp == pts[last].1)
        .unwrap_or(last);
    let (t, tp, fp) = pts[best];
    Ok(operating_point(t, tp, fp, p, q))
}

/// The operating point of highest specificity among the thresholds whose
/// sensitivity is at least `min_sens` (ties: the higher sensitivity, i.e.
/// the lower threshold). The lowest score (sensitivity 1) is always
/// admissible.
pub fn specificity_at_sensitivity(
    scores: &[f64],
    labels: &[u8],
    min_sens: f64,
) -> Result<OperatingPoint> {
    let who = "specificity_at_sensitivity";
    let (n_pos, n_neg) = check(scores, labels, who)?;
    check_rate(min_sens, "min_sens", who)?;
    let (p, q) = (n_pos as u64, n_neg as u64);
    let pts = sweep(scores, labels);
    // Sensitivity rises as the threshold falls: the admissible points are a
    // suffix, which always holds the last point (sensitivity 1).
    let first = pts
        .iter()
        .position(|&(_, tp, _)| tp as f64 / p as f64 >= min_sens)
        .unwrap_or(pts.len() - 1);
    let best = pts
        .iter()
        .rposition(|&(_, _, fp)| fp == pts[first].2)
        .unwrap_or(first);
    let (t, tp, fp) = pts[best];
    Ok(operating_point(t, tp, fp, p, q))
}

/// The threshold maximising Youden's J = sensitivity + specificity - 1 over
/// the distinct scores and +inf (ties: the highest threshold). Pick it on
/// validation data and apply it to test data with [`at_threshold`].
pub fn youden_threshold(scores: &[f64], labels: &[u8]) -> Result<f64> {
    let (n_pos, n_neg) = check(scores, labels, "youden_threshold")?;
    let (p, q) = (n_pos as f64, n_neg as f64);
    let mut best = (f64::NEG_INFINITY, f64::INFINITY);
    for (t, tp, fp) in sweep(scores, labels) {
        let j = tp as f64 / p - fp as f64 / q;
        if j > best.0 {
            best = (j, t);
        }
    }
    Ok(best.1)
}

/// The partial AUC over the sensitivity (TPR) range [`min_tpr`, 1]: the area
/// under specificity as a function of sensitivity there, by trapezoids on
/// the full ROC curve (every distinct score), interpolating linearly at
/// `min_tpr`. Not standardised: at most `1 - min_tpr`. This is pROC's
/// `auc(roc, partial.auc = c(1, min_tpr), partial.auc.focus = "sensitivity")`.
pub fn partial_auc_above_tpr(scores: &[f64], labels: &[u8], min_tpr: f64) -> Result<f64> {
    let who = "partial_auc_above_tpr";
    let (n_pos, n_neg) = check(scores, labels, who)?;
    check_rate(min_tpr, "min_tpr", who)?;
    let (p, q) = (n_pos as f64, n_neg as f64);
    // (tpr, specificity), tpr non-decreasing along the curve.
    let pts: Vec<(f64, f64)> = sweep(scores, labels)
        .into_iter()
        .map(|(_, tp, fp)| (tp as f64 / p, 1.0 - fp as f64 / q))
        .collect();
    let mut area = 0.0;
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x1 <= min_tpr || x1 == x0 {
            continue;
        }
        if x0 >= min_tpr {
            area += (x1 - x0) * (y0 + y1) / 2.0;
        } else {
            // The segment crosses min_tpr: interpolate specificity there.
            let y_at = y1 + (x1 - min_tpr) / (x1 - x0) * (y0 - y1);
            area += (x1 - min_tpr) * (y1 + y_at) / 2.0;
        }
    }
    Ok(area)
}
