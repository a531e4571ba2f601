//! The report's tables, each written as CSV, Parquet and Markdown through
//! polars ([`write_frame`]): every run on the internal test split
//! (`runs`), on the external sets (`external_runs`), the paired tests
//! (`paired`), the summary over seeds (`summary`), the headline
//! comparisons (`headline`), the external sets' dropped duplicates; and
//! `test_scores.csv` for re-analysis elsewhere.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::eval::stats;
use crate::io::write_atomic;
use crate::protocol::ArmResult;
use crate::report::format::{DASH, fmt_ci, fmt_pct, fmt_signed, format_p, init_name};
use crate::report::headline::{AucEstimate, HeadRow, Paired};
use crate::report::inputs::ReportInputs;
use crate::report::markdown_table;
use crate::report::run_stats::RowStats;
use crate::report::sets::{SetAuc, TestSet};

pub fn df_err(e: PolarsError) -> Error {
    Error::Report(e.to_string())
}

/// Writes `{stem}.csv`, `{stem}.parquet` and `{stem}.md`; returns the Markdown.
pub fn write_frame(dir: &Path, stem: &str, df: &mut DataFrame) -> Result<String> {
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv).finish(df).map_err(df_err)?;
    write_atomic(&dir.join(format!("{stem}.csv")), &csv)?;
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet)
        .finish(df)
        .map_err(df_err)?;
    write_atomic(&dir.join(format!("{stem}.parquet")), &parquet)?;
    let md = markdown_table(df);
    write_atomic(&dir.join(format!("{stem}.md")), md.as_bytes())?;
    Ok(md)
}

fn strings<T>(v: &[T], f: impl Fn(&T) -> String) -> Vec<String> {
    v.iter().map(f).collect()
}

/// One row per run on the internal test split.
pub fn runs(results: &[ArmResult], stats: &[RowStats]) -> Result<DataFrame> {
    let f = |g: fn(&ArmResult, &RowStats) -> f64| {
        results
            .iter()
            .zip(stats)
            .map(|(r, s)| g(r, s))
            .collect::<Vec<f64>>()
    };
    df!(
        "arm" => strings(results, |r| r.arm.clone()),
        "init" => strings(results, |r| r.init.clone()),
        "fraction" => results.iter().map(|r| r.fraction).collect::<Vec<_>>(),
        "seed" => results.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "n_train" => results.iter().map(|r| r.n_train as u64).collect::<Vec<_>>(),
        "n_train_pos" => results.iter().map(|r| r.n_train_pos as u64).collect::<Vec<_>>(),
        "val_auc" => f(|r, _| r.val_auc),
        "test_auc" => f(|r, _| r.test_auc),
        "delong_lo" => f(|_, s| s.delong.lo),
        "delong_hi" => f(|_, s| s.delong.hi),
        "boot_lo" => f(|_, s| s.bootstrap.lo),
        "boot_hi" => f(|_, s| s.bootstrap.hi),
        "sens_at_spec90" => f(|_, s| s.sens_at_spec90),
        "sens_at_spec95" => f(|_, s| s.sens_at_spec95),
        "spec_at_sens90" => f(|_, s| s.spec_at_sens90),
        "spec_at_sens95" => f(|_, s| s.spec_at_sens95),
        "youden_sens" => f(|_, s| s.youden.sensitivity),
        "youden_spec" => f(|_, s| s.youden.specificity),
        "youden_bacc" => f(|_, s| s.youden.balanced_accuracy),
        "pauc_tpr80" => f(|_, s| s.pauc_tpr80),
        "detail" => strings(results, |r| r.detail.clone()),
    )
    .map_err(df_err)
}

/// One row per run and external set it was scored on: AUC with DeLong and
/// bootstrap intervals. `None` when there are no external sets.
pub fn external_runs(
    results: &[ArmResult],
    sets: &[TestSet],
    aucs: &[Vec<Option<SetAuc>>],
) -> Result<Option<DataFrame>> {
    if sets.len() < 2 {
        return Ok(None);
    }
    let mut rows: Vec<(&TestSet, &ArmResult, &SetAuc)> = Vec::new();
    for (set, a) in sets.iter().zip(aucs).filter(|(s, _)| !s.is_internal()) {
        for (r, x) in results.iter().zip(a) {
            if let Some(x) = x {
                rows.push((set, r, x));
            }
        }
    }
    let f = |g: fn(&SetAuc) -> f64| rows.iter().map(|x| g(x.2)).collect::<Vec<f64>>();
    df!(
        "test_set" => strings(&rows, |x| x.0.name.clone()),
        "arm" => strings(&rows, |x| x.1.arm.clone()),
        "init" => strings(&rows, |x| x.1.init.clone()),
        "fraction" => rows.iter().map(|x| x.1.fraction).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|x| x.1.seed).collect::<Vec<_>>(),
        "n" => rows.iter().map(|x| x.0.labels.len() as u64).collect::<Vec<_>>(),
        "n_pos" => rows.iter().map(|x| x.0.positives() as u64).collect::<Vec<_>>(),
        "auc" => f(|a| a.delong.auc),
        "delong_lo" => f(|a| a.delong.lo),
        "delong_hi" => f(|a| a.delong.hi),
        "boot_lo" => f(|a| a.bootstrap.lo),
        "boot_hi" => f(|a| a.bootstrap.hi),
    )
    .map(Some)
    .map_err(df_err)
}

/// The paired tests, one row per (arm, init, fraction, seed, set).
pub fn paired(paired: &[Paired]) -> Result<DataFrame> {
    let pf = |g: fn(&Paired) -> f64| paired.iter().map(g).collect::<Vec<f64>>();
    df!(
        "arm" => strings(paired, |p| p.arm.clone()),
        "init" => strings(paired, |p| p.init.clone()),
        "fraction" => pf(|p| p.fraction),
        "seed" => paired.iter().map(|p| p.seed).collect::<Vec<_>>(),
        "auc_init" => pf(|p| p.delong.auc_a),
        "auc_random" => pf(|p| p.delong.auc_b),
        "diff" => pf(|p| p.delong.diff),
        "delong_lo" => pf(|p| p.delong.lo),
        "delong_hi" => pf(|p| p.delong.hi),
        "delong_p" => pf(|p| p.delong.p),
        "boot_lo" => pf(|p| p.boot_diff.1),
        "boot_hi" => pf(|p| p.boot_diff.2),
        "test_set" => strings(paired, |p| p.test_set.clone()),
    )
    .map_err(df_err)
}

/// Test AUC over seeds per (arm, init, fraction) on the internal test split:
/// mean, sd and the mean of the per-seed DeLong bounds.
pub fn summary(results: &[ArmResult], stats: &[RowStats]) -> Result<DataFrame> {
    let mut keys: Vec<(String, String, f64)> = Vec::new();
    for r in results {
        let k = (r.arm.clone(), r.init.clone(), r.fraction);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)).then(a.2.total_cmp(&b.2)));
    let mut cols: (Vec<u64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) = Default::default();
    for (arm, init, fraction) in &keys {
        let idx: Vec<usize> = (0..results.len())
            .filter(|&i| {
                let r = &results[i];
                &r.arm == arm && &r.init == init && r.fraction == *fraction
            })
            .collect();
        let aucs: Vec<f64> = idx.iter().map(|&i| results[i].test_auc).collect();
        let (m, sd) = stats::mean_sd(&aucs);
        let k = idx.len() as f64;
        cols.0.push(idx.len() as u64);
        cols.1.push(m);
        cols.2.push(sd);
        cols.3
            .push(idx.iter().map(|&i| stats[i].delong.lo).sum::<f64>() / k);
        cols.4
            .push(idx.iter().map(|&i| stats[i].delong.hi).sum::<f64>() / k);
    }
    df!(
        "arm" => strings(&keys, |k| k.0.clone()),
        "init" => strings(&keys, |k| k.1.clone()),
        "fraction" => keys.iter().map(|k| k.2).collect::<Vec<_>>(),
        "seeds" => cols.0,
        "test_auc_mean" => cols.1,
        "test_auc_sd" => cols.2,
        "delong_lo_mean" => cols.3,
        "delong_hi_mean" => cols.4,
    )
    .map_err(df_err)
}

fn opt(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The headline comparisons as numbers (null where a value does not apply).
pub fn headline(rows: &[HeadRow], sets: &[TestSet]) -> Result<DataFrame> {
    let est = |g: fn(&AucEstimate) -> f64, pick: fn(&HeadRow) -> Option<AucEstimate>| {
        rows.iter()
            .map(|r| pick(r).map(|e| g(&e)).and_then(opt))
            .collect::<Vec<Option<f64>>>()
    };
    let cmp = |g: fn(&crate::report::headline::Comparison) -> f64| {
        rows.iter()
            .map(|r| r.comparison.as_ref().map(g).and_then(opt))
            .collect::<Vec<Option<f64>>>()
    };
    let init = |r: &HeadRow| r.init_auc;
    let random = |r: &HeadRow| r.random_auc;
    df!(
        "test_set" => strings(rows, |r| sets[r.set].name.clone()),
        "arm" => strings(rows, |r| r.arm.clone()),
        "init" => rows.iter().map(|r| r.init.clone()).collect::<Vec<Option<String>>>(),
        "fraction" => rows.iter().map(|r| r.fraction).collect::<Vec<_>>(),
        "seeds" => rows.iter().map(|r| r.comparison.as_ref().map(|c| c.seeds as u64)).collect::<Vec<_>>(),
        "auc_init" => est(|e| e.mean, init),
        "auc_init_sd" => est(|e| e.sd, init),
        "auc_init_lo" => est(|e| e.lo, init),
        "auc_init_hi" => est(|e| e.hi, init),
        "auc_random" => est(|e| e.mean, random),
        "auc_random_sd" => est(|e| e.sd, random),
        "auc_random_lo" => est(|e| e.lo, random),
        "auc_random_hi" => est(|e| e.hi, random),
        "diff" => cmp(|c| c.diff),
        "diff_lo" => cmp(|c| c.lo),
        "diff_hi" => cmp(|c| c.hi),
        "p" => cmp(|c| c.p),
        "p_method" => rows.iter().map(|r| r.comparison.as_ref().map(|c| c.method.clone())).collect::<Vec<Option<String>>>(),
    )
    .map_err(df_err)
}

fn show_auc(e: Option<AucEstimate>) -> String {
    match e {
        Some(e) if e.seeds == 1 => fmt_ci(Some(e.mean), e.lo, e.hi),
        Some(e) => format!("{:.3} ± {:.3}", e.mean, e.sd),
        None => DASH.into(),
    }
}

fn show_diff(r: Option<&HeadRow>) -> String {
    match r.and_then(|r| r.comparison.as_ref()) {
        Some(c) if c.lo.is_finite() => format!(
            "{} [{}, {}]",
            fmt_signed(Some(c.diff)),
            fmt_signed(Some(c.lo)),
            fmt_signed(Some(c.hi))
        ),
        Some(c) => fmt_signed(Some(c.diff)),
        None => DASH.into(),
    }
}

/// The headline table as it is shown: one row per arm, fraction and
/// pretrained init; per test set (internal first, then each external set
/// beside it) the AUC of the init, of random init, their difference [95 %
/// CI] and p. Three decimals, "–" where a value does not apply; the
/// Markdown.
pub fn headline_display(rows: &[HeadRow], sets: &[TestSet]) -> Result<String> {
    let keys = crate::report::headline::ordered(
        rows.iter()
            .map(|r| (r.arm.clone(), r.fraction.to_bits(), r.init.clone())),
    );
    let find = |si: usize, k: &(String, u64, Option<String>)| {
        rows.iter()
            .find(|r| r.set == si && r.arm == k.0 && r.fraction.to_bits() == k.1 && r.init == k.2)
    };
    let mut columns: Vec<Column> = Vec::new();
    let text = |name: &str, v: Vec<String>| Column::new(name.into(), v);
    columns.push(text("arm", strings(&keys, |k| k.0.clone())));
    columns.push(text(
        "labels",
        strings(&keys, |k| format!("{} %", fmt_pct(f64::from_bits(k.1)))),
    ));
    columns.push(text(
        "seeds",
        strings(&keys, |k| {
            (0..sets.len())
                .find_map(|si| find(si, k).and_then(|r| r.comparison.as_ref()))
                .map(|c| c.seeds.to_string())
                .unwrap_or_else(|| DASH.into())
        }),
    ));
    columns.push(text(
        "init",
        strings(&keys, |k| {
            k.2.as_deref().map(init_name).unwrap_or_else(|| DASH.into())
        }),
    ));
    for (si, set) in sets.iter().enumerate() {
        let prefix = if set.is_internal() {
            String::new()
        } else {
            format!("{}: ", set.name)
        };
        let col = |name: &str, f: &dyn Fn(Option<&HeadRow>) -> String| {
            text(
                &format!("{prefix}{name}"),
                keys.iter().map(|k| f(find(si, k))).collect(),
            )
        };
        columns.push(col("AUC", &|r| show_auc(r.and_then(|r| r.init_auc))));
        columns.push(col("random init AUC", &|r| {
            show_auc(r.and_then(|r| r.random_auc))
        }));
        columns.push(col("difference [95 % CI]", &show_diff));
        columns.push(col("p", &|r| {
            r.and_then(|r| r.comparison.as_ref())
                .map(|c| format_p(c.p))
                .unwrap_or_else(|| DASH.into())
        }));
    }
    let df = DataFrame::new_infer_height(columns).map_err(df_err)?;
    Ok(markdown_table(&df))
}

/// The duplicates each external set dropped; `None` when there are none.
pub fn duplicates(sets: &[TestSet]) -> Result<Option<DataFrame>> {
    let rows: Vec<(&str, &str, &str)> = sets
        .iter()
        .flat_map(|s| {
            s.duplicates_dropped
                .iter()
                .map(move |(a, b)| (s.name.as_str(), a.as_str(), b.as_str()))
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    df!(
        "test_set" => strings(&rows, |r| r.0.to_string()),
        "image_id" => strings(&rows, |r| r.1.to_string()),
        "duplicate_of" => strings(&rows, |r| r.2.to_string()),
    )
    .map(Some)
    .map_err(df_err)
}

/// `test_scores.csv`: one row per test image (id, label), one column of
/// scores per run (`arm/init/f<fraction>/s<seed>`), for re-analysis
/// elsewhere.
pub fn write_test_scores(dir: &Path, results: &[ArmResult], ctx: &ReportInputs) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let rerr = |e: csv::Error| Error::Report(e.to_string());
    let mut head = vec!["image_id".to_string(), "label".to_string()];
    head.extend(
        results
            .iter()
            .map(|r| format!("{}/{}/f{}/s{}", r.arm, r.init, r.fraction, r.seed)),
    );
    w.write_record(&head).map_err(rerr)?;
    for (i, (id, y)) in ctx.test_ids.iter().zip(&ctx.test_labels).enumerate() {
        let mut row = vec![id.clone(), y.to_string()];
        row.extend(results.iter().map(|r| format!("{}", r.test_scores[i])));
        w.write_record(&row).map_err(rerr)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Report(e.to_string()))?;
    write_atomic(&dir.join("test_scores.csv"), &bytes)
}
