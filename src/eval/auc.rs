//! ROC AUC as the Mann-Whitney U statistic, ties counted half.

use crate::error::Result;

/// AUC of `scores` for binary `labels` (1 = positive): the probability that a
/// random positive scores above a random negative, ties counting one half.
/// Computed from mid-ranks in O(n log n). A set with one class, a length
/// mismatch or a non-finite score is an error.
pub fn auc(scores: &[f64], labels: &[u8]) -> Result<f64> {
    let (n_pos, n_neg) = crate::eval::stats::check(scores, labels, "auc")?;
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
