//! The test sets a report scores: the protocol's own test split and any
//! external test sets (images from elsewhere, scored by the same runs), each
//! with its labels, image ids, optional per-image metadata, and every run's
//! scores on it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::stats::{self, AucCi};
use crate::protocol::ArmResult;
use crate::report::inputs::ReportInputs;

/// The name of the protocol's own test split in tables (`test_set` column).
pub const INTERNAL: &str = "test";

pub use crate::report::inputs::{ExternalSet, Meta};

/// Every run's scores on the external sets, by set name, in each set's
/// image order. [`crate::report::protocol::write_with_external`] asks for
/// them run by run.
pub type ExternalScores = BTreeMap<String, Vec<f64>>;

/// One test set with every run's scores on it.
#[derive(Debug, Clone)]
pub struct TestSet<'a> {
    /// `test` for the internal split, else the external set's name.
    pub name: String,
    pub labels: &'a [u8],
    pub ids: &'a [String],
    /// Empty when there is no metadata.
    pub meta: &'a [Meta],
    pub duplicates_dropped: &'a [(String, String)],
    /// Per run (in `results` order): its scores, `None` when it was not
    /// scored on this set.
    pub scores: Vec<Option<&'a [f64]>>,
}

impl TestSet<'_> {
    pub fn is_internal(&self) -> bool {
        self.name == INTERNAL
    }

    /// How the set is named in headings.
    pub fn display(&self) -> String {
        if self.is_internal() {
            "internal test".into()
        } else {
            format!("external: {}", self.name)
        }
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&y| y == 1).count()
    }
}

fn check_meta(meta: &[Meta], n: usize, what: &str) -> Result<()> {
    if !meta.is_empty() && meta.len() != n {
        return Err(Error::Report(format!(
            "{what}: {} metadata rows for {n} images",
            meta.len()
        )));
    }
    Ok(())
}

/// The internal test split and the external sets, checked: lengths agree,
/// names are unique and not `test`, and each run's scores (where present)
/// have one value per image.
pub fn test_sets<'a>(
    results: &'a [ArmResult],
    ctx: &'a ReportInputs,
    external: &'a [ExternalScores],
) -> Result<Vec<TestSet<'a>>> {
    let n = ctx.test_labels.len();
    if !ctx.test_ids.is_empty() && ctx.test_ids.len() != n {
        return Err(Error::Report(format!(
            "test split: {} ids for {n} labels",
            ctx.test_ids.len()
        )));
    }
    check_meta(&ctx.test_meta, n, "test split (test_meta)")?;
    for r in results {
        if r.test_scores.len() != n {
            return Err(Error::Report(format!(
                "run {} / {} / {} / seed {}: {} test scores for {n} test images",
                r.arm,
                r.init,
                r.fraction,
                r.seed,
                r.test_scores.len()
            )));
        }
    }
    let mut sets = vec![TestSet {
        name: INTERNAL.into(),
        labels: &ctx.test_labels,
        ids: &ctx.test_ids,
        meta: &ctx.test_meta,
        duplicates_dropped: &[],
        scores: results.iter().map(|r| Some(&r.test_scores[..])).collect(),
    }];
    for (k, e) in ctx.external.iter().enumerate() {
        let what = format!("external test set {:?}", e.name);
        if e.name.trim().is_empty() || e.name == INTERNAL {
            return Err(Error::Report(format!(
                "external test set {k}: the name {:?} is empty or taken by the internal test split",
                e.name
            )));
        }
        if ctx.external[..k].iter().any(|o| o.name == e.name) {
            return Err(Error::Report(format!("{what}: named twice")));
        }
        if e.ids.len() != e.labels.len() {
            return Err(Error::Report(format!(
                "{what}: {} ids for {} labels",
                e.ids.len(),
                e.labels.len()
            )));
        }
        check_meta(&e.meta, e.labels.len(), &what)?;
        let mut scores = Vec::with_capacity(results.len());
        for (i, r) in results.iter().enumerate() {
            let s = external.get(i).and_then(|m| m.get(&e.name));
            if let Some(s) = s
                && s.len() != e.labels.len()
            {
                return Err(Error::Report(format!(
                    "{what}: run {} / {} / {} / seed {} has {} scores for {} images",
                    r.arm,
                    r.init,
                    r.fraction,
                    r.seed,
                    s.len(),
                    e.labels.len()
                )));
            }
            scores.push(s.map(|v| &v[..]));
        }
        sets.push(TestSet {
            name: e.name.clone(),
            labels: &e.labels,
            ids: &e.ids,
            meta: &e.meta,
            duplicates_dropped: &e.duplicates_dropped,
            scores,
        });
    }
    Ok(sets)
}

/// A run's AUC on one test set with its DeLong and bootstrap intervals.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SetAuc {
    pub delong: AucCi,
    pub bootstrap: AucCi,
}

/// Every run's AUC on every set (`[set][run]`; `None`: not scored there).
/// The bootstrap is seeded with the run's seed.
pub fn set_aucs(
    sets: &[TestSet],
    results: &[ArmResult],
    resamples: usize,
) -> Result<Vec<Vec<Option<SetAuc>>>> {
    sets.iter()
        .map(|set| {
            results
                .iter()
                .zip(&set.scores)
                .map(|(r, s)| {
                    let Some(s) = s else { return Ok(None) };
                    let named = |e: Error| {
                        Error::Report(format!(
                            "{}, run {} / {} / {} / seed {}: {e}",
                            set.display(),
                            r.arm,
                            r.init,
                            r.fraction,
                            r.seed
                        ))
                    };
                    Ok(Some(SetAuc {
                        delong: stats::delong_ci(s, set.labels).map_err(named)?,
                        bootstrap: stats::bootstrap_ci(s, set.labels, resamples, r.seed)
                            .map_err(named)?,
                    }))
                })
                .collect()
        })
        .collect()
}
