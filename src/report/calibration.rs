//! Calibration in the report: per run and test set the Brier score and the
//! expected calibration error over [`BINS`] equal-width bins of the
//! predicted probability (sigmoid of the logit for linear probes and
//! fine-tuned models; k-NN scores are already vote shares in [0, 1]), the
//! reliability bins of every run, and one reliability diagram per arm and
//! set (each init at the largest fraction, first seed).

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::eval::calibration::{
    Bin, brier_score, expected_calibration_error, reliability_curve, sigmoid,
};
use crate::eval::stats;
use crate::protocol::{ArmKind, ArmResult};
use crate::report::canvas::color;
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::format::{DASH, fmt_pct, init_name};
use crate::report::headline::{fractions, ordered};
use crate::report::markdown_table;
use crate::report::sets::TestSet;
use crate::report::tables::df_err;

/// Equal-width bins on [0, 1] for the expected calibration error and the
/// reliability diagrams.
pub const BINS: usize = 10;

/// How the binning is described in the report.
pub const BINNING: &str = "10 equal-width bins of the predicted probability on [0, 1], right-closed ((0.1, 0.2], ...; the first holds 0), weighted by the cases in each bin";

/// What a run's scores mean as probabilities.
pub fn probability_of(kind: ArmKind) -> &'static str {
    match kind {
        ArmKind::Knn => "k-NN vote share",
        ArmKind::LinearProbe | ArmKind::Finetune => "sigmoid(logit)",
    }
}

/// A run's scores as probabilities.
pub fn probabilities(kind: ArmKind, scores: &[f64]) -> Vec<f64> {
    match kind {
        ArmKind::Knn => scores.to_vec(),
        ArmKind::LinearProbe | ArmKind::Finetune => scores.iter().map(|&s| sigmoid(s)).collect(),
    }
}

/// One run's calibration on one set.
#[derive(Debug, Clone)]
pub struct RunCalibration {
    pub set: usize,
    pub run: usize,
    pub brier: f64,
    pub ece: f64,
    pub bins: Vec<Bin>,
}

/// Every run's calibration on every set it was scored on.
pub fn calibrations(results: &[ArmResult], sets: &[TestSet]) -> Result<Vec<RunCalibration>> {
    let mut out = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        for (ri, (r, s)) in results.iter().zip(&set.scores).enumerate() {
            let Some(s) = s else { continue };
            let named = |e: Error| {
                Error::Report(format!(
                    "calibration, {}, run {} / {} / {} / seed {} ({}): {e}",
                    set.display(),
                    r.arm,
                    r.init,
                    r.fraction,
                    r.seed,
                    probability_of(r.kind)
                ))
            };
            let p = probabilities(r.kind, s);
            out.push(RunCalibration {
                set: si,
                run: ri,
                brier: brier_score(&p, set.labels).map_err(named)?,
                ece: expected_calibration_error(&p, set.labels, BINS).map_err(named)?,
                bins: reliability_curve(&p, set.labels, BINS).map_err(named)?,
            });
        }
    }
    Ok(out)
}

/// `calibration`: one row per run and set.
pub fn table(results: &[ArmResult], sets: &[TestSet], cal: &[RunCalibration]) -> Result<DataFrame> {
    let r = |c: &RunCalibration| &results[c.run];
    df!(
        "test_set" => cal.iter().map(|c| sets[c.set].name.clone()).collect::<Vec<_>>(),
        "arm" => cal.iter().map(|c| r(c).arm.clone()).collect::<Vec<_>>(),
        "init" => cal.iter().map(|c| r(c).init.clone()).collect::<Vec<_>>(),
        "fraction" => cal.iter().map(|c| r(c).fraction).collect::<Vec<_>>(),
        "seed" => cal.iter().map(|c| r(c).seed).collect::<Vec<_>>(),
        "probability" => cal.iter().map(|c| probability_of(r(c).kind).to_string()).collect::<Vec<_>>(),
        "n" => cal.iter().map(|c| sets[c.set].labels.len() as u64).collect::<Vec<_>>(),
        "brier" => cal.iter().map(|c| c.brier).collect::<Vec<_>>(),
        "ece" => cal.iter().map(|c| c.ece).collect::<Vec<_>>(),
        "ece_bins" => cal.iter().map(|_| BINS as u64).collect::<Vec<_>>(),
    )
    .map_err(df_err)
}

/// `reliability`: the non-empty bins of every run and set.
pub fn bins_table(
    results: &[ArmResult],
    sets: &[TestSet],
    cal: &[RunCalibration],
) -> Result<DataFrame> {
    let rows: Vec<(&RunCalibration, &Bin)> = cal
        .iter()
        .flat_map(|c| c.bins.iter().map(move |b| (c, b)))
        .collect();
    let r = |c: &RunCalibration| &results[c.run];
    df!(
        "test_set" => rows.iter().map(|(c, _)| sets[c.set].name.clone()).collect::<Vec<_>>(),
        "arm" => rows.iter().map(|(c, _)| r(c).arm.clone()).collect::<Vec<_>>(),
        "init" => rows.iter().map(|(c, _)| r(c).init.clone()).collect::<Vec<_>>(),
        "fraction" => rows.iter().map(|(c, _)| r(c).fraction).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|(c, _)| r(c).seed).collect::<Vec<_>>(),
        "bin_lo" => rows.iter().map(|(_, b)| b.lo).collect::<Vec<_>>(),
        "bin_hi" => rows.iter().map(|(_, b)| b.hi).collect::<Vec<_>>(),
        "n" => rows.iter().map(|(_, b)| b.n as u64).collect::<Vec<_>>(),
        "mean_predicted" => rows.iter().map(|(_, b)| b.mean_predicted).collect::<Vec<_>>(),
        "fraction_positive" => rows.iter().map(|(_, b)| b.fraction_positive).collect::<Vec<_>>(),
    )
    .map_err(df_err)
}

/// The calibration table as shown: one row per set, arm and fraction; per
/// init its Brier score and ECE (mean ± sd over seeds); the Markdown.
pub fn display(results: &[ArmResult], sets: &[TestSet], cal: &[RunCalibration]) -> Result<String> {
    let keys = ordered(cal.iter().map(|c| {
        let r = &results[c.run];
        (c.set, r.arm.clone(), r.fraction.to_bits())
    }));
    let inits = ordered(results.iter().map(|r| r.init.clone()));
    let of = |k: &(usize, String, u64), init: &str| -> Vec<&RunCalibration> {
        cal.iter()
            .filter(|c| {
                let r = &results[c.run];
                c.set == k.0 && r.arm == k.1 && r.fraction.to_bits() == k.2 && r.init == init
            })
            .collect()
    };
    let show = |v: Vec<f64>| match v.len() {
        0 => DASH.to_string(),
        1 => format!("{:.3}", v[0]),
        _ => {
            let (m, sd) = stats::mean_sd(&v);
            format!("{m:.3} ± {sd:.3}")
        }
    };
    let text = |name: &str, v: Vec<String>| Column::new(name.into(), v);
    let mut columns = vec![
        text(
            "test set",
            keys.iter().map(|k| sets[k.0].display()).collect(),
        ),
        text("arm", keys.iter().map(|k| k.1.clone()).collect()),
        text(
            "labels",
            keys.iter()
                .map(|k| format!("{} %", fmt_pct(f64::from_bits(k.2))))
                .collect(),
        ),
        text(
            "seeds",
            keys.iter()
                .map(|k| {
                    let n = inits.iter().map(|i| of(k, i).len()).max().unwrap_or(0);
                    n.to_string()
                })
                .collect(),
        ),
        text(
            "probability",
            keys.iter()
                .map(|k| {
                    let kind = results.iter().find(|r| r.arm == k.1).map(|r| r.kind);
                    kind.map(probability_of).unwrap_or(DASH).to_string()
                })
                .collect(),
        ),
    ];
    for init in &inits {
        let name = init_name(init);
        columns.push(text(
            &format!("{name}: Brier"),
            keys.iter()
                .map(|k| show(of(k, init).iter().map(|c| c.brier).collect()))
                .collect(),
        ));
        columns.push(text(
            &format!("{name}: ECE"),
            keys.iter()
                .map(|k| show(of(k, init).iter().map(|c| c.ece).collect()))
                .collect(),
        ));
    }
    let df = DataFrame::new_infer_height(columns).map_err(df_err)?;
    Ok(markdown_table(&df))
}

/// One reliability diagram per (set, arm): each init's bins at the largest
/// fraction and the first seed, against the diagonal of perfect
/// calibration. Returns (set, arm, chart).
pub fn diagrams(
    results: &[ArmResult],
    sets: &[TestSet],
    cal: &[RunCalibration],
) -> Vec<(usize, String, Chart)> {
    let Some(&largest) = fractions(results).last() else {
        return Vec::new();
    };
    let arms = ordered(results.iter().map(|r| r.arm.clone()));
    let mut out = Vec::new();
    for si in 0..sets.len() {
        for arm in &arms {
            let here: Vec<&RunCalibration> = cal
                .iter()
                .filter(|c| {
                    let r = &results[c.run];
                    c.set == si && &r.arm == arm && r.fraction == largest
                })
                .collect();
            let Some(first) = here.iter().map(|c| results[c.run].seed).min() else {
                continue;
            };
            let curves: Vec<Curve> = here
                .iter()
                .filter(|c| results[c.run].seed == first)
                .enumerate()
                .map(|(i, c)| {
                    let r = &results[c.run];
                    Curve {
                        label: format!("{} (ECE {:.3})", init_name(&r.init), c.ece),
                        points: c
                            .bins
                            .iter()
                            .map(|b| (b.mean_predicted, b.fraction_positive))
                            .collect(),
                        intervals: Vec::new(),
                        color: color(i),
                        dashed: r.init == "random",
                        markers: true,
                        dodge: 0.0,
                        scatter: false,
                    }
                })
                .collect();
            let chart = Chart {
                title: format!(
                    "Reliability: {arm}, {} % labels, seed {first}, {}",
                    fmt_pct(largest),
                    sets[si].display()
                ),
                x: Axis::linear("mean predicted probability (10 bins)", (0.0, 1.0)),
                y: Axis::linear("fraction positive", (0.0, 1.0)),
                curves,
                diagonal: true,
                hlines: Vec::new(),
                size: chart::SIZE,
            };
            out.push((si, arm.clone(), chart));
        }
    }
    out
}
