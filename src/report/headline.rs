//! The answer a report opens with: each arm's test AUC against the fraction
//! of labels per init (label efficiency), the paired differences pretrained
//! − random init per arm and fraction (forest plot), and the compact table
//! of the same, for the internal test split and each external test set.
//!
//! One seed: AUCs with their DeLong 95 % intervals, differences with the
//! paired DeLong interval and p. Several seeds: means over seeds with
//! Student's t 95 % intervals over seeds (the variation between training
//! runs on this test set), and the one-sample t-test of the per-seed
//! differences; the per-seed DeLong tests are in `paired.csv`.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::stats::{self, PairedTest};
use crate::protocol::ArmResult;
use crate::report::format::{fmt_pct, init_name};
use crate::report::seeds::over_seeds;
use crate::report::sets::{SetAuc, TestSet};

/// A pretrained init (PIRL, or weights from a file) vs. random init on the
/// same test images, for one arm, fraction and seed, on one test set.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub arm: String,
    /// The init compared with `random`.
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub delong: PairedTest,
    pub boot_diff: (f64, f64, f64),
    /// `test` or the external set's name.
    pub test_set: String,
}

/// The paired tests of every pretrained run with its random-init twin (same
/// arm, fraction and seed) on every set both were scored on. The bootstrap
/// is seeded with the run's seed.
pub fn paired_tests(
    results: &[ArmResult],
    sets: &[TestSet],
    resamples: usize,
) -> Result<Vec<Paired>> {
    let mut out = Vec::new();
    for set in sets {
        for (i, a) in results.iter().enumerate() {
            if a.init == "random" {
                continue;
            }
            let twin = results.iter().enumerate().find(|(_, b)| {
                b.init == "random" && b.arm == a.arm && b.fraction == a.fraction && b.seed == a.seed
            });
            let Some((j, _)) = twin else { continue };
            let (Some(sa), Some(sb)) = (set.scores[i], set.scores[j]) else {
                continue;
            };
            let named = |e: Error| {
                Error::Report(format!(
                    "{}, {} / {} vs random / {} / seed {}: {e}",
                    set.display(),
                    a.arm,
                    a.init,
                    a.fraction,
                    a.seed
                ))
            };
            out.push(Paired {
                arm: a.arm.clone(),
                init: a.init.clone(),
                fraction: a.fraction,
                seed: a.seed,
                delong: stats::delong_paired(sa, sb, set.labels).map_err(named)?,
                boot_diff: stats::bootstrap_paired(sa, sb, set.labels, resamples, a.seed)
                    .map_err(named)?,
                test_set: set.name.clone(),
            });
        }
    }
    Ok(out)
}

/// An AUC over the seeds of one (arm, init, fraction) on one set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AucEstimate {
    pub seeds: usize,
    pub mean: f64,
    /// 0 for one seed.
    pub sd: f64,
    /// One seed: the DeLong interval; several: the t interval over seeds.
    pub lo: f64,
    pub hi: f64,
}

/// A pretrained init against random init for one arm and fraction on one
/// set, over the seeds both have.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub seeds: usize,
    pub init_auc: AucEstimate,
    pub random_auc: AucEstimate,
    /// Mean of the per-seed differences, and its 95 % interval.
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
    pub p: f64,
    /// `paired DeLong` (one seed) or `t-test over N seeds`.
    pub method: String,
}

/// One row of the headline table: an (arm, fraction) on one set, for one
/// pretrained init (or none, when the arm has only random init).
#[derive(Debug, Clone)]
pub struct HeadRow {
    pub set: usize,
    pub arm: String,
    pub fraction: f64,
    pub init: Option<String>,
    pub init_auc: Option<AucEstimate>,
    pub random_auc: Option<AucEstimate>,
    pub comparison: Option<Comparison>,
}

/// Distinct values in order of first appearance.
pub fn ordered<T: PartialEq + Clone>(v: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The label fractions, ascending.
pub fn fractions(results: &[ArmResult]) -> Vec<f64> {
    let mut f = ordered(results.iter().map(|r| r.fraction));
    f.sort_by(f64::total_cmp);
    f
}

/// The AUC of (arm, init, fraction) on a set over its seeds (only `seeds`
/// when given); `None` when no such run was scored there.
pub fn estimate(
    results: &[ArmResult],
    aucs: &[Option<SetAuc>],
    (arm, init, fraction): (&str, &str, f64),
    seeds: Option<&[u64]>,
) -> Option<AucEstimate> {
    let runs: Vec<&SetAuc> = results
        .iter()
        .zip(aucs)
        .filter(|(r, _)| r.arm == arm && r.init == init && r.fraction == fraction)
        .filter(|(r, _)| seeds.is_none_or(|s| s.contains(&r.seed)))
        .filter_map(|(_, a)| a.as_ref())
        .collect();
    match runs[..] {
        [] => None,
        [one] => Some(AucEstimate {
            seeds: 1,
            mean: one.delong.auc,
            sd: 0.0,
            lo: one.delong.lo,
            hi: one.delong.hi,
        }),
        // A seed-independent arm (the probe or k-NN on all the labels): the
        // same run under every seed; an interval over seeds would be a point.
        [first, ..] if runs.iter().all(|a| same_auc(&a.delong, &first.delong)) => {
            Some(AucEstimate {
                seeds: runs.len(),
                mean: first.delong.auc,
                sd: 0.0,
                lo: first.delong.lo,
                hi: first.delong.hi,
            })
        }
        _ => {
            let v: Vec<f64> = runs.iter().map(|a| a.delong.auc).collect();
            let o = over_seeds(&v);
            Some(AucEstimate {
                seeds: o.n,
                mean: o.mean,
                sd: o.sd,
                lo: o.lo.max(0.0),
                hi: o.hi.min(1.0),
            })
        }
    }
}

/// Whether two DeLong estimates are of the same scoring (bit-equal).
fn same_auc(a: &stats::AucCi, b: &stats::AucCi) -> bool {
    a.auc.to_bits() == b.auc.to_bits() && a.se.to_bits() == b.se.to_bits()
}

/// Whether two paired DeLong tests are of the same pair of scorings.
fn same_test(a: &PairedTest, b: &PairedTest) -> bool {
    [a.auc_a, a.auc_b, a.se]
        .iter()
        .zip([b.auc_a, b.auc_b, b.se])
        .all(|(x, y)| x.to_bits() == y.to_bits())
}

fn compare(
    results: &[ArmResult],
    aucs: &[Option<SetAuc>],
    ps: &[&Paired],
    (arm, init, fraction): (&str, &str, f64),
) -> Option<Comparison> {
    let seeds: Vec<u64> = ps.iter().map(|p| p.seed).collect();
    let init_auc = estimate(results, aucs, (arm, init, fraction), Some(&seeds))?;
    let random_auc = estimate(results, aucs, (arm, "random", fraction), Some(&seeds))?;
    let (diff, lo, hi, p, method) = match ps {
        [] => return None,
        [one] => (
            one.delong.diff,
            one.delong.lo,
            one.delong.hi,
            one.delong.p,
            "paired DeLong".to_string(),
        ),
        // The same run under every seed (see `estimate`): its own paired
        // DeLong test, not a t-test over identical differences (sd 0, which
        // would print p < 0.0001 for a difference of 0.001).
        [first, ..] if ps.iter().all(|p| same_test(&p.delong, &first.delong)) => (
            first.delong.diff,
            first.delong.lo,
            first.delong.hi,
            first.delong.p,
            format!("paired DeLong (the {} seeds give one run)", ps.len()),
        ),
        _ => {
            let d: Vec<f64> = ps.iter().map(|p| p.delong.diff).collect();
            let o = over_seeds(&d);
            (
                o.mean,
                o.lo,
                o.hi,
                o.p,
                format!("t-test over {} seeds", o.n),
            )
        }
    };
    Some(Comparison {
        seeds: ps.len(),
        init_auc,
        random_auc,
        diff,
        lo,
        hi,
        p,
        method,
    })
}

/// The headline table: per set, arm (protocol order), fraction (ascending)
/// and pretrained init, the AUCs of both inits and their comparison.
pub fn rows(
    results: &[ArmResult],
    sets: &[TestSet],
    aucs: &[Vec<Option<SetAuc>>],
    paired: &[Paired],
) -> Vec<HeadRow> {
    let arms = ordered(results.iter().map(|r| r.arm.clone()));
    let mut out = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        for arm in &arms {
            for &fraction in &fractions(results) {
                let here: Vec<&ArmResult> = results
                    .iter()
                    .filter(|r| &r.arm == arm && r.fraction == fraction)
                    .collect();
                if here.is_empty() {
                    continue;
                }
                let random = estimate(results, &aucs[si], (arm, "random", fraction), None);
                let inits = ordered(
                    here.iter()
                        .filter(|r| r.init != "random")
                        .map(|r| r.init.clone()),
                );
                if inits.is_empty() {
                    out.push(HeadRow {
                        set: si,
                        arm: arm.clone(),
                        fraction,
                        init: None,
                        init_auc: None,
                        random_auc: random,
                        comparison: None,
                    });
                }
                for init in inits {
                    let ps: Vec<&Paired> = paired
                        .iter()
                        .filter(|p| {
                            p.test_set == set.name
                                && &p.arm == arm
                                && p.init == init
                                && p.fraction == fraction
                        })
                        .collect();
                    out.push(HeadRow {
                        set: si,
                        arm: arm.clone(),
                        fraction,
                        init_auc: estimate(results, &aucs[si], (arm, &init, fraction), None),
                        random_auc: random,
                        comparison: compare(results, &aucs[si], &ps, (arm, &init, fraction)),
                        init: Some(init),
                    });
                }
            }
        }
    }
    out
}

/// One line per (arm, pretrained init, fraction) on the internal test split
/// that has a random-init twin: test AUC with its DeLong CI (one seed) or
/// mean ± sd (several), and the paired DeLong p of each seed.
pub fn lines(results: &[ArmResult], internal: &[Option<SetAuc>], paired: &[Paired]) -> Vec<String> {
    let mut keys: Vec<(String, String, f64)> = Vec::new();
    for p in paired
        .iter()
        .filter(|p| p.test_set == crate::report::sets::INTERNAL)
    {
        let k = (p.arm.clone(), p.init.clone(), p.fraction);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)).then(a.2.total_cmp(&b.2)));
    let show = |arm: &str, init: &str, fraction: f64| -> String {
        match estimate(results, internal, (arm, init, fraction), None) {
            Some(e) if e.seeds == 1 => format!("{:.3} [{:.3}, {:.3}]", e.mean, e.lo, e.hi),
            Some(e) => format!("{:.3} ± {:.3} ({} seeds)", e.mean, e.sd, e.seeds),
            None => crate::report::format::DASH.into(),
        }
    };
    keys.iter()
        .map(|(arm, init, fraction)| {
            let p: Vec<f64> = paired
                .iter()
                .filter(|p| {
                    p.test_set == crate::report::sets::INTERNAL
                        && &p.arm == arm
                        && &p.init == init
                        && p.fraction == *fraction
                })
                .map(|p| p.delong.p)
                .collect();
            // One seed: "p = 0.014" or "p < 0.0001"; several: "p = a, b, c".
            let p = match p.as_slice() {
                [one] => crate::report::format::p_text(*one),
                many => format!(
                    "= {}",
                    many.iter()
                        .map(|&v| crate::report::format::format_p(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!(
                "{arm}, {} % labels: {} {} vs random init {}, paired DeLong p {p}",
                fmt_pct(*fraction),
                init_name(init),
                show(arm, init, *fraction),
                show(arm, "random", *fraction),
            )
        })
        .collect()
}
