//! A generic manifest CSV: `path,label[,split][,group][,aux_label]` (header
//! required, paths relative to the CSV's folder). Without a split column, images are
//! split 70/15/15 by group, stratified by label, from a fixed hash.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{DataError, Dataset, Result, Sample, Split};

/// Parses a binary label: 0/1, 0.0/1.0, true/false.
pub fn parse_label(s: &str) -> Option<u8> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" => Some(1),
        "0" | "0.0" | "false" | "no" => Some(0),
        _ => None,
    }
}

/// The columns of a manifest's header (`path` and `label` required).
struct Columns {
    path: usize,
    label: usize,
    split: Option<usize>,
    group: Option<usize>,
    aux: Option<usize>,
}

impl Columns {
    fn of(path: &Path, headers: &csv::StringRecord) -> Result<Columns> {
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
        };
        let required = |name: &str| {
            col(name).ok_or_else(|| DataError::Csv {
                path: path.into(),
                line: 1,
                msg: format!("missing column `{name}`"),
            })
        };
        Ok(Columns {
            path: required("path")?,
            label: required("label")?,
            split: col("split"),
            group: col("group"),
            aux: col("aux_label"),
        })
    }
}

/// A 0/1 cell of column `what` (empty: unknown).
fn label_cell(path: &Path, line: u64, what: &str, v: &str) -> Result<Option<u8>> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    parse_label(v).map(Some).ok_or_else(|| DataError::Csv {
        path: path.into(),
        line,
        msg: format!("{what} {v:?} is not 0/1"),
    })
}

/// One manifest row as a sample (its split `None` when the row gives none).
fn row(
    path: &Path,
    root: &Path,
    cols: &Columns,
    rec: &csv::StringRecord,
    line: u64,
) -> Result<(Sample, Option<Split>)> {
    let err = |msg: String| DataError::Csv {
        path: path.into(),
        line,
        msg,
    };
    let rel = rec.get(cols.path).unwrap_or("").trim();
    if rel.is_empty() {
        return Err(err("empty path".into()));
    }
    let label = label_cell(path, line, "label", rec.get(cols.label).unwrap_or(""))?;
    let aux = match cols.aux {
        Some(c) => label_cell(path, line, "aux_label", rec.get(c).unwrap_or(""))?,
        None => None,
    };
    let split = match cols.split.map(|c| rec.get(c).unwrap_or("")) {
        Some(s) if !s.trim().is_empty() => {
            Some(Split::parse(s).ok_or_else(|| err(format!("split {s:?} is not train/val/test")))?)
        }
        _ => None,
    };
    let id = Path::new(rel)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| rel.to_string());
    let group = cols
        .group
        .and_then(|c| rec.get(c))
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .unwrap_or(&id)
        .to_string();
    let sample = Sample {
        id,
        path: root.join(rel),
        label,
        aux,
        split: split.unwrap_or(Split::Train),
        group,
    };
    Ok((sample, split))
}

/// Reads a manifest CSV (see the module's documentation); an optional
/// `aux_label` column gives each image a second 0/1 label
/// ([`Sample::aux`]).
pub fn read_manifest(path: &Path) -> Result<Dataset> {
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let csv_err = |line: u64, msg: String| DataError::Csv {
        path: path.into(),
        line,
        msg,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| csv_err(1, e.to_string()))?;
    let headers = rdr
        .headers()
        .map_err(|e| csv_err(1, e.to_string()))?
        .clone();
    let cols = Columns::of(path, &headers)?;
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    let mut id_lines: HashMap<String, (u64, String)> = HashMap::new();
    let mut unsplit = false;
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| csv_err(line, e.to_string()))?;
        let (sample, split) = row(path, &root, &cols, &rec, line)?;
        let rel = rec.get(cols.path).unwrap_or("").trim();
        if !seen.insert(rel.to_string()) {
            return Err(csv_err(line, format!("duplicate path {rel}")));
        }
        let id = &sample.id;
        if let Some((first, other)) = id_lines.insert(id.clone(), (line, rel.to_string())) {
            return Err(csv_err(
                line,
                format!(
                    "duplicate image id {id}: {rel} and {other} (line {first}) have the same file name without extension"
                ),
            ));
        }
        unsplit |= split.is_none();
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(csv_err(1, "no rows".into()));
    }
    if unsplit {
        assign_splits(&mut samples);
    }
    check_groups(path, &samples)?;
    Ok(Dataset {
        name: root
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        root,
        samples,
        splits_assigned: unsplit,
    })
}

/// A group on both sides of a split is an error: it would leak.
pub fn check_groups(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut by_group: HashMap<&str, Split> = HashMap::new();
    for s in samples {
        if let Some(prev) = by_group.insert(&s.group, s.split)
            && prev != s.split
        {
            return Err(DataError::Layout {
                path: path.into(),
                msg: format!(
                    "group {} appears in both {} and {}",
                    s.group,
                    prev.as_str(),
                    s.split.as_str()
                ),
            });
        }
    }
    Ok(())
}

/// 70/15/15 by group, stratified by the group's majority label; the order
/// within each stratum comes from a hash of the group name, so it is stable.
pub fn assign_splits(samples: &mut [Sample]) {
    use sha2::{Digest, Sha256};
    let mut groups: HashMap<String, (u32, u32)> = HashMap::new();
    for s in samples.iter() {
        let e = groups.entry(s.group.clone()).or_default();
        e.0 += 1;
        e.1 += s.label.unwrap_or(0) as u32;
    }
    let mut strata: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
    for (g, (n, p)) in groups {
        let h = hex::encode(Sha256::digest(g.as_bytes()));
        strata[(2 * p >= n && p > 0) as usize].push((h, g));
    }
    let mut split_of = HashMap::new();
    for st in strata.iter_mut() {
        st.sort();
        let n = st.len();
        for (i, (_, g)) in st.iter().enumerate() {
            let f = (i as f64 + 0.5) / n as f64;
            let s = if f < 0.70 {
                Split::Train
            } else if f < 0.85 {
                Split::Val
            } else {
                Split::Test
            };
            split_of.insert(g.clone(), s);
        }
    }
    for s in samples.iter_mut() {
        s.split = split_of[&s.group];
    }
}
