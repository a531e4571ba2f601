//! A data set as the runner needs it: opened (the built-in default when no
//! folder is given), optionally cut to a few images per split, and its
//! images decoded at the config's size through the cache, with unreadable
//! files either an error naming them or left out and listed.

use std::path::Path;
use std::time::Instant;

use crate::config::Config;
use crate::data::splits::group_near_duplicates;
use crate::data::{Dataset, ImageCache, RgbImage};
use crate::error::{Error, Result, io};

/// The name of the built-in default data set (runs without `--data`).
pub const BUILTIN_NAME: &str = "isic2017-mini";

/// Opens `data` (grouping near-duplicates when pirlkit makes the splits),
/// or, without it, the built-in data set shipped in the repository
/// (`datasets/isic2017-mini`: the ISIC 2017 challenge images at 64 px,
/// checked against its checksums).
pub fn open_dataset(data: Option<&Path>, cache: &ImageCache, _seed: u64) -> Result<Dataset> {
    match data {
        Some(p) => {
            let mut ds = Dataset::open(p)?;
            group_near_duplicates(&mut ds, cache)?;
            Ok(ds)
        }
        None => {
            let ds = crate::data::builtin::open_shipped()?;
            tracing::info!(
                "built-in data set: {} images ({} positive) in {}",
                ds.samples.len(),
                ds.samples.iter().filter(|s| s.label == Some(1)).count(),
                ds.root.display()
            );
            Ok(ds)
        }
    }
}

/// The config's cuts of a data set: the first `data.limit_per_split` images
/// of each split, then `data.val_from_train` of the training split moved
/// into validation.
pub fn apply_config(ds: &mut Dataset, cfg: &Config) {
    limit_per_split(ds, cfg.data.limit_per_split);
    let n = crate::data::splits::move_train_to_val(ds, cfg.data.val_from_train, cfg.seed);
    if n > 0 {
        tracing::info!("moved {n} training images into the validation split (data.val_from_train)");
    }
}

/// Keeps the first `limit` samples of each split (0 = all).
pub fn limit_per_split(ds: &mut Dataset, limit: usize) {
    if limit == 0 {
        return;
    }
    let mut counts = std::collections::HashMap::new();
    ds.samples.retain(|s| {
        let c = counts.entry(s.split).or_insert(0usize);
        *c += 1;
        *c <= limit
    });
}

/// The dataset's images at the config's size, via the cache. With
/// `skip_bad`, unreadable images are dropped from `ds` and listed (and the
/// list is returned); without it, the first one is an error naming the file.
pub fn load_images(
    ds: &mut Dataset,
    cfg: &Config,
    cache: &ImageCache,
    skip_bad: bool,
) -> Result<(Vec<RgbImage>, Vec<crate::data::cache::Skipped>)> {
    let t = Instant::now();
    let (imgs, skipped) = if skip_bad {
        let (imgs, skipped) = cache.load_all_skip_bad(&ds.samples, cfg.data.image_size)?;
        for s in &skipped {
            tracing::warn!("skipped {}: {}", s.path.display(), s.error);
        }
        crate::data::cache::drop_samples(ds, &skipped);
        (imgs, skipped)
    } else {
        (
            cache.load_all(&ds.samples, cfg.data.image_size)?,
            Vec::new(),
        )
    };
    tracing::info!(
        "{} images loaded at {} px in {:.1} s ({} skipped)",
        imgs.len(),
        cfg.data.image_size,
        t.elapsed().as_secs_f64(),
        skipped.len()
    );
    Ok((imgs, skipped))
}

/// Writes `skipped.csv` (id,path,error) into `dir` when anything was skipped.
pub fn write_skipped(dir: &Path, skipped: &[crate::data::cache::Skipped]) -> Result<()> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "path", "error"])
        .map_err(|e| Error::Report(e.to_string()))?;
    for s in skipped {
        w.write_record([
            s.id.as_str(),
            &s.path.display().to_string(),
            s.error.as_str(),
        ])
        .map_err(|e| Error::Report(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Report(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    crate::io::write_atomic(&dir.join("skipped.csv"), &bytes)
}
