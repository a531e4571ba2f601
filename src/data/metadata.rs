//! Per-image metadata for subgroup analyses (age, sex, site, ...), read
//! beside a data set: the ISIC challenge's `*_metadata.csv` files
//! (`image_id,age_approximate,sex`), or the columns of a `manifest.csv` or
//! HAM-style metadata CSV that are not the layout's own. Values are kept as
//! text; "unknown", "NA" and empty cells are left out. Columns that name a
//! person (patient name, id, birth date) are never read.

use std::collections::BTreeMap;
use std::path::Path;

use super::{DataError, Dataset, Result, io_err};

/// Metadata columns of one image.
pub type Meta = BTreeMap<String, String>;

/// Columns a layout uses itself, and columns that could identify a person:
/// neither is metadata for a report.
const SKIP: &[&str] = &[
    "id",
    "image_id",
    "image",
    "path",
    "label",
    "split",
    "group",
    "lesion_id",
    "dx",
    "melanoma",
    "seborrheic_keratosis",
    "patient_id",
    "patientid",
    "patient_name",
    "patientname",
    "name",
    "birth_date",
    "patientbirthdate",
    "date_of_birth",
    "dob",
];

fn missing(v: &str) -> bool {
    let v = v.trim();
    v.is_empty() || v.eq_ignore_ascii_case("unknown") || v.eq_ignore_ascii_case("na")
}

/// Reads `id_col` and the other usable columns of a CSV into `out`.
fn read_csv(path: &Path, id_col: &[&str], out: &mut BTreeMap<String, Meta>) -> Result<()> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| DataError::Csv {
        path: path.into(),
        line: 1,
        msg: e.to_string(),
    })?;
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| DataError::Csv {
            path: path.into(),
            line: 1,
            msg: e.to_string(),
        })?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let Some(id) = headers.iter().position(|h| id_col.contains(&h.as_str())) else {
        return Ok(());
    };
    let cols: Vec<usize> = (0..headers.len())
        .filter(|&i| !SKIP.contains(&headers[i].as_str()))
        .collect();
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| DataError::Csv {
            path: path.into(),
            line: line as u64 + 2,
            msg: e.to_string(),
        })?;
        let Some(key) = rec.get(id) else { continue };
        let key = Path::new(key.trim())
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let m = out.entry(key).or_default();
        for &c in &cols {
            if let Some(v) = rec.get(c).filter(|v| !missing(v)) {
                m.insert(headers[c].clone(), v.trim().to_string());
            }
        }
    }
    Ok(())
}

/// The metadata of `ds`'s images by sample id (images without any are
/// absent). Reads every `*metadata*.csv` and a `manifest.csv` in the data
/// set's folder; a data set without them has none.
pub fn load(ds: &Dataset) -> Result<BTreeMap<String, Meta>> {
    let mut out = BTreeMap::new();
    let dir = if ds.root.is_dir() {
        ds.root.clone()
    } else {
        ds.root.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(io_err(&dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|s| s.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            n.ends_with(".csv") && (n.contains("metadata") || n == "manifest.csv")
        })
        .collect();
    files.sort();
    for f in files {
        read_csv(&f, &["image_id", "id", "image", "path"], &mut out)?;
    }
    let ids: std::collections::HashSet<&str> = ds.samples.iter().map(|s| s.id.as_str()).collect();
    out.retain(|k, m| ids.contains(k.as_str()) && !m.is_empty());
    Ok(out)
}
