//! Subgroups of a test set from per-image metadata (one map of column ->
//! value per image): each categorical column's values, and age in bands
//! (`<40`, `40-59`, `>=60`) from an `age_approximate` (or `age`) column; the
//! AUC with its DeLong interval in each group that has enough cases of both
//! classes.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::eval::stats::{self, AucCi};

/// A group is scored only with at least this many positives and this many
/// negatives.
pub const MIN_PER_CLASS: usize = 10;

/// A categorical column with more distinct values than this is not treated
/// as a category (an id, a free-text field).
pub const MAX_LEVELS: usize = 12;

/// The value a missing or unknown entry is grouped under.
pub const UNKNOWN: &str = "unknown";

/// The age bands, in order.
pub const AGE_BANDS: [&str; 3] = ["<40", "40-59", ">=60"];

/// The cases of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The metadata column (`age` for the age bands).
    pub column: String,
    pub value: String,
    /// Indices into the test set.
    pub members: Vec<usize>,
}

/// How the groups were formed: the groups, and one note per column left out.
#[derive(Debug, Clone, Default)]
pub struct Grouping {
    pub groups: Vec<Group>,
    pub skipped: Vec<String>,
}

fn is_age(column: &str) -> bool {
    matches!(column, "age_approximate" | "age")
}

fn missing(v: &str) -> bool {
    let v = v.trim();
    v.is_empty()
        || ["unknown", "na", "nan", "none", "null"].contains(&v.to_ascii_lowercase().as_str())
}

/// The age band of an `age_approximate` entry, `None` when it is missing or
/// not a non-negative number.
pub fn age_band(v: &str) -> Option<&'static str> {
    let a: f64 = v.trim().parse().ok()?;
    if !a.is_finite() || a < 0.0 {
        return None;
    }
    Some(if a < 40.0 {
        AGE_BANDS[0]
    } else if a < 60.0 {
        AGE_BANDS[1]
    } else {
        AGE_BANDS[2]
    })
}

/// The groups of `meta` (one map per image; a column missing from a map is
/// unknown for that image). Columns are taken in name order; within a column
/// the values in name order (the age bands in age order), `unknown` last.
pub fn groups(meta: &[BTreeMap<String, String>]) -> Grouping {
    let columns: std::collections::BTreeSet<&String> = meta.iter().flat_map(|m| m.keys()).collect();
    let mut out = Grouping::default();
    for col in columns {
        let value = |m: &BTreeMap<String, String>| -> String {
            match m.get(col) {
                Some(v) if !missing(v) => {
                    if is_age(col) {
                        age_band(v).unwrap_or(UNKNOWN).to_string()
                    } else {
                        v.trim().to_string()
                    }
                }
                _ => UNKNOWN.to_string(),
            }
        };
        let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, m) in meta.iter().enumerate() {
            by.entry(value(m)).or_default().push(i);
        }
        let known = by.keys().filter(|k| *k != UNKNOWN).count();
        if !is_age(col) && known > MAX_LEVELS {
            out.skipped.push(format!(
                "{col}: {known} distinct values, not treated as a category"
            ));
            continue;
        }
        if known == 0 {
            out.skipped.push(format!("{col}: no known values"));
            continue;
        }
        let order: Vec<String> = if is_age(col) {
            AGE_BANDS.iter().map(|s| s.to_string()).collect()
        } else {
            by.keys().filter(|k| *k != UNKNOWN).cloned().collect()
        };
        let name = if is_age(col) { "age" } else { col.as_str() };
        for v in order.into_iter().chain([UNKNOWN.to_string()]) {
            if let Some(members) = by.remove(&v) {
                out.groups.push(Group {
                    column: name.to_string(),
                    value: v,
                    members,
                });
            }
        }
    }
    out
}

/// One group's counts and, when it has at least [`MIN_PER_CLASS`] cases of
/// each class, its AUC with the DeLong 95 % interval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupAuc {
    pub column: String,
    pub value: String,
    pub n: usize,
    pub n_pos: usize,
    /// `None`: too few positives or negatives to score.
    pub auc: Option<AucCi>,
}

/// Scores `group` (indices into `scores` and `labels`).
pub fn group_auc(scores: &[f64], labels: &[u8], group: &Group) -> Result<GroupAuc> {
    if scores.len() != labels.len() {
        return Err(Error::Eval(format!(
            "subgroup {}={}: {} scores but {} labels",
            group.column,
            group.value,
            scores.len(),
            labels.len()
        )));
    }
    if let Some(&i) = group.members.iter().find(|&&i| i >= labels.len()) {
        return Err(Error::Eval(format!(
            "subgroup {}={}: case {i} is outside the {} cases",
            group.column,
            group.value,
            labels.len()
        )));
    }
    let s: Vec<f64> = group.members.iter().map(|&i| scores[i]).collect();
    let y: Vec<u8> = group.members.iter().map(|&i| labels[i]).collect();
    let n_pos = y.iter().filter(|&&l| l == 1).count();
    let scored = n_pos >= MIN_PER_CLASS && y.len() - n_pos >= MIN_PER_CLASS;
    Ok(GroupAuc {
        column: group.column.clone(),
        value: group.value.clone(),
        n: y.len(),
        n_pos,
        auc: if scored {
            Some(stats::delong_ci(&s, &y)?)
        } else {
            None
        },
    })
}
