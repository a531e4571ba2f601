//! Choosing the linear probe's view and penalty: stratified folds for the
//! cross-validation on the training rows, and the tuning check that compares
//! that rule with choosing on a 150-image validation split.

use serde::Serialize;

use crate::error::Result;
use crate::eval::auc;

/// One penalty's fit on the training rows: its validation scores and its
/// cross-validated AUC (when run).
#[derive(Debug, Clone)]
pub(crate) struct GridFit {
    pub(crate) cv_auc: Option<f64>,
    pub(crate) val_scores: Vec<f64>,
}

/// Stratified folds: within each class, the rows in index order go to folds
/// 0, 1, ..., k - 1 in turn (deterministic, no seed).
pub fn stratified_folds(y: &[u8], k: usize) -> Vec<usize> {
    let mut next = [0usize; 256];
    y.iter()
        .map(|&l| {
            let f = next[l as usize] % k;
            next[l as usize] += 1;
            f
        })
        .collect()
}

/// Draws of [`selection_check`].
pub const SELECTION_CHECK_DRAWS: usize = 500;

/// How the two selection rules fare while tuning (no test split): in each of
/// `draws` draws, a stratified subset of the validation images of the size
/// of ISIC 2017's official validation split (150 images, 30 positive; at
/// most half of each class) picks the (view, penalty) of the best AUC on it,
/// as `selection = "val"` would; the rest of the validation images score
/// that choice and the one fixed choice of the cross-validation on the
/// training rows (`selection = "cv"`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SelectionCheck {
    pub draws: usize,
    pub select_n: usize,
    pub select_pos: usize,
    pub held_out_n: usize,
    /// Mean held-out AUC of the validation rule's choices.
    pub val_rule_auc: f64,
    /// Mean held-out AUC of the cross-validation's choice.
    pub cv_rule_auc: f64,
    /// Mean of (cross-validation − validation rule) over the draws, and its
    /// 2.5th and 97.5th percentiles.
    pub mean_gain: f64,
    pub gain_p2_5: f64,
    pub gain_p97_5: f64,
    /// Share of the draws in which the cross-validation's choice scores at
    /// least as well.
    pub cv_at_least_as_good: f64,
}

/// [`SelectionCheck`] over every (view, penalty) fit of `grid`, in the
/// order the rules walk them; `None` when a class has fewer than 4
/// validation images. Deterministic (its own fixed stream).
pub(crate) fn selection_check(
    grid: &[GridFit],
    yval: &[u8],
    draws: usize,
) -> Result<Option<SelectionCheck>> {
    let pos: Vec<usize> = (0..yval.len()).filter(|&i| yval[i] == 1).collect();
    let neg: Vec<usize> = (0..yval.len()).filter(|&i| yval[i] == 0).collect();
    if pos.len() < 4 || neg.len() < 4 || grid.is_empty() {
        return Ok(None);
    }
    let (np, nn) = ((pos.len() / 2).min(30), (neg.len() / 2).min(120));
    // The cross-validation's choice: the first of the best out-of-fold AUC.
    let mut cv_pick = 0;
    for (i, g) in grid.iter().enumerate() {
        if g.cv_auc.expect("checked") > grid[cv_pick].cv_auc.expect("checked") {
            cv_pick = i;
        }
    }
    let sub_auc = |g: &GridFit, rows: &[usize]| -> Result<f64> {
        let s: Vec<f64> = rows.iter().map(|&i| g.val_scores[i]).collect();
        let y: Vec<u8> = rows.iter().map(|&i| yval[i]).collect();
        auc(&s, &y)
    };
    let mut rng = crate::rng::stream(0, "probe-selection-check", 0, 0);
    let (mut vsum, mut csum, mut wins) = (0.0, 0.0, 0usize);
    let mut gains = Vec::with_capacity(draws);
    let mut held_n = 0;
    for _ in 0..draws {
        let (mut p, mut n) = (pos.clone(), neg.clone());
        crate::rng::shuffle(&mut p, &mut rng);
        crate::rng::shuffle(&mut n, &mut rng);
        let choose: Vec<usize> = p[..np].iter().chain(&n[..nn]).copied().collect();
        let held: Vec<usize> = p[np..].iter().chain(&n[nn..]).copied().collect();
        held_n = held.len();
        let mut vpick = 0;
        let mut vbest = f64::NEG_INFINITY;
        for (i, g) in grid.iter().enumerate() {
            let a = sub_auc(g, &choose)?;
            if a > vbest {
                (vpick, vbest) = (i, a);
            }
        }
        let v = sub_auc(&grid[vpick], &held)?;
        let c = sub_auc(&grid[cv_pick], &held)?;
        vsum += v;
        csum += c;
        wins += usize::from(c >= v);
        gains.push(c - v);
    }
    gains.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| gains[((f * (draws - 1) as f64).round() as usize).min(draws - 1)];
    let d = draws as f64;
    Ok(Some(SelectionCheck {
        draws,
        select_n: np + nn,
        select_pos: np,
        held_out_n: held_n,
        val_rule_auc: vsum / d,
        cv_rule_auc: csum / d,
        mean_gain: (csum - vsum) / d,
        gain_p2_5: q(0.025),
        gain_p97_5: q(0.975),
        cv_at_least_as_good: wins as f64 / d,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grid of two fits: one that ranks every validation image right
    /// (AUC 1 on any subset) and one of hashed noise.
    fn grid(cv_prefers_perfect: bool, y: &[u8]) -> Vec<GridFit> {
        let perfect: Vec<f64> = y.iter().map(|&l| l as f64).collect();
        let noise: Vec<f64> = (0..y.len()).map(|i| ((i * 7919) % 101) as f64).collect();
        let (a, b) = if cv_prefers_perfect {
            (0.9, 0.5)
        } else {
            (0.5, 0.9)
        };
        vec![
            GridFit {
                cv_auc: Some(a),
                val_scores: perfect,
            },
            GridFit {
                cv_auc: Some(b),
                val_scores: noise,
            },
        ]
    }

    #[test]
    fn the_selection_check_scores_each_rule_on_held_out_images() {
        let y: Vec<u8> = (0..200).map(|i| (i % 4 == 0) as u8).collect();
        // Both rules take the perfect fit: no difference in any draw.
        let same = selection_check(&grid(true, &y), &y, 50).unwrap().unwrap();
        assert_eq!(
            (same.select_pos, same.select_n, same.held_out_n),
            (25, 100, 100)
        );
        assert_eq!(
            (same.val_rule_auc, same.cv_rule_auc, same.mean_gain),
            (1.0, 1.0, 0.0)
        );
        assert_eq!(same.cv_at_least_as_good, 1.0);
        // Cross-validation prefers the noise: it loses in every draw, by the
        // noise's held-out AUC below 1.
        let worse = selection_check(&grid(false, &y), &y, 50).unwrap().unwrap();
        assert_eq!(worse.val_rule_auc, 1.0);
        assert!(worse.cv_rule_auc < 0.7, "{worse:?}");
        assert!(
            worse.gain_p97_5 < 0.0 && worse.cv_at_least_as_good == 0.0,
            "{worse:?}"
        );
        // Too few positives to split: no check.
        let few: Vec<u8> = (0..50).map(|i| (i < 3) as u8).collect();
        assert!(
            selection_check(&grid(true, &few), &few, 10)
                .unwrap()
                .is_none()
        );
    }
}
