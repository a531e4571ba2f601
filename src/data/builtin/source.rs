//! The source of the built-in data set: the ISIC 2017 challenge folder's
//! images, labels and metadata, and the conversion of each image.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::verify::file_sha256;
use super::{JPEG_QUALITY, RESIZE_FILTER, SOURCE_PAIRS_FILE};
use crate::data::manifest::parse_label;
use crate::data::{DataError, Result, Split, io_err};

/// One image of the source and what its CSVs say about it.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) split: Split,
    pub(super) melanoma: u8,
    /// None where the split's ground truth has no such column (validation).
    pub(super) seborrheic_keratosis: Option<u8>,
    /// As in the source's metadata CSV; empty where it has none (test).
    pub(super) age: String,
    pub(super) sex: String,
    pub(super) src: PathBuf,
}

/// Reads the challenge folder: every image of its ground truth with the
/// melanoma and seborrheic keratosis labels and the metadata, in split and
/// id order.
pub(super) fn read_source(from: &Path) -> Result<Vec<Row>> {
    let desc = crate::data::isic::Descriptor::isic2017();
    if !from.is_dir() || !desc.detect(from) {
        return Err(DataError::Layout {
            path: from.into(),
            msg: format!(
                "not the ISIC 2017 challenge layout (expected {})",
                desc.splits
                    .iter()
                    .map(|s| s.ground_truth.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let ds = desc.load(from)?;
    let mut sk: HashMap<String, Option<u8>> = HashMap::new();
    let mut meta: HashMap<String, (String, String)> = HashMap::new();
    for sf in &desc.splits {
        let gt = from.join(&sf.ground_truth);
        if !gt.is_file() {
            return Err(DataError::Layout {
                path: gt,
                msg: "ground-truth CSV missing (every split is needed)".into(),
            });
        }
        sk.extend(read_optional_label(&gt, "seborrheic_keratosis")?);
        let m = from.join(format!("{}_metadata.csv", sf.images.trim_end_matches('/')));
        if m.is_file() {
            meta.extend(read_metadata(&m)?);
        }
    }
    let mut rows: Vec<Row> = ds
        .samples
        .into_iter()
        .map(|s| {
            let (age, sex) = meta.get(&s.id).cloned().unwrap_or_default();
            Row {
                seborrheic_keratosis: sk.get(&s.id).copied().flatten(),
                melanoma: s.label.unwrap_or(0),
                split: s.split,
                age,
                sex,
                src: s.path,
                id: s.id,
            }
        })
        .collect();
    rows.sort_by(|a, b| (a.split, &a.id).cmp(&(b.split, &b.id)));
    Ok(rows)
}

fn csv_reader(path: &Path) -> Result<(csv::Reader<std::fs::File>, csv::StringRecord)> {
    let csv_err = |e: csv::Error| DataError::Csv {
        path: path.into(),
        line: 1,
        msg: e.to_string(),
    };
    let mut rdr = csv::ReaderBuilder::new().from_path(path).map_err(csv_err)?;
    let h = rdr.headers().map_err(csv_err)?.clone();
    Ok((rdr, h))
}

fn column(h: &csv::StringRecord, name: &str) -> Option<usize> {
    h.iter().position(|c| c.trim() == name)
}

/// `image_id -> value` of a 0/1 column, or nothing when the CSV has no such
/// column.
fn read_optional_label(path: &Path, name: &str) -> Result<HashMap<String, Option<u8>>> {
    let (mut rdr, h) = csv_reader(path)?;
    let (Some(ic), Some(vc)) = (column(&h, "image_id"), column(&h, name)) else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| DataError::Csv {
            path: path.into(),
            line,
            msg: e.to_string(),
        })?;
        let v = rec.get(vc).unwrap_or("");
        let label = parse_label(v).ok_or_else(|| DataError::Csv {
            path: path.into(),
            line,
            msg: format!("{name} value {v:?} is not 0/1"),
        })?;
        out.insert(rec.get(ic).unwrap_or("").trim().to_string(), Some(label));
    }
    Ok(out)
}

/// `image_id -> (age_approximate, sex)`.
fn read_metadata(path: &Path) -> Result<HashMap<String, (String, String)>> {
    let (mut rdr, h) = csv_reader(path)?;
    let cols = (
        column(&h, "image_id"),
        column(&h, "age_approximate"),
        column(&h, "sex"),
    );
    let (Some(ic), Some(ac), Some(sc)) = cols else {
        return Err(DataError::Csv {
            path: path.into(),
            line: 1,
            msg: format!(
                "header must have image_id, age_approximate and sex, has {:?}",
                h.iter().collect::<Vec<_>>()
            ),
        });
    };
    let mut out = HashMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| DataError::Csv {
            path: path.into(),
            line,
            msg: e.to_string(),
        })?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim().to_string();
        out.insert(get(ic), (get(ac), get(sc)));
    }
    Ok(out)
}

/// Pairs listed in the source's `near_duplicates.csv` (`image_a`,
/// `image_b` columns), as sorted id pairs; ids the ground truth does not
/// list are skipped with a warning.
pub(super) fn read_source_pairs(
    path: &Path,
    ids: &HashMap<&str, usize>,
) -> Result<Vec<(String, String)>> {
    let (mut rdr, h) = csv_reader(path)?;
    let (Some(ac), Some(bc)) = (column(&h, "image_a"), column(&h, "image_b")) else {
        return Err(DataError::Csv {
            path: path.into(),
            line: 1,
            msg: "header must have image_a and image_b".into(),
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
        let (a, b) = (
            rec.get(ac).unwrap_or("").trim(),
            rec.get(bc).unwrap_or("").trim(),
        );
        if !ids.contains_key(a) || !ids.contains_key(b) || a == b {
            tracing::warn!(
                "{}, line {line}: pair {a:?}, {b:?} skipped (not two images of the ground truth)",
                path.display()
            );
            continue;
        }
        out.push(ordered(a, b));
    }
    Ok(out)
}

pub(super) fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

// ------------------------------------------------------------------ convert

/// Decodes an image (JPEG or PNG), resizes the whole of it to
/// `size` x `size` with [`RESIZE_FILTER`] and encodes it as JPEG at
/// [`JPEG_QUALITY`]. Also returns the source's width and height.
pub fn convert(bytes: &[u8], size: u32) -> std::result::Result<(Vec<u8>, (u32, u32)), String> {
    use crate::data::limits::{MAX_ALLOC, MAX_SIDE, MIN_SIDE};
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let format = image::guess_format(bytes).map_err(|e| e.to_string())?;
    match format {
        image::ImageFormat::Jpeg => crate::data::cache::check_jpeg(bytes)?,
        image::ImageFormat::Png => {}
        f => return Err(format!("{f:?} image: JPEG or PNG expected")),
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let rgb = reader
        .decode()
        .map_err(|e| format!("cannot decode: {e}"))?
        .to_rgb8();
    let dims = rgb.dimensions();
    if dims.0 < MIN_SIDE || dims.1 < MIN_SIDE {
        return Err(format!(
            "image is {}x{} pixels, too small (each side must be at least {MIN_SIDE})",
            dims.0, dims.1
        ));
    }
    let small = image::imageops::resize(&rgb, size, size, RESIZE_FILTER);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(&small)
        .map_err(|e| format!("cannot encode: {e}"))?;
    Ok((out, dims))
}

/// One converted image: its JPEG, the source file's SHA-256 and size.
pub(super) struct Converted {
    pub(super) jpeg: Vec<u8>,
    source_sha256: String,
    pub(super) source_dims: (u32, u32),
}

/// Converts every row's image, in parallel, in row order; the first failure
/// (in row order) is the error, naming the file.
pub(super) fn convert_all(rows: &[Row], size: u32) -> Result<Vec<Converted>> {
    let done: Vec<Result<Converted>> = rows
        .par_iter()
        .map(|r| {
            let bytes = std::fs::read(&r.src).map_err(io_err(&r.src))?;
            let (jpeg, source_dims) = convert(&bytes, size).map_err(|msg| DataError::Image {
                path: r.src.clone(),
                msg,
            })?;
            Ok(Converted {
                jpeg,
                source_sha256: hex::encode(Sha256::digest(&bytes)),
                source_dims,
            })
        })
        .collect();
    done.into_iter().collect()
}

/// `/`-separated path of `p` relative to `root`.
fn rel_path(root: &Path, p: &Path) -> String {
    let r = p.strip_prefix(root).unwrap_or(p);
    r.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// What the build read: `(path relative to the source, sha256)` of each CSV
/// it read, and the SHA-256 of the sha256sum-format list (sorted by path) of
/// every file it read, images included.
pub(super) fn source_fingerprint(
    from: &Path,
    rows: &[Row],
    conv: &[Converted],
) -> Result<(Vec<(String, String)>, String, usize)> {
    let desc = crate::data::isic::Descriptor::isic2017();
    let mut csvs = Vec::new();
    for sf in &desc.splits {
        csvs.push(sf.ground_truth.clone());
        csvs.push(format!("{}_metadata.csv", sf.images.trim_end_matches('/')));
    }
    csvs.push(SOURCE_PAIRS_FILE.to_string());
    let mut tables = Vec::new();
    for c in csvs {
        let p = from.join(&c);
        if p.is_file() {
            tables.push((c, file_sha256(&p)?));
        }
    }
    tables.sort();
    let mut all: Vec<(String, &str)> = rows
        .iter()
        .zip(conv)
        .map(|(r, c)| (rel_path(from, &r.src), c.source_sha256.as_str()))
        .collect();
    all.extend(tables.iter().map(|(p, h)| (p.clone(), h.as_str())));
    all.sort();
    let list: String = all.iter().map(|(p, h)| format!("{h}  {p}\n")).collect();
    let (n, sha) = (all.len(), hex::encode(Sha256::digest(list.as_bytes())));
    drop(all);
    Ok((tables, sha, n))
}

/// The source images' sizes, in words.
pub(super) fn source_dims(conv: &[Converted]) -> String {
    let dims: BTreeSet<(u32, u32)> = conv.iter().map(|c| c.source_dims).collect();
    match (dims.first(), dims.last()) {
        (Some(a), Some(b)) if a == b => format!("all {}x{}", a.0, a.1),
        (Some(a), Some(b)) => format!(
            "{} different sizes, {}x{} to {}x{}",
            dims.len(),
            a.0,
            a.1,
            b.0,
            b.1
        ),
        _ => "none".into(),
    }
}
