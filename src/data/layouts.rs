//! More dataset layouts, tried by [`Dataset::open_with`] after the ISIC
//! challenge layout and `manifest.csv`:
//!
//! - **HAM10000-style metadata**: a CSV with `lesion_id,image_id,dx` (other
//!   columns ignored) beside `<image_id>.jpg` files in its folder or its
//!   sub-folders (HAM10000 ships `HAM10000_images_part_1/` and `_part_2/`).
//!   Label: `dx == "mel"` (or the `positive` dx code); group: `lesion_id`, so
//!   every image of a lesion lands in the same split (70/15/15 by group).
//! - **Folder per class**: `root/<class>/*.{jpg,jpeg,png,dcm}` with exactly
//!   two class folders (70/15/15 split, each image its own group), or
//!   `root/{train,val,test}/<class>/...` with the split given by the folders.
//!   The positive class is the folder named by `positive`, else the one named
//!   `melanoma`, `malignant`, `positive` or `1`.
//!
//! Every layout rejects duplicate image ids and checks that no group is on
//! both sides of a split.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::manifest::{assign_splits, check_groups};
use super::{DataError, Dataset, Result, Sample, Split, io_err};

/// Image file extensions the folder layouts pick up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "dcm"];

/// Folder names taken as the positive class when none is named.
pub const DEFAULT_POSITIVE: [&str; 4] = ["melanoma", "malignant", "positive", "1"];

/// The HAM10000 diagnosis code of the positive class by default.
pub const HAM_POSITIVE_DX: &str = "mel";

/// Sub-folder depth searched for a metadata CSV's images.
const HAM_SEARCH_DEPTH: usize = 3;

/// How [`Dataset::open_with`] reads a dataset.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Folder-per-class: the positive class folder's name. HAM-style
    /// metadata: the positive `dx` code (default `mel`). Other layouts
    /// carry their own labels and refuse it.
    pub positive: Option<String>,
}

fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sorted (name, path) of the non-hidden entries of `dir` that are folders
/// (`dirs == true`) or files.
fn list(dir: &Path, dirs: bool) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if hidden(&name) {
            continue;
        }
        // Follows symbolic links (a class folder may be one); read_dir never
        // recurses here, so a link loop cannot trap us.
        if (dirs && p.is_dir()) || (!dirs && p.is_file()) {
            out.push((name, p));
        }
    }
    out.sort();
    Ok(out)
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list(dir, false)?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| is_image_file(p))
        .collect())
}

fn dataset_name(root: &Path) -> String {
    root.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Rejects two samples with one id, naming both files.
fn check_unique_ids(root: &Path, samples: &[Sample]) -> Result<()> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for s in samples {
        if let Some(prev) = seen.insert(&s.id, &s.path) {
            return Err(DataError::Layout {
                path: root.into(),
                msg: format!(
                    "image id {} is used twice: {} and {} (ids are file names without extension and must be unique)",
                    s.id,
                    prev.display(),
                    s.path.display()
                ),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- HAM10000

/// Column indices of a HAM-style header, if it has `lesion_id`, `image_id`
/// and `dx`.
fn ham_columns(headers: &csv::StringRecord) -> Option<(usize, usize, usize)> {
    let col = |name: &str| {
        headers.iter().position(|h| {
            h.trim()
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(name)
        })
    };
    Some((col("lesion_id")?, col("image_id")?, col("dx")?))
}

/// True when `path` is a CSV file whose header has `lesion_id,image_id,dx`.
pub fn is_ham_csv(path: &Path) -> bool {
    let Ok(mut rdr) = csv::ReaderBuilder::new().flexible(true).from_path(path) else {
        return false;
    };
    rdr.headers().ok().is_some_and(|h| ham_columns(h).is_some())
}

/// The HAM-style metadata CSV of folder `dir`: a `*metadata*.csv` (any case)
/// with the HAM columns. More than one is an error naming them.
pub fn find_ham_csv(dir: &Path) -> Result<Option<PathBuf>> {
    let found: Vec<PathBuf> = list(dir, false)?
        .into_iter()
        .filter(|(n, _)| {
            let l = n.to_ascii_lowercase();
            l.ends_with(".csv") && l.contains("metadata")
        })
        .map(|(_, p)| p)
        .filter(|p| is_ham_csv(p))
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => Err(DataError::Layout {
            path: dir.into(),
            msg: format!(
                "several HAM-style metadata CSVs ({}); open the one to use directly",
                found
                    .iter()
                    .map(|p| file_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Every image file under `dir` (down to `depth` folders, hidden ones
/// skipped), by file stem. The same stem twice is kept once when the files
/// are identical (some HAM10000 downloads hold each image folder twice), and
/// is an error otherwise.
fn index_images(dir: &Path, depth: usize, out: &mut HashMap<String, PathBuf>) -> Result<()> {
    for (_, p) in list(dir, false)? {
        if !is_image_file(&p) {
            continue;
        }
        let id = stem(&p);
        match out.get(&id) {
            None => {
                out.insert(id, p);
            }
            Some(prev) => {
                let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io_err(p));
                let same = len(prev)? == len(&p)?
                    && std::fs::read(prev).map_err(io_err(prev))?
                        == std::fs::read(&p).map_err(io_err(&p))?;
                if !same {
                    return Err(DataError::Layout {
                        path: dir.into(),
                        msg: format!(
                            "image id {id} is used twice, with different content: {} and {}",
                            prev.display(),
                            p.display()
                        ),
                    });
                }
            }
        }
    }
    if depth > 0 {
        for (_, d) in list(dir, true)? {
            index_images(&d, depth - 1, out)?;
        }
    }
    Ok(())
}

/// Reads a HAM10000-style metadata CSV; images are `<image_id>.<ext>` files
/// in its folder or sub-folders. `positive`: the positive `dx` code
/// (default `mel`).
pub fn read_ham(path: &Path, positive: Option<&str>) -> Result<Dataset> {
    let root = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
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
    let (lc, ic, dc) = ham_columns(&headers).ok_or_else(|| {
        csv_err(
            1,
            format!(
                "header must have lesion_id, image_id and dx, has {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        )
    })?;
    let pos_dx = positive
        .unwrap_or(HAM_POSITIVE_DX)
        .trim()
        .to_ascii_lowercase();
    let mut index = HashMap::new();
    index_images(&root, HAM_SEARCH_DEPTH, &mut index)?;
    let mut samples = Vec::new();
    let mut lines: HashMap<String, u64> = HashMap::new();
    let mut dx_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let rec = rec.map_err(|e| csv_err(rec_line(&e, line), e.to_string()))?;
        let id = rec.get(ic).unwrap_or("").trim();
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(csv_err(line, format!("bad image_id {id:?}")));
        }
        if let Some(first) = lines.insert(id.to_string(), line) {
            return Err(csv_err(
                line,
                format!("image_id {id} listed twice (first on line {first})"),
            ));
        }
        let lesion = rec.get(lc).unwrap_or("").trim();
        if lesion.is_empty() {
            return Err(csv_err(
                line,
                format!(
                    "image {id} has an empty lesion_id (needed to keep a lesion's images in one split)"
                ),
            ));
        }
        let dx = rec.get(dc).unwrap_or("").trim().to_ascii_lowercase();
        let label = if dx.is_empty() {
            None
        } else {
            Some((dx == pos_dx) as u8)
        };
        if !dx.is_empty() {
            *dx_seen.entry(dx).or_default() += 1;
        }
        let img = index.get(id).ok_or_else(|| {
            csv_err(
                line,
                format!(
                    "image {id}.jpg not found in {} or its sub-folders",
                    root.display()
                ),
            )
        })?;
        samples.push(Sample {
            id: id.to_string(),
            path: img.clone(),
            label,
            aux: None,
            split: Split::Train,
            group: lesion.to_string(),
        });
    }
    if samples.is_empty() {
        return Err(csv_err(1, "no rows".into()));
    }
    if positive.is_some() && !dx_seen.contains_key(&pos_dx) {
        return Err(csv_err(
            1,
            format!(
                "positive dx code {pos_dx:?} never occurs; dx values: {}",
                dx_seen
                    .iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    assign_splits(&mut samples);
    check_unique_ids(path, &samples)?;
    check_groups(path, &samples)?;
    Ok(Dataset {
        name: dataset_name(&root),
        root,
        samples,
        splits_assigned: true,
    })
}

/// The line of a CSV error, when the csv crate knows it.
fn rec_line(e: &csv::Error, fallback: u64) -> u64 {
    e.position().map(|p| p.line()).unwrap_or(fallback)
}

// ---------------------------------------------------------- folder per class

/// How a folder-per-class root is organised.
enum ClassLayout {
    /// `root/<class>/...`: (class name, folder).
    Flat(Vec<(String, PathBuf)>),
    /// `root/<split>/<class>/...`: (split, class name, folder).
    Split(Vec<(Split, String, PathBuf)>),
}

/// Sub-folders of `dir` that hold image files directly.
fn image_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (n, p) in list(dir, true)? {
        if !images_in(&p)?.is_empty() {
            out.push((n, p));
        }
    }
    Ok(out)
}

fn classify(root: &Path) -> Result<Option<ClassLayout>> {
    let subs = list(root, true)?;
    let mut split_dirs = Vec::new();
    for (n, p) in &subs {
        if let Some(s) = Split::parse(n) {
            let classes = image_dirs(p)?;
            if !classes.is_empty() {
                split_dirs.push((s, n.clone(), classes));
            }
        }
    }
    if !split_dirs.is_empty() {
        let mut seen: HashMap<Split, &str> = HashMap::new();
        let mut out = Vec::new();
        for (s, n, classes) in &split_dirs {
            if let Some(prev) = seen.insert(*s, n) {
                return Err(DataError::Layout {
                    path: root.into(),
                    msg: format!("folders {prev} and {n} are both the {} split", s.as_str()),
                });
            }
            for (c, p) in classes {
                out.push((*s, c.clone(), p.clone()));
            }
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (n, p) in &subs {
            if Split::parse(n).is_none() && !images_in(p)?.is_empty() {
                tracing::warn!(
                    "{}: ignored, not a split folder (train, val, test)",
                    p.display()
                );
            }
        }
        return Ok(Some(ClassLayout::Split(out)));
    }
    let classes = image_dirs(root)?;
    if classes.is_empty() {
        Ok(None)
    } else {
        Ok(Some(ClassLayout::Flat(classes)))
    }
}

/// True when `root` looks like a folder-per-class layout (some sub-folder,
/// or split folder's sub-folder, holds images).
/// An unreadable or ambiguous tree also answers true, so that
/// [`read_folder_per_class`] reports what is wrong with it.
pub fn detect_folder_per_class(root: &Path) -> bool {
    !matches!(classify(root), Ok(None))
}

/// Which of the two class names is positive.
fn positive_class(root: &Path, names: &[String], positive: Option<&str>) -> Result<String> {
    let listed = names.join(", ");
    if let Some(p) = positive {
        let p = p.trim();
        return names
            .iter()
            .find(|n| n.as_str() == p)
            .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(p)))
            .cloned()
            .ok_or_else(|| DataError::Layout {
                path: root.into(),
                msg: format!("positive class {p:?} is not one of the class folders: {listed}"),
            });
    }
    let hits: Vec<&String> = names
        .iter()
        .filter(|n| DEFAULT_POSITIVE.iter().any(|d| n.eq_ignore_ascii_case(d)))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(DataError::Layout {
            path: root.into(),
            msg: format!(
                "cannot tell which class folder is positive among {listed}: name it (positive class option); by default it is the one called {}",
                DEFAULT_POSITIVE.join(", ")
            ),
        }),
    }
}

/// Reads `root/<class>/*` or `root/<split>/<class>/*`. `positive` names the
/// positive class folder.
pub fn read_folder_per_class(root: &Path, positive: Option<&str>) -> Result<Dataset> {
    let layout = classify(root)?.ok_or_else(|| DataError::Layout {
        path: root.into(),
        msg: "no class folders with images (root/<class>/*.jpg)".into(),
    })?;
    let (dirs, given_split): (Vec<(Split, String, PathBuf)>, bool) = match layout {
        ClassLayout::Flat(c) => (
            c.into_iter().map(|(n, p)| (Split::Train, n, p)).collect(),
            false,
        ),
        ClassLayout::Split(v) => (v, true),
    };
    let mut names: Vec<String> = dirs.iter().map(|d| d.1.clone()).collect();
    names.sort();
    names.dedup();
    if names.len() != 2 {
        return Err(DataError::Layout {
            path: root.into(),
            msg: format!(
                "folder-per-class layout needs exactly two class folders{}, found {}: {}",
                if given_split {
                    " (the same two in each split folder)"
                } else {
                    ""
                },
                names.len(),
                names.join(", ")
            ),
        });
    }
    let pos = positive_class(root, &names, positive)?;
    let mut samples = Vec::new();
    for (split, class, dir) in &dirs {
        let label = (*class == pos) as u8;
        for p in images_in(dir)? {
            let id = stem(&p);
            samples.push(Sample {
                group: id.clone(),
                id,
                path: p,
                label: Some(label),
                aux: None,
                split: *split,
            });
        }
    }
    check_unique_ids(root, &samples)?;
    if !given_split {
        assign_splits(&mut samples);
    }
    check_groups(root, &samples)?;
    Ok(Dataset {
        name: dataset_name(root),
        root: root.into(),
        samples,
        splits_assigned: !given_split,
    })
}
