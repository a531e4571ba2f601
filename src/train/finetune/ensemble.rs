//! A fine-tuning ensemble (`finetune.ensemble = N`): N runs from the same
//! init on the same data, member `k` seeded by [`member_seed`] and
//! checkpointed in its own folder, each selecting its epoch on validation;
//! the scored logits are the members' mean.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FinetuneResult, Labeled, Splits};
use crate::config::Config;
use crate::error::Result;
use crate::eval::auc;

/// One member of a fine-tuning ensemble.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Its seed (the run's seed for the first member).
    pub seed: u64,
    pub best_epoch: usize,
    pub val_auc: f64,
    /// NaN when the test split was not scored.
    pub test_auc: f64,
    /// Its own validation and test logits (for comparing the ensemble
    /// with a single run on the same images).
    #[serde(default)]
    pub val_scores: Vec<f64>,
    #[serde(default)]
    pub test_scores: Vec<f64>,
}

impl FinetuneResult {
    /// "selected epoch E of N", or for an ensemble each member's.
    pub fn selection_summary(&self) -> String {
        let n = self.val_curve.len();
        if self.members.is_empty() {
            return format!("selected epoch {} of {n}", self.best_epoch);
        }
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| m.best_epoch.to_string())
            .collect();
        format!(
            "ensemble of {}: selected epochs {} of {n}",
            self.members.len(),
            eps.join(", ")
        )
    }
}

/// The seed of ensemble member `k` of a run seeded `seed` (the first
/// member's is the run's own: a one-member ensemble is the plain run).
pub fn member_seed(seed: u64, k: usize) -> u64 {
    use rand::RngCore;
    if k == 0 {
        seed
    } else {
        crate::rng::stream(seed, "finetune-ensemble", k as u64, 0).next_u64()
    }
}

/// The `finetune.ensemble` runs of an ensemble (see [`super::finetune`]).
pub(super) fn run(
    cfg: &Config,
    init: &super::Init,
    data: Splits,
    seed: u64,
    ckpt: Option<(&Path, &str)>,
) -> Result<FinetuneResult> {
    let members = cfg.finetune.ensemble;
    let mut runs: Vec<FinetuneResult> = Vec::with_capacity(members);
    for k in 0..members {
        // Member k's state in `folder/member-K` (K 1-based) under its own
        // identity: an interrupted ensemble resumes at its member.
        let dir = ckpt.map(|(d, id)| {
            (
                d.join(format!("member-{}", k + 1)),
                format!("{id}/member-{}", k + 1),
            )
        });
        let r = super::finetune_one(
            cfg,
            init,
            data,
            member_seed(seed, k),
            dir.as_ref().map(|(d, id)| (d.as_path(), id.as_str())),
        )?;
        tracing::info!(
            "ensemble member {} of {members}: val AUC {:.4} at epoch {}",
            k + 1,
            r.val_auc,
            r.best_epoch
        );
        runs.push(r);
    }
    ensemble_of(runs, seed, data.val, data.test)
}

/// The members' mean logits, scored; the first member's selection, curve,
/// losses and model.
fn ensemble_of(
    runs: Vec<FinetuneResult>,
    seed: u64,
    val: &Labeled,
    test: Option<&Labeled>,
) -> Result<FinetuneResult> {
    let n = runs.len() as f64;
    let mean = |get: &dyn Fn(&FinetuneResult) -> &Vec<f64>| -> Vec<f64> {
        let mut out = vec![0f64; get(&runs[0]).len()];
        for r in &runs {
            for (o, v) in out.iter_mut().zip(get(r)) {
                *o += v / n;
            }
        }
        out
    };
    let val_scores = mean(&|r| &r.val_scores);
    let test_scores = mean(&|r| &r.test_scores);
    let external_scores = (0..runs[0].external_scores.len())
        .map(|e| mean(&|r| &r.external_scores[e]))
        .collect();
    let val_auc = auc(&val_scores, &val.labels)?;
    let test_auc = match test {
        Some(t) => auc(&test_scores, &t.labels)?,
        None => f64::NAN,
    };
    let members = runs
        .iter()
        .enumerate()
        .map(|(k, r)| Member {
            seed: member_seed(seed, k),
            best_epoch: r.best_epoch,
            val_auc: r.val_auc,
            test_auc: r.test_auc,
            val_scores: r.val_scores.clone(),
            test_scores: r.test_scores.clone(),
        })
        .collect();
    let first = runs.into_iter().next().expect("an ensemble has members");
    Ok(FinetuneResult {
        val_auc,
        test_auc,
        test_scores,
        val_scores,
        external_scores,
        members,
        ..first
    })
}
