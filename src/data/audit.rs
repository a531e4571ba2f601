//! Dataset audit: what would make an evaluation leak or lie, found before
//! training. Exact duplicates (same content hash), near-duplicates (a DCT
//! perceptual hash over the eight flips/rotations finds candidate pairs, a
//! pixel check on normalised 32x32 grey thumbnails confirms them), groups on
//! both sides of a split, unreadable files (each one, never stopping at the
//! first), odd sizes, label rows without an image and images without a label.
//!
//! Every finding is one row of a CSV (`kind,split_a,id_a,split_b,id_b,detail`)
//! written atomically; [`AuditReport`] holds the same lists and their counts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{DataError, Dataset, ImageCache, Sample, Split};

mod phash;
use phash::{TRANSFORMS, dct_table, grey_thumb, mean_abs_diff_within, orient, phash};

/// Side of the cached images the audit reads (`cache.load_all(.., 64)`).
pub const THUMB_CACHE_SIZE: usize = 64;
/// Side of the grey thumbnail that is hashed and compared.
pub const THUMB: usize = 32;
/// Candidate pairs: perceptual-hash Hamming distance (of 63 bits) at most
/// this, in one of the eight flips/rotations of the second image.
pub const MAX_HAMMING: u32 = 16;
/// A candidate is confirmed when, in some orientation,
/// `mean_abs_diff + HAMMING_WEIGHT * hamming <= MAX_SCORE`, where
/// `mean_abs_diff` compares the two z-scored 32x32 grey thumbnails (each with
/// mean 0, standard deviation 1, so brightness and contrast changes do not
/// count). Tuned on ISIC 2017: its listed near-duplicates score at most 0.214
/// (two shots of one lesion), re-coloured copies of one image 0.01-0.25, and
/// the closest pairs of different lesions from the same camera 0.249 and up.
pub const HAMMING_WEIGHT: f32 = 0.01;
pub const MAX_SCORE: f32 = 0.23;
/// An image is "small" when its shorter side is under this fraction of the
/// dataset's median shorter side.
pub const SMALL_FRACTION: f64 = 0.5;
/// An image is "non-square" when its long/short side ratio is above this and
/// above 1.25x the dataset's median ratio (the centre crop then drops over a
/// third of it).
pub const MAX_ASPECT: f64 = 1.5;

/// A pair of images with the same or nearly the same content.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicatePair {
    pub split_a: Split,
    pub id_a: String,
    pub split_b: Split,
    pub id_b: String,
    /// The two images are in different splits: a leak.
    pub cross_split: bool,
    /// The two images are in the same group (expected, not a leak).
    pub same_group: bool,
    /// Perceptual-hash Hamming distance (0 for exact duplicates).
    pub hamming: u32,
    /// Mean absolute difference of the z-scored 32x32 grey thumbnails.
    pub mean_abs_diff: f32,
    /// `mean_abs_diff + HAMMING_WEIGHT * hamming` (confirmed when <= MAX_SCORE).
    pub score: f32,
    /// Orientation of `b` that matches `a` ("identity", "hflip", ...).
    pub transform: String,
}

/// A group (lesion, patient) with images in two splits.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLeak {
    pub group: String,
    pub split_a: Split,
    /// First image of the group in `split_a`.
    pub id_a: String,
    pub count_a: usize,
    pub split_b: Split,
    pub id_b: String,
    pub count_b: usize,
}

/// A finding about one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileIssue {
    /// None for image files that are not in the dataset.
    pub split: Option<Split>,
    pub id: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditCounts {
    pub images: usize,
    pub exact_duplicate_pairs: usize,
    pub exact_duplicate_pairs_cross_split: usize,
    pub near_duplicate_pairs: usize,
    pub near_duplicate_pairs_cross_split: usize,
    pub group_leaks: usize,
    pub unreadable: usize,
    pub odd_sizes: usize,
    pub missing_images: usize,
    pub unlabeled: usize,
    pub unlisted_images: usize,
    /// Rows of the CSV.
    pub findings: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub dataset: String,
    /// Images per split.
    pub split_sizes: BTreeMap<Split, usize>,
    pub exact_duplicates: Vec<DuplicatePair>,
    pub near_duplicates: Vec<DuplicatePair>,
    pub group_leaks: Vec<GroupLeak>,
    /// Files that cannot be read or decoded, with each one's error.
    pub unreadable: Vec<FileIssue>,
    /// Much smaller than the rest, or far from square.
    pub odd_sizes: Vec<FileIssue>,
    /// Label rows whose image file does not exist.
    pub missing_images: Vec<FileIssue>,
    /// Images without a label.
    pub unlabeled: Vec<FileIssue>,
    /// Image files beside the dataset's images that no label row lists.
    pub unlisted_images: Vec<FileIssue>,
    pub counts: AuditCounts,
    /// Where the findings were written.
    pub csv: PathBuf,
}

impl AuditReport {
    /// True when the splits leak: duplicates or groups across splits.
    pub fn has_leaks(&self) -> bool {
        self.counts.exact_duplicate_pairs_cross_split
            + self.counts.near_duplicate_pairs_cross_split
            + self.counts.group_leaks
            > 0
    }

    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let sizes: Vec<String> = self
            .split_sizes
            .iter()
            .map(|(s, n)| format!("{} {n}", s.as_str()))
            .collect();
        let mut out = format!(
            "audit of {}: {} images ({})\n",
            self.dataset,
            c.images,
            sizes.join(", ")
        );
        out += &format!(
            "duplicates: {} exact pairs ({} across splits), {} near-duplicate pairs ({} across splits)\n",
            c.exact_duplicate_pairs,
            c.exact_duplicate_pairs_cross_split,
            c.near_duplicate_pairs,
            c.near_duplicate_pairs_cross_split
        );
        out += &format!("groups on both sides of a split: {}\n", c.group_leaks);
        out += &format!(
            "unreadable: {}, odd sizes: {}, label rows without an image: {}, images without a label: {} (+{} image files not in the labels)\n",
            c.unreadable, c.odd_sizes, c.missing_images, c.unlabeled, c.unlisted_images
        );
        if self.has_leaks() {
            out += "LEAK: the same image or group is in more than one split; drop or regroup those images before evaluating\n";
        }
        out += &format!("{} findings written to {}", c.findings, self.csv.display());
        out
    }
}

/// What the audit learns about one sample.
struct Probe {
    missing: bool,
    error: Option<String>,
    sha: Option<[u8; 32]>,
    dims: Option<(u32, u32)>,
    /// z-scored grey thumbnail, THUMB x THUMB.
    thumb: Vec<f32>,
    /// Perceptual hash of each orientation (empty when unreadable).
    hashes: Vec<u64>,
}

/// Audits `ds`, reading images through `cache` (64 px entries), and writes
/// every finding to `out_csv`.
pub fn audit(ds: &Dataset, cache: &ImageCache, out_csv: &Path) -> crate::Result<AuditReport> {
    let sub = cache.dir.join(THUMB_CACHE_SIZE.to_string());
    std::fs::create_dir_all(&sub).map_err(|source| DataError::Io {
        path: sub.clone(),
        source,
    })?;
    let dct = dct_table();
    let probes: Vec<Probe> = ds
        .samples
        .par_iter()
        .map(|s| probe(s, cache, &dct))
        .collect();
    let samples = &ds.samples;

    let mut split_sizes = BTreeMap::new();
    for s in samples {
        *split_sizes.entry(s.split).or_insert(0) += 1;
    }
    let (missing_images, unreadable, unlabeled) = file_issues(ds, &probes);
    let unlisted_images = unlisted(ds);
    let (exact_duplicates, exact_set) = exact_duplicates(samples, &probes);
    let near_duplicates = near_duplicates(samples, &probes, &exact_set);
    let group_leaks = group_leaks(samples);
    let odd_sizes = odd_sizes(samples, &probes);

    let counts = AuditCounts {
        images: samples.len(),
        exact_duplicate_pairs: exact_duplicates.len(),
        exact_duplicate_pairs_cross_split: exact_duplicates
            .iter()
            .filter(|p| p.cross_split)
            .count(),
        near_duplicate_pairs: near_duplicates.len(),
        near_duplicate_pairs_cross_split: near_duplicates.iter().filter(|p| p.cross_split).count(),
        group_leaks: group_leaks.len(),
        unreadable: unreadable.len(),
        odd_sizes: odd_sizes.len(),
        missing_images: missing_images.len(),
        unlabeled: unlabeled.len(),
        unlisted_images: unlisted_images.len(),
        findings: 0,
    };
    let mut report = AuditReport {
        dataset: ds.name.clone(),
        split_sizes,
        exact_duplicates,
        near_duplicates,
        group_leaks,
        unreadable,
        odd_sizes,
        missing_images,
        unlabeled,
        unlisted_images,
        counts,
        csv: out_csv.to_path_buf(),
    };
    let (bytes, rows) = to_csv(&report)?;
    report.counts.findings = rows;
    crate::io::write_atomic(out_csv, &bytes)?;
    Ok(report)
}

/// Listed images that are missing, unreadable or without a label.
fn file_issues(ds: &Dataset, probes: &[Probe]) -> (Vec<FileIssue>, Vec<FileIssue>, Vec<FileIssue>) {
    let mut missing_images = Vec::new();
    let mut unreadable = Vec::new();
    let mut unlabeled = Vec::new();
    for (s, p) in ds.samples.iter().zip(probes) {
        if p.missing {
            missing_images.push(issue(
                s,
                format!("image file not found: {}", rel(&ds.root, &s.path)),
            ));
        } else if let Some(e) = &p.error {
            unreadable.push(issue(s, e.clone()));
        }
        if s.label.is_none() {
            unlabeled.push(issue(s, "no label".into()));
        }
    }
    (missing_images, unreadable, unlabeled)
}

/// Pairs of byte-identical files (same SHA-256), and the set of their
/// indices `(i, j)`, `i < j`, which the near-duplicate search skips.
fn exact_duplicates(
    samples: &[Sample],
    probes: &[Probe],
) -> (Vec<DuplicatePair>, HashSet<(usize, usize)>) {
    let mut by_sha: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, p) in probes.iter().enumerate() {
        if let Some(h) = p.sha {
            by_sha.entry(h).or_default().push(i);
        }
    }
    let mut pairs = Vec::new();
    let mut set = HashSet::new();
    let mut groups: Vec<&Vec<usize>> = by_sha.values().filter(|v| v.len() > 1).collect();
    groups.sort();
    for v in groups {
        for (k, &i) in v.iter().enumerate() {
            for &j in &v[k + 1..] {
                set.insert((i, j));
                pairs.push(pair(&samples[i], &samples[j], 0, 0.0, 0.0, "identity"));
            }
        }
    }
    (pairs, set)
}

/// Near-duplicates: every pair of decoded images not already an exact
/// duplicate, candidates by perceptual hash (under any of the 8
/// orientations of the second), then confirmed on the pixels; in index
/// order.
fn near_duplicates(
    samples: &[Sample],
    probes: &[Probe],
    exact: &HashSet<(usize, usize)>,
) -> Vec<DuplicatePair> {
    let usable: Vec<usize> = (0..probes.len())
        .filter(|&i| !probes[i].hashes.is_empty())
        .collect();
    let mut near: Vec<(usize, usize, u32, f32, f32, usize)> = usable
        .par_iter()
        .enumerate()
        .flat_map_iter(|(k, &i)| {
            let usable = &usable;
            usable[k + 1..].iter().filter_map(move |&j| {
                if exact.contains(&(i, j)) {
                    return None;
                }
                let (score, ham, mad, t) = best_match(&probes[i], &probes[j])?;
                Some((i, j, ham, mad, score, t))
            })
        })
        .collect();
    near.sort_by_key(|x| (x.0, x.1));
    near.iter()
        .map(|&(i, j, ham, mad, score, t)| {
            pair(&samples[i], &samples[j], ham, mad, score, TRANSFORMS[t])
        })
        .collect()
}

/// The orientation `t` of `b` closest to `a`, if within [`MAX_SCORE`]:
/// `(score, hamming distance, mean absolute difference, t)`, the score
/// being the pixel difference plus [`HAMMING_WEIGHT`] per differing hash
/// bit.
fn best_match(a: &Probe, b: &Probe) -> Option<(f32, u32, f32, usize)> {
    let ha = a.hashes[0];
    let mut best: Option<(f32, u32, f32, usize)> = None;
    for (t, hb) in b.hashes.iter().enumerate() {
        let ham = (ha ^ hb).count_ones();
        if ham > MAX_HAMMING {
            continue;
        }
        let budget = best.map_or(MAX_SCORE, |b| b.0.min(MAX_SCORE)) - HAMMING_WEIGHT * ham as f32;
        let Some(mad) = mean_abs_diff_within(&a.thumb, &orient(&b.thumb, t), budget) else {
            continue;
        };
        let score = mad + HAMMING_WEIGHT * ham as f32;
        if best.is_none_or(|b| score < b.0) {
            best = Some((score, ham, mad, t));
        }
    }
    best.filter(|b| b.0 <= MAX_SCORE)
}

/// Groups (a patient or lesion) with images on both sides of a split: one
/// row per pair of splits a group spans.
fn group_leaks(samples: &[Sample]) -> Vec<GroupLeak> {
    let mut by_group: BTreeMap<&str, BTreeMap<Split, Vec<usize>>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_group
            .entry(&s.group)
            .or_default()
            .entry(s.split)
            .or_default()
            .push(i);
    }
    let mut leaks = Vec::new();
    for (g, splits) in &by_group {
        let v: Vec<(&Split, &Vec<usize>)> = splits.iter().collect();
        for (k, (sa, ia)) in v.iter().enumerate() {
            for (sb, ib) in &v[k + 1..] {
                leaks.push(GroupLeak {
                    group: g.to_string(),
                    split_a: **sa,
                    id_a: samples[ia[0]].id.clone(),
                    count_a: ia.len(),
                    split_b: **sb,
                    id_b: samples[ib[0]].id.clone(),
                    count_b: ib.len(),
                });
            }
        }
    }
    leaks
}

fn issue(s: &Sample, detail: String) -> FileIssue {
    FileIssue {
        split: Some(s.split),
        id: s.id.clone(),
        detail,
    }
}

fn pair(a: &Sample, b: &Sample, hamming: u32, mad: f32, score: f32, t: &str) -> DuplicatePair {
    DuplicatePair {
        split_a: a.split,
        id_a: a.id.clone(),
        split_b: b.split,
        id_b: b.id.clone(),
        cross_split: a.split != b.split,
        same_group: a.group == b.group,
        hamming,
        mean_abs_diff: mad,
        score,
        transform: t.to_string(),
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn probe(s: &Sample, cache: &ImageCache, dct: &[[f32; THUMB]; 8]) -> Probe {
    let mut p = Probe {
        missing: false,
        error: None,
        sha: None,
        dims: None,
        thumb: Vec::new(),
        hashes: Vec::new(),
    };
    if !s.path.is_file() {
        p.missing = !s.path.exists();
        if !p.missing {
            p.error = Some("not a file".into());
        }
        return p;
    }
    let bytes = match std::fs::read(&s.path) {
        Ok(b) => b,
        Err(e) => {
            p.error = Some(format!("cannot read: {e}"));
            return p;
        }
    };
    p.sha = Some(Sha256::digest(&bytes).into());
    p.dims = dimensions(&bytes);
    let img = match cache.load_all(std::slice::from_ref(s), THUMB_CACHE_SIZE) {
        Ok(mut v) => v.remove(0),
        Err(e) => {
            p.error = Some(match e {
                DataError::Image { msg, .. } => msg,
                DataError::Io { path, source } if path == s.path => {
                    format!("cannot read: {source}")
                }
                other => other.to_string(),
            });
            return p;
        }
    };
    p.thumb = grey_thumb(&img);
    p.hashes = (0..TRANSFORMS.len())
        .map(|t| phash(&orient(&p.thumb, t), dct))
        .collect();
    p
}

/// Width and height from the file header, without decoding.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if super::dicom::is_dicom(bytes) {
        return super::dicom::dicom_dimensions(bytes).ok();
    }
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn odd_sizes(samples: &[Sample], probes: &[Probe]) -> Vec<FileIssue> {
    let dims: Vec<(usize, (u32, u32))> = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.error.is_none())
        .filter_map(|(i, p)| p.dims.map(|d| (i, d)))
        .collect();
    if dims.is_empty() {
        return Vec::new();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let short = |&(w, h): &(u32, u32)| w.min(h) as f64;
    let aspect = |&(w, h): &(u32, u32)| w.max(h) as f64 / w.min(h).max(1) as f64;
    let med_short = median(dims.iter().map(|(_, d)| short(d)).collect());
    let med_aspect = median(dims.iter().map(|(_, d)| aspect(d)).collect());
    let mut out = Vec::new();
    for (i, d) in &dims {
        let mut why = Vec::new();
        if short(d) < SMALL_FRACTION * med_short {
            why.push(format!(
                "much smaller than the rest (shorter side {}, median {})",
                short(d),
                med_short
            ));
        }
        if aspect(d) > MAX_ASPECT && aspect(d) > 1.25 * med_aspect {
            why.push(format!(
                "far from square (aspect {:.2}, the centre crop drops {:.0}% of it)",
                aspect(d),
                100.0 * (1.0 - 1.0 / aspect(d))
            ));
        }
        if !why.is_empty() {
            out.push(issue(
                &samples[*i],
                format!("{}x{}: {}", d.0, d.1, why.join("; ")),
            ));
        }
    }
    out
}

/// Image files in the dataset's image folders (same extensions as its
/// images) that no sample lists.
fn unlisted(ds: &Dataset) -> Vec<FileIssue> {
    let mut listed: HashSet<&Path> = HashSet::new();
    let mut dirs: BTreeSet<&Path> = BTreeSet::new();
    let mut exts: HashSet<String> = HashSet::new();
    for s in &ds.samples {
        listed.insert(&s.path);
        if let Some(d) = s.path.parent() {
            dirs.insert(d);
        }
        if let Some(e) = s.path.extension() {
            exts.insert(e.to_string_lossy().to_ascii_lowercase());
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ext = f
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if name.starts_with('.')
                || !ext.is_some_and(|e| exts.contains(&e))
                || !f.is_file()
                || listed.contains(f.as_path())
            {
                continue;
            }
            let id = f
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(name);
            out.push(FileIssue {
                split: None,
                id,
                detail: format!("image file not in the labels: {}", rel(&ds.root, &f)),
            });
        }
    }
    out
}

fn to_csv(r: &AuditReport) -> crate::Result<(Vec<u8>, usize)> {
    let sp = |x: Option<Split>| x.map(|s| s.as_str().to_string()).unwrap_or_default();
    let mut rows: Vec<[String; 6]> = Vec::new();
    for (kind, list) in [
        ("exact_duplicate", &r.exact_duplicates),
        ("near_duplicate", &r.near_duplicates),
    ] {
        for p in list {
            let mut d = if kind == "exact_duplicate" {
                "identical files".to_string()
            } else {
                format!(
                    "phash hamming {}, mean abs diff {:.3} (z-scored 32x32 grey), score {:.3}, b {}",
                    p.hamming, p.mean_abs_diff, p.score, p.transform
                )
            };
            if p.cross_split {
                d += "; across splits";
            }
            if p.same_group {
                d += "; same group";
            }
            rows.push([
                kind.into(),
                sp(Some(p.split_a)),
                p.id_a.clone(),
                sp(Some(p.split_b)),
                p.id_b.clone(),
                d,
            ]);
        }
    }
    for g in &r.group_leaks {
        let d = format!(
            "group {} has {} image(s) in {} and {} in {}",
            g.group,
            g.count_a,
            g.split_a.as_str(),
            g.count_b,
            g.split_b.as_str()
        );
        rows.push([
            "group_leak".into(),
            sp(Some(g.split_a)),
            g.id_a.clone(),
            sp(Some(g.split_b)),
            g.id_b.clone(),
            d,
        ]);
    }
    for (kind, list) in [
        ("unreadable", &r.unreadable),
        ("odd_size", &r.odd_sizes),
        ("missing_image", &r.missing_images),
        ("unlabeled", &r.unlabeled),
        ("unlisted_image", &r.unlisted_images),
    ] {
        for f in list {
            rows.push([
                kind.into(),
                sp(f.split),
                f.id.clone(),
                String::new(),
                String::new(),
                f.detail.clone(),
            ]);
        }
    }
    let err = |e: String| crate::Error::Report(format!("audit CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["kind", "split_a", "id_a", "split_b", "id_b", "detail"])
        .map_err(|e| err(e.to_string()))?;
    for row in &rows {
        w.write_record(row).map_err(|e| err(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| err(e.to_string()))?;
    Ok((bytes, rows.len()))
}
