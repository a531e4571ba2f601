//! External test sets: another data set (any layout `--data` reads), every
//! labeled image of it scored by each run with the model and threshold
//! chosen on the main validation split. Images that duplicate one of the
//! main set's images (found by the audit, exact or near) are dropped by
//! default, and listed.

use std::path::Path;

use crate::config::Config;
use crate::data::{Dataset, ImageCache, RgbImage, Split};
use crate::error::{Error, Result};

/// An external set, loaded and cleaned.
pub struct External {
    pub name: String,
    /// Its images (all splits of the source), in order.
    pub ds: Dataset,
    pub imgs: Vec<RgbImage>,
    /// Dropped: (external image id, the main set's image it duplicates).
    pub dropped: Vec<(String, String)>,
    /// SHA-256 over its images, ids and labels (after the drop).
    pub sha256: String,
}

impl External {
    pub fn labels(&self) -> Vec<u8> {
        self.ds
            .samples
            .iter()
            .map(|s| s.label.unwrap_or(0))
            .collect()
    }
}

/// Opens the external set `name` at `path`, finds its duplicates of `main`'s
/// images with the audit (findings in `audit_csv`), drops them when
/// `drop_duplicates`, and loads its images at the config's size.
pub fn load(
    name: &str,
    path: &Path,
    main: &Dataset,
    cache: &ImageCache,
    cfg: &Config,
    drop_duplicates: bool,
    audit_csv: &Path,
) -> Result<External> {
    let mut ds = Dataset::open(path)?;
    ds.samples.retain(|s| s.label.is_some());
    let pos = ds.samples.iter().filter(|s| s.label == Some(1)).count();
    if pos == 0 || pos == ds.samples.len() {
        return Err(Error::Config(format!(
            "external set {name} ({}): needs labeled images of both classes ({pos} positive of {})",
            path.display(),
            ds.samples.len()
        )));
    }
    // One audit over the main set (as train) and the external set (as
    // test): its cross-split pairs are the external images seen before.
    let tag = |id: &str| format!("external:{name}:{id}");
    let mut both = main.clone();
    for s in &mut both.samples {
        s.split = Split::Train;
    }
    both.samples
        .extend(ds.samples.iter().map(|s| crate::data::Sample {
            id: tag(&s.id),
            split: Split::Test,
            group: tag(&s.group),
            ..s.clone()
        }));
    let report = crate::data::audit::audit(&both, cache, audit_csv)?;
    let mut dropped = Vec::new();
    for p in report
        .exact_duplicates
        .iter()
        .chain(&report.near_duplicates)
    {
        let (ext, other) = match (p.id_a.strip_prefix(&tag("")), p.id_b.strip_prefix(&tag(""))) {
            (Some(e), None) => (e, &p.id_b),
            (None, Some(e)) => (e, &p.id_a),
            _ => continue,
        };
        if !dropped.iter().any(|(d, _): &(String, String)| d == ext) {
            dropped.push((ext.to_string(), other.clone()));
        }
    }
    dropped.sort();
    if drop_duplicates && !dropped.is_empty() {
        ds.samples
            .retain(|s| !dropped.iter().any(|(d, _)| *d == s.id));
        tracing::warn!(
            "external set {name}: {} images duplicate images of the main data set and are dropped (listed in the report)",
            dropped.len()
        );
    }
    let imgs = cache.load_all(&ds.samples, cfg.data.image_size)?;
    let fp = crate::data::fingerprint::fingerprint(&ds)?;
    Ok(External {
        name: name.to_string(),
        ds,
        imgs,
        dropped,
        sha256: fp.sha256_all,
    })
}
