//! A generic manifest CSV: `path,label[,split][,group]` (header required,
//! paths relative to the CSV's folder). Without a split column, images are
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

pub fn read_manifest(path: &Path) -> Result<Dataset> {
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| DataError::Csv {
            path: path.into(),
            line: 1,
            msg: e.to_string(),
        })?;
    let headers = rdr
        .headers()
        .map_err(|e| DataError::Csv {
            path: path.into(),
            line: 1,
            msg: e.to_string(),
        })?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let pcol = col("path").ok_or_else(|| DataError::Csv {
        path: path.into(),
        line: 1,
        msg: "missing column `path`".into(),
    })?;
    let lcol = col("label").ok_or_else(|| DataError::Csv {
        path: path.into(),
        line: 1,
        msg: "missing column `label`".into(),
    })?;
    let scol = col("split");
    let gcol = col("group");
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    let mut id_lines: HashMap<String, (u64, String)> = HashMap::new();
    let mut unsplit = false;
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| DataError::Csv {
            path: path.into(),
            line,
            msg: e.to_string(),
        })?;
        let rel = rec.get(pcol).unwrap_or("").trim();
        if rel.is_empty() {
            return Err(DataError::Csv {
                path: path.into(),
                line,
                msg: "empty path".into(),
            });
        }
        if !seen.insert(rel.to_string()) {
            return Err(DataError::Csv {
                path: path.into(),
                line,
                msg: format!("duplicate path {rel}"),
            });
        }
        let lab = rec.get(lcol).unwrap_or("");
        let label = if lab.trim().is_empty() {
            None
        } else {
            Some(parse_label(lab).ok_or_else(|| DataError::Csv {
                path: path.into(),
                line,
                msg: format!("label {lab:?} is not 0/1"),
            })?)
        };
        let split = match scol.map(|c| rec.get(c).unwrap_or("")) {
            Some(s) if !s.trim().is_empty() => Split::parse(s).ok_or_else(|| DataError::Csv {
                path: path.into(),
                line,
                msg: format!("split {s:?} is not train/val/test"),
            })?,
            _ => {
                unsplit = true;
                Split::Train
            }
        };
        let id = Path::new(rel)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| rel.to_string());
        if let Some((first, other)) = id_lines.insert(id.clone(), (line, rel.to_string())) {
            return Err(DataError::Csv {
                path: path.into(),
                line,
                msg: format!(
                    "duplicate image id {id}: {rel} and {other} (line {first}) have the same file name without extension"
                ),
            });
        }
        let group = gcol
            .and_then(|c| rec.get(c))
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .unwrap_or(&id)
            .to_string();
        samples.push(Sample {
            id,
            path: root.join(rel),
            label,
            aux: None,
            split,
            group,
        });
    }
    if samples.is_empty() {
        return Err(DataError::Csv {
            path: path.into(),
            line: 1,
            msg: "no rows".into(),
        });
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
