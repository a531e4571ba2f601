//! Duplicate pairs of the built-in data set: what the audit found, how a
//! pair is resolved (grouped inside a split, the earlier image left out
//! across splits), and the check of the audit of the result.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::DuplicatePair;
use super::source::{Row, ordered};
use crate::data::audit::AuditReport;
use crate::data::{DataError, Result, Split};

pub(super) fn found_pairs(rows: &[Row], r: &AuditReport) -> BTreeMap<(String, String), String> {
    let known: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut out = BTreeMap::new();
    for p in &r.exact_duplicates {
        out.insert(ordered(&p.id_a, &p.id_b), "exact".to_string());
    }
    for p in &r.near_duplicates {
        out.entry(ordered(&p.id_a, &p.id_b))
            .or_insert_with(|| format!("near (score {:.3})", p.score));
    }
    out.retain(|(a, b), _| known.contains(a.as_str()) && known.contains(b.as_str()));
    out
}

/// Groups (one per row) and left-out flags: pairs are joined into
/// components; a component's images in its last split (test, else val, else
/// train) are kept and grouped under the first of their ids, the others are
/// left out.
pub(super) fn resolve<'a>(
    rows: &[Row],
    pairs: impl Iterator<Item = &'a (String, String)>,
) -> (Vec<String>, Vec<bool>) {
    let index: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..rows.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for (a, b) in pairs {
        if let (Some(&i), Some(&j)) = (index.get(a.as_str()), index.get(b.as_str())) {
            let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
            parent[ri.max(rj)] = ri.min(rj);
        }
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..rows.len() {
        let r = find(&mut parent, i);
        members.entry(r).or_default().push(i);
    }
    let mut groups: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut left = vec![false; rows.len()];
    for m in members.values().filter(|m| m.len() > 1) {
        let last = m
            .iter()
            .map(|&i| rows[i].split)
            .max()
            .unwrap_or(Split::Test);
        // Rows are in (split, id) order: the first kept member has the smallest id.
        let kept: Vec<usize> = m
            .iter()
            .copied()
            .filter(|&i| rows[i].split == last)
            .collect();
        let name = rows[kept[0]].id.clone();
        for &i in m {
            if rows[i].split == last {
                groups[i] = name.clone();
            } else {
                left[i] = true;
            }
        }
    }
    (groups, left)
}

pub(super) fn describe_pairs(
    rows: &[Row],
    found: &BTreeMap<(String, String), String>,
    listed: &BTreeSet<(String, String)>,
    groups: &[String],
    left: &[bool],
) -> Vec<DuplicatePair> {
    let index: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let keys: BTreeSet<&(String, String)> = found.keys().chain(listed).collect();
    let mut out = Vec::new();
    for k in keys {
        let (Some(&i), Some(&j)) = (index.get(k.0.as_str()), index.get(k.1.as_str())) else {
            continue;
        };
        let resolution = if !left[i] && !left[j] {
            format!("grouped as {}", groups[i])
        } else {
            [i, j]
                .iter()
                .map(|&x| {
                    let what = if left[x] { "left out" } else { "kept" };
                    format!("{} ({}) {what}", rows[x].id, rows[x].split.as_str())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(DuplicatePair {
            id_a: k.0.clone(),
            split_a: rows[i].split,
            id_b: k.1.clone(),
            split_b: rows[j].split,
            audit: found.get(k).cloned().unwrap_or_else(|| "not found".into()),
            listed: listed.contains(k),
            resolution,
        });
    }
    out
}

/// The audit of the built folder must find no leak, and exactly the pairs
/// the first audit found among the images that were kept.
pub(super) fn check_audit(r: &AuditReport, pairs: &[DuplicatePair]) -> Result<()> {
    let bug =
        |msg: String| DataError::Other(format!("make-builtin: {msg} (a bug: please report it)"));
    if r.has_leaks() {
        return Err(bug(format!(
            "the audit of the built folder still finds a leak: {}",
            r.summary().replace('\n', "; ")
        )));
    }
    let reported: BTreeSet<(String, String)> = r
        .exact_duplicates
        .iter()
        .chain(&r.near_duplicates)
        .map(|p| ordered(&p.id_a, &p.id_b))
        .collect();
    let expected: BTreeSet<(String, String)> = pairs
        .iter()
        .filter(|p| p.resolution.starts_with("grouped") && p.audit != "not found")
        .map(|p| (p.id_a.clone(), p.id_b.clone()))
        .collect();
    if let Some((a, b)) = reported.symmetric_difference(&expected).next() {
        return Err(bug(format!(
            "the audit of the built folder and of all the resized images disagree on {a}, {b}"
        )));
    }
    Ok(())
}
