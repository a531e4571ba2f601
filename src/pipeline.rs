//! The end-to-end job: data -> PIRL pretraining -> linear probes of the
//! PIRL encoder and of a random-init encoder through the same code path ->
//! report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};

use crate::config::Config;
use crate::data::{Dataset, ImageCache, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::probe::{ProbeData, ProbeResult, run_probe};
use crate::model;
use crate::report::{ArmRow, write_summary};
use crate::train::{self, PretrainOutcome, checkpoint};

/// Images in the built-in synthetic default, and their size on disk.
pub const SYNTHETIC_N: usize = 600;
pub const SYNTHETIC_PX: usize = 96;

/// Opens `data`, or generates the built-in synthetic set under the cache.
pub fn open_dataset(data: Option<&Path>, cache: &ImageCache, seed: u64) -> Result<Dataset> {
    match data {
        Some(p) => Ok(Dataset::open(p)?),
        None => {
            let dir = cache.dir.join(format!("synthetic-v1-n{SYNTHETIC_N}-px{SYNTHETIC_PX}-seed{seed}"));
            let pos = crate::data::synthetic::generate(&dir, SYNTHETIC_N, SYNTHETIC_PX, seed)?;
            tracing::info!("built-in synthetic data set: {SYNTHETIC_N} images, {pos} positive, in {}", dir.display());
            Ok(Dataset::open(&dir)?)
        }
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

/// The dataset's images at the config's size, via the cache.
pub fn load_images(ds: &Dataset, cfg: &Config, cache: &ImageCache) -> Result<Vec<RgbImage>> {
    let t = Instant::now();
    let imgs = cache.load_all(&ds.samples, cfg.data.image_size)?;
    tracing::info!("{} images loaded at {} px in {:.1} s", imgs.len(), cfg.data.image_size, t.elapsed().as_secs_f64());
    Ok(imgs)
}

fn probe_data<'a>(ds: &Dataset, imgs: &'a [RgbImage]) -> ProbeData<'a> {
    let take = |s: Split| {
        let idx = ds.indices(s);
        (idx.iter().map(|&i| &imgs[i]).collect(), idx.iter().map(|&i| ds.samples[i].label.unwrap_or(0)).collect())
    };
    ProbeData { train: take(Split::Train), val: take(Split::Val), test: take(Split::Test) }
}

/// Probes the encoder of `ckpt` (or a seeded random init when `None`).
pub fn probe_checkpoint(cfg: &Config, ckpt: Option<&Path>, ds: &Dataset, imgs: &[RgbImage]) -> Result<ProbeResult> {
    let (mut vm, m) = model::build(&cfg.model, cfg.pretext.kind, cfg.seed, DType::F32, &Device::Cpu)?;
    if let Some(ck) = ckpt {
        checkpoint::load_weights(&mut vm, ck)?;
    }
    run_probe(&vm, &m.encoder, "encoder", cfg, &probe_data(ds, imgs))
}

/// Where a reproduce run writes.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// `reports/<run>`: report files.
    pub report: PathBuf,
    /// `reports/<run>/pretrain`: config, checkpoints, loss log.
    pub pretrain: PathBuf,
}

impl RunPaths {
    pub fn new(report: PathBuf) -> Self {
        let pretrain = report.join("pretrain");
        Self { report, pretrain }
    }
}

/// What `reproduce` measured.
pub struct ReproduceOutcome {
    pub rows: Vec<ArmRow>,
    pub pretrain: PretrainOutcome,
    pub probes: Vec<(String, ProbeResult)>,
}

fn write_scores(dir: &Path, ds: &Dataset, probes: &[(String, ProbeResult)]) -> Result<()> {
    let test: Vec<_> = ds.split(Split::Test);
    let mut s = String::from("image_id,label");
    for (arm, _) in probes {
        s.push(',');
        s.push_str(arm);
    }
    s.push('\n');
    for (i, x) in test.iter().enumerate() {
        s.push_str(&format!("{},{}", x.id, x.label.unwrap_or(0)));
        for (_, p) in probes {
            s.push_str(&format!(",{}", p.test_scores[i]));
        }
        s.push('\n');
    }
    checkpoint::write_atomic(&dir.join("test_scores.csv"), s.as_bytes())
}

/// Pretrain, probe both arms, write the report.
pub fn reproduce(cfg: &Config, ds: &Dataset, imgs: &[RgbImage], paths: &RunPaths, progress: bool, force_resume: bool) -> Result<ReproduceOutcome> {
    ds.check_labeled()?;
    std::fs::create_dir_all(&paths.report).map_err(io(&paths.report))?;
    let train_idx = ds.indices(Split::Train);
    let train_imgs: Vec<RgbImage> = train_idx.iter().map(|&i| imgs[i].clone()).collect();
    tracing::info!("pretraining on {} training images", train_imgs.len());
    let pre = train::pretrain(cfg, &train_imgs, &paths.pretrain, progress, force_resume)?;
    let mut log = String::from("epoch,loss\n");
    for (e, l) in pre.epoch_losses.iter().enumerate() {
        log.push_str(&format!("{},{l}\n", e + 1));
    }
    checkpoint::write_atomic(&paths.report.join("pretrain_loss.csv"), log.as_bytes())?;

    let mut probes = Vec::new();
    for (arm, ck) in [("pirl", Some(pre.checkpoint.as_path())), ("random-init", None)] {
        let t = Instant::now();
        let r = probe_checkpoint(cfg, ck, ds, imgs)?;
        tracing::info!("{arm} linear probe: val AUC {:.4} (alpha {}), test AUC {:.4}, {:.1} s", r.val_auc, r.alpha, r.test_auc, t.elapsed().as_secs_f64());
        probes.push((arm.to_string(), r));
    }
    let rows: Vec<ArmRow> = probes
        .iter()
        .map(|(arm, r)| ArmRow {
            arm: format!("{arm}-linear-probe"),
            init: arm.clone(),
            protocol: "linear-probe".into(),
            test_auc: r.test_auc,
            val_auc: r.val_auc,
            alpha: r.alpha,
            n_test: r.n_test,
            n_test_pos: r.n_test_pos,
            pretrain_epochs: if arm == "pirl" { pre.epochs } else { 0 },
            pretrain_wall_s: if arm == "pirl" { pre.wall_s } else { 0.0 },
        })
        .collect();
    write_scores(&paths.report, ds, &probes)?;
    let ctx = format!(
        "- data: `{}` ({} images: {} train, {} val, {} test)\n- model: {:?} width {}, {} px views, pretext {:?}\n- pretraining: {} epochs, {} steps, {:.1} min, final loss {:.4}\n- seed {}, {} threads, pirlkit {}\n- resolved config: `pretrain/config.json`",
        ds.root.display(),
        ds.samples.len(),
        ds.split(Split::Train).len(),
        ds.split(Split::Val).len(),
        ds.split(Split::Test).len(),
        cfg.model.arch,
        cfg.model.width,
        cfg.pretext.crop,
        cfg.pretext.kind,
        pre.epochs,
        pre.steps,
        pre.wall_s / 60.0,
        pre.epoch_losses.last().copied().unwrap_or(f64::NAN),
        cfg.seed,
        rayon::current_num_threads(),
        env!("CARGO_PKG_VERSION"),
    );
    write_summary(&paths.report, &rows, &ctx)?;
    Ok(ReproduceOutcome { rows, pretrain: pre, probes })
}

/// Refuses an output folder name that would escape `reports/`.
pub fn check_run_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Config(format!("run name {name:?} must be a plain folder name")));
    }
    Ok(())
}
