//! Subgroup AUCs in the report: for each test set with per-image metadata,
//! every run's AUC with its DeLong interval per group (each categorical
//! column's values, age in bands), with the group's size and positives; a
//! group with fewer than [`MIN_PER_CLASS`] positives or negatives is listed
//! but not scored.

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::eval::subgroups::{GroupAuc, Grouping, MIN_PER_CLASS, group_auc, groups};
use crate::protocol::ArmResult;
use crate::report::format::{DASH, fmt_ci, fmt_pct, init_name};
use crate::report::headline::{fractions, ordered};
use crate::report::markdown_table;
use crate::report::sets::TestSet;
use crate::report::tables::df_err;

/// The note under every subgroup table.
pub fn note() -> String {
    format!(
        "{DASH}: fewer than {MIN_PER_CLASS} positives or {MIN_PER_CLASS} negatives in the group; listed, not scored. Age bands from age_approximate: <40, 40-59, >=60; unknown: missing."
    )
}

/// One set's groups and every run's AUC in each (`[run][group]`; a run not
/// scored on the set has none).
#[derive(Debug, Clone)]
pub struct SetSubgroups {
    pub set: usize,
    pub grouping: Grouping,
    pub aucs: Vec<Option<Vec<GroupAuc>>>,
}

/// The subgroups of every set that has metadata.
pub fn subgroups(results: &[ArmResult], sets: &[TestSet]) -> Result<Vec<SetSubgroups>> {
    let mut out = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        if set.meta.is_empty() {
            continue;
        }
        let grouping = groups(set.meta);
        let mut aucs = Vec::new();
        for (r, s) in results.iter().zip(&set.scores) {
            let Some(s) = s else {
                aucs.push(None);
                continue;
            };
            let g = grouping
                .groups
                .iter()
                .map(|g| {
                    group_auc(s, set.labels, g).map_err(|e: Error| {
                        Error::Report(format!(
                            "subgroups, {}, run {} / {} / {} / seed {}: {e}",
                            set.display(),
                            r.arm,
                            r.init,
                            r.fraction,
                            r.seed
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            aucs.push(Some(g));
        }
        out.push(SetSubgroups {
            set: si,
            grouping,
            aucs,
        });
    }
    Ok(out)
}

/// `subgroups`: one row per set, run and group (AUC and bounds null where
/// the group is not scored).
pub fn table(results: &[ArmResult], sets: &[TestSet], subs: &[SetSubgroups]) -> Result<DataFrame> {
    let mut rows: Vec<(&str, &ArmResult, &GroupAuc)> = Vec::new();
    for s in subs {
        for (r, g) in results.iter().zip(&s.aucs) {
            for g in g.iter().flatten() {
                rows.push((&sets[s.set].name, r, g));
            }
        }
    }
    let ci = |f: fn(&crate::eval::stats::AucCi) -> f64| {
        rows.iter()
            .map(|(_, _, g)| g.auc.as_ref().map(f))
            .collect::<Vec<Option<f64>>>()
    };
    df!(
        "test_set" => rows.iter().map(|x| x.0.to_string()).collect::<Vec<_>>(),
        "column" => rows.iter().map(|x| x.2.column.clone()).collect::<Vec<_>>(),
        "group" => rows.iter().map(|x| x.2.value.clone()).collect::<Vec<_>>(),
        "n" => rows.iter().map(|x| x.2.n as u64).collect::<Vec<_>>(),
        "n_pos" => rows.iter().map(|x| x.2.n_pos as u64).collect::<Vec<_>>(),
        "arm" => rows.iter().map(|x| x.1.arm.clone()).collect::<Vec<_>>(),
        "init" => rows.iter().map(|x| x.1.init.clone()).collect::<Vec<_>>(),
        "fraction" => rows.iter().map(|x| x.1.fraction).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|x| x.1.seed).collect::<Vec<_>>(),
        "auc" => ci(|a| a.auc),
        "delong_lo" => ci(|a| a.lo),
        "delong_hi" => ci(|a| a.hi),
    )
    .map_err(df_err)
}

/// The subgroup table of one set as shown: one row per group (n,
/// positives), one AUC [DeLong CI] column per (arm, init) at the largest
/// fraction and first seed; the title and the Markdown.
pub fn display(
    results: &[ArmResult],
    sets: &[TestSet],
    s: &SetSubgroups,
) -> Result<(String, String)> {
    let largest = fractions(results).last().copied().unwrap_or(1.0);
    let first = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let runs: Vec<usize> = ordered(
        (0..results.len())
            .filter(|&i| results[i].fraction == largest && results[i].seed == first)
            .filter(|&i| s.aucs[i].is_some()),
    );
    let mut columns: Vec<Column> = Vec::new();
    let g = &s.grouping.groups;
    let text = |v: Vec<String>, name: &str| Column::new(name.into(), v);
    columns.push(text(
        g.iter()
            .map(|g| format!("{} = {}", g.column, g.value))
            .collect(),
        "group",
    ));
    columns.push(text(
        g.iter().map(|g| g.members.len().to_string()).collect(),
        "n",
    ));
    let pos = |gi: usize| {
        s.aucs
            .iter()
            .flatten()
            .next()
            .map(|a| a[gi].n_pos.to_string())
            .unwrap_or_else(|| DASH.into())
    };
    columns.push(text((0..g.len()).map(pos).collect(), "positives"));
    for &i in &runs {
        let r = &results[i];
        let name = format!("{}: {}", r.arm, init_name(&r.init));
        let Some(a) = &s.aucs[i] else { continue };
        let v: Vec<String> = a
            .iter()
            .map(|x| match &x.auc {
                Some(c) => fmt_ci(Some(c.auc), c.lo, c.hi),
                None => DASH.into(),
            })
            .collect();
        if columns.iter().any(|c| c.name().as_str() == name) {
            continue;
        }
        columns.push(text(v, &name));
    }
    let df = DataFrame::new_infer_height(columns).map_err(df_err)?;
    let title = format!(
        "{}: AUC [DeLong 95 % CI] by group, {} % labels, seed {first}",
        sets[s.set].display(),
        fmt_pct(largest)
    );
    Ok((title, markdown_table(&df)))
}
