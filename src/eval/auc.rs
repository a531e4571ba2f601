//! ROC AUC as the Mann-Whitney U statistic, ties counted half.

use crate::error::{Error, Result};

/// AUC of `scores` for binary `labels` (1 = positive): the probability that a
/// random positive scores above a random negative, ties counting one half.
/// Computed from mid-ranks in O(n log n). A set with one class, a length
/// mismatch or a non-finite score is an error.
pub fn auc(scores: &[f64], labels: &[u8]) -> Result<f64> {
    let (n_pos, n_neg) = check(scores, labels, "auc")?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0; // 1-based mid-rank
        for &k in &order[i..=j] {
            if labels[k] == 1 {
                rank_sum_pos += mid;
            }
        }
        i = j + 1;
    }
    let (p, q) = (n_pos as f64, n_neg as f64);
    Ok((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q))
}

/// Checks lengths, finiteness and that both classes are present; returns the
/// number of positives and negatives. `who` names the caller in the message.
pub(crate) fn check(scores: &[f64], labels: &[u8], who: &str) -> Result<(usize, usize)> {
    if scores.len() != labels.len() {
        return Err(Error::Eval(format!(
            "{who}: {} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::Eval(format!(
            "{who}: score {i} is not finite ({})",
            scores[i]
        )));
    }
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::Eval(format!(
            "{who}: needs both classes, got {n_pos} positives and {n_neg} negatives"
        )));
    }
    Ok((n_pos, n_neg))
}
