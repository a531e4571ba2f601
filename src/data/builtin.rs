//! The built-in data set: a small real copy of ISIC 2017 shipped in the
//! repository ([`SHIPPED_DIR`]), made from the challenge's files by
//! `pirlkit make-builtin` ([`build`]) and checked against its `SHA256SUMS`
//! ([`verify`]) before use ([`open_verified`], [`open_shipped`]).
//!
//! The folder holds `images/<image_id>.jpg` (the images of the three
//! challenge splits, each resized as a whole to `size` x `size`),
//! `manifest.csv` (read by [`super::manifest::read_manifest`], so
//! [`Dataset::open`] takes the folder as it is), `duplicates.csv` (every
//! exact or near-duplicate pair and what the build did with it), `README.md`
//! and `SHA256SUMS` (sha256sum format, sorted by path, over every other file).
//!
//! The same source gives the same bytes on every run and machine: images in
//! sorted order; decoding by zune-jpeg (through `image`), whose IDCT, colour
//! conversion and upsampling are integer code with SIMD paths that match its
//! scalar path bit for bit; resizing by `image`'s Triangle filter (f32
//! arithmetic, no platform math functions); encoding by `image`'s baseline
//! JPEG encoder at quality [`JPEG_QUALITY`]; CSVs and the README written from
//! sorted data, with no dates and no local paths.
//!
//! Near-duplicates come from pirlkit's audit of the resized images, and from
//! the source's `near_duplicates.csv` where it has one. The two images of a
//! pair inside one split share a `group`. A group cannot span splits while
//! the challenge's splits are kept (the manifest reader refuses it as a
//! leak), so of a pair across splits the image in the earlier split (train
//! before val before test) is left out: the test split stays whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use serde::Serialize;

use super::{DataError, Dataset, ImageCache, Sample, Split, io_err};
use pairs::{check_audit, describe_pairs, found_pairs, resolve};
use source::{
    Converted, Row, convert_all, read_source, read_source_pairs, source_dims, source_fingerprint,
};
use verify::sums_of;

mod pairs;
mod readme;
mod source;
mod verify;

pub use source::convert;
pub use verify::{list_files, verify};

/// Where the shipped copy lives, relative to the repository root.
pub const SHIPPED_DIR: &str = "datasets/isic2017-mini";
/// Side of the shipped images (`make-builtin --size`'s default).
pub const DEFAULT_SIZE: u32 = 64;
/// Sides `make-builtin` accepts.
pub const SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=512;
/// JPEG quality of the written images (fixed: part of what makes the bytes).
pub const JPEG_QUALITY: u8 = 90;
/// Resize filter (fixed, for the same reason).
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;
/// Soft size budget of the shipped folder; a build over it warns.
pub const MAX_BYTES: u64 = 10_000_000;

pub const SUMS_FILE: &str = "SHA256SUMS";
pub const MANIFEST_FILE: &str = "manifest.csv";
pub const DUPLICATES_FILE: &str = "duplicates.csv";
pub const README_FILE: &str = "README.md";
pub const IMAGES_DIR: &str = "images";
/// The source's own list of near-duplicate pairs (optional).
pub const SOURCE_PAIRS_FILE: &str = "near_duplicates.csv";

/// The shipped folder in the checkout this binary was built from.
pub fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_DIR)
}

/// The shipped folder: `./datasets/isic2017-mini` when the working directory
/// is a checkout, else the one of the checkout this binary was built from.
pub fn locate() -> Option<PathBuf> {
    [PathBuf::from(SHIPPED_DIR), shipped_dir()]
        .into_iter()
        .find(|d| d.join(SUMS_FILE).is_file() && d.join(MANIFEST_FILE).is_file())
}

/// The shipped data set, verified against its checksums and opened.
pub fn open_shipped() -> crate::Result<Dataset> {
    let dir = locate().ok_or_else(|| DataError::Layout {
        path: PathBuf::from(SHIPPED_DIR),
        msg: format!(
            "the built-in data set is missing (looked in ./{SHIPPED_DIR} and {}); rebuild it with `pirlkit make-builtin --from <ISIC 2017 folder> --size {DEFAULT_SIZE} --out {SHIPPED_DIR}`",
            shipped_dir().display()
        ),
    })?;
    open_verified(&dir)
}

/// Verifies `dir` against its `SHA256SUMS` ([`verify`]), then opens its
/// manifest.
pub fn open_verified(dir: &Path) -> crate::Result<Dataset> {
    verify(dir)?;
    Ok(super::manifest::read_manifest(&dir.join(MANIFEST_FILE))?)
}

// -------------------------------------------------------------------- build

/// A pair of (near-)identical images and what the build did with it.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicatePair {
    pub id_a: String,
    pub split_a: Split,
    pub id_b: String,
    pub split_b: Split,
    /// What pirlkit's audit of the resized images says: `exact`,
    /// `near (score 0.123)`, or `not found`.
    pub audit: String,
    /// Listed in the source's `near_duplicates.csv`.
    pub listed: bool,
    /// What the build did: `grouped as <id>`, or which image was left out.
    pub resolution: String,
}

/// Images and melanomas of one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitCounts {
    pub images: usize,
    pub melanoma: usize,
    /// None where the source does not give it (the validation split).
    pub seborrheic_keratosis: Option<usize>,
}

/// What [`build`] made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub out: PathBuf,
    pub size: u32,
    pub counts: BTreeMap<Split, SplitCounts>,
    /// Bytes of every file, and of the images alone.
    pub bytes: u64,
    pub image_bytes: u64,
    pub pairs: Vec<DuplicatePair>,
    /// Images left out as duplicates across splits: (id, split).
    pub left_out: Vec<(String, Split)>,
    /// SHA-256 of the list of every source file read (see the README).
    pub source_sha256: String,
    /// What pirlkit's audit finds in the built folder.
    pub audit: super::audit::AuditCounts,
}

/// Everything the files are written from.
struct Plan<'a> {
    rows: &'a [Row],
    conv: &'a [Converted],
    size: u32,
    /// Sorted id pairs of the source's near_duplicates.csv.
    listed: BTreeSet<(String, String)>,
    tables: Vec<(String, String)>,
    source_sha256: String,
    source_files: usize,
}

/// Builds the built-in data set from the ISIC 2017 challenge folder `from`
/// into `out` (replaced atomically if it holds an earlier build; a folder
/// holding anything else is refused). See the module documentation.
pub fn build(from: &Path, out: &Path, size: u32) -> crate::Result<BuildReport> {
    if !SIZE_RANGE.contains(&size) {
        return Err(crate::Error::Config(format!(
            "size {size} px: must be {} to {}",
            SIZE_RANGE.start(),
            SIZE_RANGE.end()
        )));
    }
    check_out(out)?;
    let rows = read_source(from)?;
    tracing::info!(
        "{}: {} images, resizing to {size}x{size}",
        from.display(),
        rows.len()
    );
    let conv = convert_all(&rows, size)?;
    let ids: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let pairs_csv = from.join(SOURCE_PAIRS_FILE);
    let listed = if pairs_csv.is_file() {
        read_source_pairs(&pairs_csv, &ids)?.into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let (tables, source_sha256, source_files) = source_fingerprint(from, &rows, &conv)?;
    let plan = Plan {
        rows: &rows,
        conv: &conv,
        size,
        listed,
        tables,
        source_sha256,
        source_files,
    };
    let scratch = sibling(out, "audit")?;
    let mut report = None;
    let res = crate::io::write_dir_atomic(out, |tmp| {
        report = Some(fill(tmp, &plan, &scratch)?);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    res?;
    let mut report = report.ok_or_else(|| DataError::Other("make-builtin wrote nothing".into()))?;
    report.out = out.to_path_buf();
    Ok(report)
}

/// Refuses an `out` that is a file, or a non-empty folder without
/// `SHA256SUMS` (not an earlier build): replacing it would delete it.
fn check_out(out: &Path) -> super::Result<()> {
    if out.is_file() {
        return Err(DataError::Layout {
            path: out.into(),
            msg: "is a file; the output must be a folder".into(),
        });
    }
    if out.is_dir() {
        let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
        if entries.next().is_some() && !out.join(SUMS_FILE).is_file() {
            return Err(DataError::Layout {
                path: out.into(),
                msg: format!(
                    "holds files and is not an earlier build (no {SUMS_FILE}); it would be replaced: choose a new or empty folder"
                ),
            });
        }
    }
    Ok(())
}

/// A fresh scratch folder beside `out` (for the audit's cache).
fn sibling(out: &Path, what: &str) -> super::Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let p = parent.join(format!(".{name}.{what}.{}.tmp", std::process::id()));
    if p.exists() {
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    Ok(p)
}

fn write_synced(path: &Path, bytes: &[u8]) -> super::Result<()> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

fn image_rel(id: &str) -> String {
    format!("{IMAGES_DIR}/{id}.jpg")
}

/// Writes the folder's files into `tmp`: images, pairs found by the audit
/// (and listed by the source), the resolution, the manifest, then a second
/// audit that must find no leak and only the grouped pairs, the README and
/// the checksums.
fn fill(tmp: &Path, plan: &Plan, scratch: &Path) -> crate::Result<BuildReport> {
    let rows = plan.rows;
    let img_dir = tmp.join(IMAGES_DIR);
    std::fs::create_dir_all(&img_dir).map_err(io_err(&img_dir))?;
    for (r, c) in rows.iter().zip(plan.conv) {
        write_synced(&tmp.join(image_rel(&r.id)), &c.jpeg)?;
    }
    let cache = ImageCache::new(scratch.join("cache"));
    let staged = Dataset {
        name: "staged".into(),
        root: tmp.into(),
        samples: rows
            .iter()
            .map(|r| Sample {
                id: r.id.clone(),
                path: tmp.join(image_rel(&r.id)),
                label: Some(r.melanoma),
                aux: None,
                split: r.split,
                group: r.id.clone(),
            })
            .collect(),
        splits_assigned: false,
    };
    let first = super::audit::audit(&staged, &cache, &scratch.join("audit-all.csv"))?;
    let found = found_pairs(rows, &first);
    let (groups, left) = resolve(rows, found.keys().chain(&plan.listed));
    let pairs = describe_pairs(rows, &found, &plan.listed, &groups, &left);
    for (r, _) in rows.iter().zip(&left).filter(|(_, l)| **l) {
        let p = tmp.join(image_rel(&r.id));
        std::fs::remove_file(&p).map_err(io_err(&p))?;
    }
    let m = tmp.join(MANIFEST_FILE);
    crate::io::write_atomic(&m, &manifest_csv(rows, &groups, &left)?)?;
    let d = tmp.join(DUPLICATES_FILE);
    crate::io::write_atomic(&d, &duplicates_csv(&pairs)?)?;
    let built = Dataset::open(tmp)?;
    let last = super::audit::audit(&built, &cache, &scratch.join("audit-built.csv"))?;
    check_audit(&last, &pairs)?;
    let counts = split_counts(rows, &left);
    let image_bytes: u64 = rows
        .iter()
        .zip(plan.conv)
        .zip(&left)
        .filter(|(_, l)| !**l)
        .map(|((_, c), _)| c.jpeg.len() as u64)
        .sum();
    let left_out: Vec<(String, Split)> = rows
        .iter()
        .zip(&left)
        .filter(|(_, l)| **l)
        .map(|(r, _)| (r.id.clone(), r.split))
        .collect();
    let mut report = BuildReport {
        out: tmp.into(),
        size: plan.size,
        counts,
        bytes: 0,
        image_bytes,
        pairs,
        left_out,
        source_sha256: plan.source_sha256.clone(),
        audit: last.counts.clone(),
    };
    let readme = readme::readme(plan, &report, &source_dims(plan.conv));
    crate::io::write_atomic(&tmp.join(README_FILE), readme.as_bytes())?;
    crate::io::write_atomic(&tmp.join(SUMS_FILE), sums_of(tmp)?.as_bytes())?;
    for rel in list_files(tmp)? {
        let p = tmp.join(&rel);
        report.bytes += std::fs::metadata(&p).map_err(io_err(&p))?.len();
    }
    Ok(report)
}

/// Pairs the audit reports (exact, near), as sorted id pairs with a note.
fn csv_bytes(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> super::Result<Vec<u8>> {
    let err = |e: String| DataError::Other(format!("writing a CSV: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(header).map_err(|e| err(e.to_string()))?;
    for r in rows {
        w.write_record(&r).map_err(|e| err(e.to_string()))?;
    }
    w.into_inner().map_err(|e| err(e.to_string()))
}

/// The manifest's columns: the manifest reader's `path,label,split,group`,
/// and `id`, `seborrheic_keratosis`, `age_approximate`, `sex` (which it
/// ignores).
pub const MANIFEST_COLUMNS: [&str; 8] = [
    "id",
    "path",
    "label",
    "split",
    "group",
    "seborrheic_keratosis",
    "age_approximate",
    "sex",
];

fn manifest_csv(rows: &[Row], groups: &[String], left: &[bool]) -> super::Result<Vec<u8>> {
    let lines = rows
        .iter()
        .zip(groups)
        .zip(left)
        .filter(|(_, l)| !**l)
        .map(|((r, g), _)| {
            vec![
                r.id.clone(),
                image_rel(&r.id),
                r.melanoma.to_string(),
                r.split.as_str().to_string(),
                g.clone(),
                r.seborrheic_keratosis
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                r.age.clone(),
                r.sex.clone(),
            ]
        });
    csv_bytes(&MANIFEST_COLUMNS, lines)
}

fn duplicates_csv(pairs: &[DuplicatePair]) -> super::Result<Vec<u8>> {
    let lines = pairs.iter().map(|p| {
        vec![
            p.id_a.clone(),
            p.split_a.as_str().to_string(),
            p.id_b.clone(),
            p.split_b.as_str().to_string(),
            p.audit.clone(),
            if p.listed { "yes" } else { "no" }.to_string(),
            p.resolution.clone(),
        ]
    });
    csv_bytes(
        &[
            "image_a",
            "split_a",
            "image_b",
            "split_b",
            "audit",
            "listed_by_source",
            "resolution",
        ],
        lines,
    )
}

fn split_counts(rows: &[Row], left: &[bool]) -> BTreeMap<Split, SplitCounts> {
    let mut out: BTreeMap<Split, SplitCounts> = BTreeMap::new();
    let mut sk_missing = BTreeSet::new();
    for (r, _) in rows.iter().zip(left).filter(|(_, l)| !**l) {
        let c = out.entry(r.split).or_default();
        c.images += 1;
        c.melanoma += r.melanoma as usize;
        match r.seborrheic_keratosis {
            Some(v) => *c.seborrheic_keratosis.get_or_insert(0) += v as usize,
            None => {
                sk_missing.insert(r.split);
            }
        }
    }
    for s in sk_missing {
        if let Some(c) = out.get_mut(&s) {
            c.seborrheic_keratosis = None;
        }
    }
    out
}
