//! The ISIC challenge layout, driven by a dataset descriptor
//! (`datasets/isic2017.toml`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::manifest::parse_label;
use super::{DataError, Dataset, Result, Sample, Split};

/// The descriptor compiled into the binary, so `--data DIR` needs no repo checkout.
pub const ISIC2017_TOML: &str = include_str!("../../datasets/isic2017.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFiles {
    pub split: Split,
    /// Folder of `<image_id>.<ext>` files.
    pub images: String,
    /// `image_id,<positive_column>,...` CSV.
    pub ground_truth: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub ground_truth_url: Option<String>,
    /// SHA-256 (hex) of the image zip at `url`.
    #[serde(default)]
    pub sha256: Option<String>,
    /// SHA-256 (hex) of the ground-truth CSV at `ground_truth_url`.
    #[serde(default)]
    pub ground_truth_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    pub layout: String,
    pub positive_column: String,
    /// A second 0/1 column read as each image's auxiliary label
    /// ([`Sample::aux`]) where a split's CSV has it (ISIC 2017's validation
    /// file lacks it: those images have none).
    #[serde(default)]
    pub aux_column: Option<String>,
    pub image_extension: String,
    #[serde(default)]
    pub license: Option<String>,
    pub splits: Vec<SplitFiles>,
}

impl Descriptor {
    pub fn isic2017() -> Descriptor {
        toml::from_str(ISIC2017_TOML).expect("built-in isic2017 descriptor parses")
    }

    pub fn from_file(path: &Path) -> Result<Descriptor> {
        let s = std::fs::read_to_string(path).map_err(super::io_err(path))?;
        toml::from_str(&s).map_err(|e| DataError::Layout {
            path: path.into(),
            msg: e.to_string(),
        })
    }

    /// True when `root` holds this layout's ground-truth files.
    pub fn detect(&self, root: &Path) -> bool {
        self.splits
            .iter()
            .any(|s| root.join(&s.ground_truth).is_file())
    }

    /// Reads every split; every listed image must exist.
    pub fn load(&self, root: &Path) -> Result<Dataset> {
        let mut samples = Vec::new();
        let mut ids = HashSet::new();
        for sf in &self.splits {
            let gt = root.join(&sf.ground_truth);
            let dir = root.join(&sf.images);
            if !dir.is_dir() {
                return Err(DataError::Layout {
                    path: dir,
                    msg: "image folder missing".into(),
                });
            }
            let aux = self.aux_column.as_deref();
            for (id, label, aux, line) in read_ground_truth(&gt, &self.positive_column, aux)? {
                if !ids.insert(id.clone()) {
                    return Err(DataError::Csv {
                        path: gt.clone(),
                        line,
                        msg: format!("image id {id} listed twice"),
                    });
                }
                let path: PathBuf = dir.join(format!("{id}.{}", self.image_extension));
                if !path.is_file() {
                    return Err(DataError::Csv {
                        path: gt.clone(),
                        line,
                        msg: format!("image {} not found", path.display()),
                    });
                }
                samples.push(Sample {
                    group: id.clone(),
                    id,
                    path,
                    label: Some(label),
                    aux,
                    split: sf.split,
                });
            }
        }
        Ok(Dataset {
            name: self.name.clone(),
            root: root.into(),
            samples,
            splits_assigned: false,
        })
    }
}

/// One row of a challenge ground-truth CSV: image id, label, auxiliary
/// label and line.
type TruthRow = (String, u8, Option<u8>, u64);

/// The rows of a challenge ground-truth CSV, with the `aux` column's value
/// where the file has that column.
pub fn read_ground_truth(path: &Path, positive: &str, aux: Option<&str>) -> Result<Vec<TruthRow>> {
    let mut rdr = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|e| DataError::Csv {
            path: path.into(),
            line: 1,
            msg: e.to_string(),
        })?;
    let h = rdr
        .headers()
        .map_err(|e| DataError::Csv {
            path: path.into(),
            line: 1,
            msg: e.to_string(),
        })?
        .clone();
    let idc = h.iter().position(|c| c.trim() == "image_id");
    let pc = h.iter().position(|c| c.trim() == positive);
    let ac = aux.and_then(|a| h.iter().position(|c| c.trim() == a).map(|i| (a, i)));
    let (Some(idc), Some(pc)) = (idc, pc) else {
        return Err(DataError::Csv {
            path: path.into(),
            line: 1,
            msg: format!(
                "header must have image_id and {positive}, has {:?}",
                h.iter().collect::<Vec<_>>()
            ),
        });
    };
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| DataError::Csv {
            path: path.into(),
            line,
            msg: e.to_string(),
        })?;
        let id = rec.get(idc).unwrap_or("").trim().to_string();
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(DataError::Csv {
                path: path.into(),
                line,
                msg: format!("bad image id {id:?}"),
            });
        }
        // The 0/1 value of column `c`, named `name` in the error.
        let cell = |name: &str, c: usize| {
            let v = rec.get(c).unwrap_or("");
            parse_label(v).ok_or_else(|| DataError::Csv {
                path: path.into(),
                line,
                msg: format!("{name} value {v:?} is not 0/1"),
            })
        };
        let label = cell(positive, pc)?;
        let aux = ac.map(|(name, c)| cell(name, c)).transpose()?;
        out.push((id, label, aux, line));
    }
    if out.is_empty() {
        return Err(DataError::Csv {
            path: path.into(),
            line: 1,
            msg: "no rows".into(),
        });
    }
    Ok(out)
}
