//! The end-to-end job: data -> PIRL pretraining -> linear probes of the
//! PIRL encoder and of a random-init encoder through the same code path ->
//! report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;

use crate::config::Config;
use crate::data::{Dataset, ImageCache, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::probe::{ProbeResult, run_probe};
use crate::model;
use crate::report::{ArmRow, write_summary};
use crate::train::{self, PretrainOutcome, checkpoint};

/// Images in the built-in synthetic default, and their size on disk.
pub const SYNTHETIC_N: usize = 600;
pub const SYNTHETIC_PX: usize = 96;

/// When pirlkit made the splits, merges the groups of exact and near-duplicate
/// images (found by the audit) and splits again, so no duplicate straddles a
/// split. Returns the number of duplicate pairs merged.
pub fn group_near_duplicates(ds: &mut Dataset, cache: &ImageCache) -> Result<usize> {
    if !ds.splits_assigned {
        return Ok(0);
    }
    let csv = cache.dir.join(format!(
        "audit-{}.csv",
        ds.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let report = crate::data::audit::audit(ds, cache, &csv)?;
    let index: std::collections::HashMap<String, usize> = ds
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    // Union-find over sample indices, seeded with the existing groups.
    let mut parent: Vec<usize> = (0..ds.samples.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut first_of_group: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    for i in 0..ds.samples.len() {
        let g = ds.samples[i].group.clone();
        let r = *first_of_group.entry(g).or_insert(i);
        let (a, b) = (find(&mut parent, i), find(&mut parent, r));
        parent[a.max(b)] = a.min(b);
    }
    let mut merged = 0;
    for pair in report
        .exact_duplicates
        .iter()
        .chain(&report.near_duplicates)
    {
        if let (Some(&a), Some(&b)) = (index.get(&pair.id_a), index.get(&pair.id_b)) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb)] = ra.min(rb);
                merged += 1;
            }
        }
    }
    if merged > 0 {
        let roots: Vec<usize> = (0..ds.samples.len())
            .map(|i| find(&mut parent, i))
            .collect();
        let names: Vec<String> = roots.iter().map(|&r| ds.samples[r].group.clone()).collect();
        for (s, g) in ds.samples.iter_mut().zip(names) {
            s.group = g;
        }
        crate::data::manifest::assign_splits(&mut ds.samples);
        tracing::info!(
            "grouped {merged} duplicate pairs before splitting (audit: {})",
            csv.display()
        );
    }
    Ok(merged)
}

/// Opens `data` (grouping near-duplicates when pirlkit makes the splits), or
/// generates the built-in synthetic set under the cache.
pub fn open_dataset(data: Option<&Path>, cache: &ImageCache, seed: u64) -> Result<Dataset> {
    match data {
        Some(p) => {
            let mut ds = Dataset::open(p)?;
            group_near_duplicates(&mut ds, cache)?;
            Ok(ds)
        }
        None => {
            let dir = cache.dir.join(format!(
                "synthetic-v1-n{SYNTHETIC_N}-px{SYNTHETIC_PX}-seed{seed}"
            ));
            let pos = crate::data::synthetic::generate(&dir, SYNTHETIC_N, SYNTHETIC_PX, seed)?;
            tracing::info!(
                "built-in synthetic data set: {SYNTHETIC_N} images, {pos} positive, in {}",
                dir.display()
            );
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

/// Probes the encoder of `ckpt` (or a seeded random init when `None`).
pub fn probe_checkpoint(
    cfg: &Config,
    ckpt: Option<&Path>,
    ds: &Dataset,
    imgs: &[RgbImage],
) -> Result<ProbeResult> {
    let (mut vm, m) = model::build(
        &cfg.model,
        cfg.pretext.kind,
        cfg.seed,
        DType::F32,
        &crate::device::open(&cfg.device, cfg.tf32)?,
    )?;
    if let Some(ck) = ckpt {
        checkpoint::load_weights(&mut vm, ck)?;
    }
    run_probe(
        &vm,
        &m.encoder,
        "encoder",
        cfg,
        &crate::protocol::probe_data(ds, imgs),
    )
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
    crate::io::write_atomic(&dir.join("test_scores.csv"), s.as_bytes())
}

/// Pretrain, probe both arms, write the report.
pub fn reproduce(
    cfg: &Config,
    ds: &Dataset,
    imgs: &[RgbImage],
    paths: &RunPaths,
    progress: bool,
    force_resume: bool,
    skipped: &[crate::data::cache::Skipped],
) -> Result<ReproduceOutcome> {
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
    crate::io::write_atomic(&paths.report.join("pretrain_loss.csv"), log.as_bytes())?;

    let mut probes = Vec::new();
    for (arm, ck) in [
        ("pirl", Some(pre.checkpoint.as_path())),
        ("random-init", None),
    ] {
        let t = Instant::now();
        let r = probe_checkpoint(cfg, ck, ds, imgs)?;
        tracing::info!(
            "{arm} linear probe: val AUC {:.4} (alpha {}), test AUC {:.4}, {:.1} s",
            r.val_auc,
            r.alpha,
            r.test_auc,
            t.elapsed().as_secs_f64()
        );
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
    write_skipped(&paths.report, skipped)?;
    let ctx = format!(
        "- data: `{}` ({} images: {} train, {} val, {} test; {} unreadable skipped)\n- model: {:?} width {}, {} px views, pretext {:?}\n- pretraining: {} epochs, {} steps, {:.1} min, final loss {:.4}\n- seed {}, {} threads, pirlkit {}\n- resolved config: `pretrain/config.json`",
        ds.root.display(),
        ds.samples.len(),
        ds.split(Split::Train).len(),
        ds.split(Split::Val).len(),
        ds.split(Split::Test).len(),
        skipped.len(),
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
    Ok(ReproduceOutcome {
        rows,
        pretrain: pre,
        probes,
    })
}

/// Refuses an output folder name that would escape `reports/`.
pub fn check_run_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Config(format!(
            "run name {name:?} must be a plain folder name"
        )));
    }
    Ok(())
}

/// Provenance for `manifest.json`: hashes of the config, the data (per file
/// and whole), the split and each checkpoint; seeds; git commit; crate
/// versions; machine and threads.
pub fn manifest(
    cfg: &Config,
    ds: &Dataset,
    data: &crate::data::fingerprint::Fingerprint,
    checkpoints: &[PathBuf],
    extra: serde_json::Value,
) -> Result<serde_json::Value> {
    use sha2::{Digest, Sha256};
    let mut ckpts = serde_json::Map::new();
    for c in checkpoints {
        let p = c.join(checkpoint::MODEL_FILE);
        let b = std::fs::read(&p).map_err(io(&p))?;
        ckpts.insert(
            c.display().to_string(),
            hex::encode(Sha256::digest(&b)).into(),
        );
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let lock = include_str!("../Cargo.lock");
    let mut versions = serde_json::Map::new();
    let mut name = "";
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = n.trim_end_matches('"');
        } else if let Some(v) = line.strip_prefix("version = \"")
            && [
                "candle-core",
                "candle-nn",
                "polars",
                "linfa",
                "linfa-logistic",
                "image",
                "gemm",
                "dicom-object",
            ]
            .contains(&name)
        {
            versions.insert(name.to_string(), v.trim_end_matches('"').into());
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    Ok(serde_json::json!({
        "pirlkit_version": env!("CARGO_PKG_VERSION"),
        "config_sha256": checkpoint::config_hash(cfg),
        "config": cfg,
        "seed": cfg.seed,
        "data": {
            "root": ds.root.display().to_string(),
            "images": data.files.len(),
            "sha256_all": data.sha256_all,
            "split_sha256": data.split_sha256,
            "files": data.files.iter().map(|f| serde_json::json!({"id": f.id, "split": f.split, "sha256": f.sha256})).collect::<Vec<_>>(),
        },
        "checkpoints_sha256": ckpts,
        "git_commit": env!("PIRLKIT_GIT_COMMIT"),
        "git_dirty": env!("PIRLKIT_GIT_DIRTY"),
        "working_dir_git_commit": git(&["rev-parse", "HEAD"]),
        "crates": versions,
        "machine": {
            "cpu": cpu,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "available_parallelism": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "rayon_threads": rayon::current_num_threads(),
        },
        "protocol": extra,
    }))
}

/// Runs a protocol file: pretraining (resumed if its folder has it), every
/// arm not yet finished, then the full report in `<reports>/<protocol name>/`.
pub fn run_protocol(
    path: &Path,
    data: Option<&Path>,
    reports: &Path,
    cache: &ImageCache,
    progress: bool,
    force_resume: bool,
    skip_bad: bool,
) -> Result<String> {
    use crate::protocol::{Protocol, Runner};
    let (p, cfg) = Protocol::from_file(path)?;
    check_run_name(&p.name)?;
    let mut ds = open_dataset(data, cache, cfg.seed)?;
    limit_per_split(&mut ds, cfg.data.limit_per_split);
    let (imgs, skipped) = load_images(&mut ds, &cfg, cache, skip_bad)?;
    ds.check_labeled()?;
    let dir = reports.join(&p.name);
    write_skipped(&dir, &skipped)?;
    let paths = RunPaths::new(dir.clone());
    let needs_pirl = p.arms.iter().any(|a| a.inits.iter().any(|i| i == "pirl"));
    let (ckpt, losses, pre_line) = if needs_pirl {
        let train_imgs: Vec<RgbImage> = ds
            .indices(Split::Train)
            .iter()
            .map(|&i| imgs[i].clone())
            .collect();
        let pre = train::pretrain(&cfg, &train_imgs, &paths.pretrain, progress, force_resume)?;
        let line = format!(
            "PIRL pretraining: {} epochs, {} steps, {:.1} min, final loss {:.4}",
            pre.epochs,
            pre.steps,
            pre.wall_s / 60.0,
            pre.epoch_losses.last().copied().unwrap_or(f64::NAN)
        );
        (Some(pre.checkpoint), pre.epoch_losses, line)
    } else {
        (None, Vec::new(), "no PIRL arm: no pretraining".into())
    };
    let t = Instant::now();
    let runner = Runner {
        cfg: &cfg,
        ds: &ds,
        imgs: &imgs,
        results_dir: dir.join("runs"),
        pirl_checkpoint: ckpt.clone(),
        protocol_dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let fp = crate::data::fingerprint::fingerprint(&ds)?;
    let results = runner.run(&p, &fp)?;
    let labels = |s: Split| {
        ds.indices(s)
            .iter()
            .map(|&i| ds.samples[i].label.unwrap_or(0))
            .collect::<Vec<u8>>()
    };
    let (val_y, test_y) = (labels(Split::Val), labels(Split::Test));
    let extra = serde_json::to_value(&p).map_err(|e| Error::Report(e.to_string()))?;
    let mut manifest = manifest(&cfg, &ds, &fp, &ckpt.into_iter().collect::<Vec<_>>(), extra)?;
    // Per run: its key, and whether this process computed it or read it back.
    manifest["runs"] = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "arm": r.arm, "init": r.init, "fraction": r.fraction, "seed": r.seed,
                "key": r.key,
                "status": if r.computed_now { "computed" } else { "reused" },
            })
        })
        .collect::<Vec<_>>()
        .into();
    // Weights files the arms start from, hashed like the data.
    let protocol_dir = path.parent().unwrap_or(Path::new("."));
    let mut weights = serde_json::Map::new();
    for init in p.arms.iter().flat_map(|a| &a.inits) {
        if let Some(f) = init.strip_prefix("weights:") {
            let wp = protocol_dir.join(f);
            let b = std::fs::read(&wp).map_err(io(&wp))?;
            use sha2::Digest;
            weights.insert(init.clone(), hex::encode(sha2::Sha256::digest(&b)).into());
        }
    }
    manifest["weights_sha256"] = weights.into();
    let mut arm_lines = Vec::new();
    for a in p.arms.iter().filter(|a| !a.config.is_empty()) {
        let ac = p.arm_config(a, &cfg).map_err(Error::Config)?;
        arm_lines.push(format!(
            "arm {}: model {:?} width {}{}, {} px views",
            a.name,
            ac.model.arch,
            ac.model.width,
            if ac.model.stride_in_1x1 {
                " (v1 strides)"
            } else {
                ""
            },
            ac.pretext.crop
        ));
    }
    let ctx = crate::report::protocol::Context {
        title: &format!("pirlkit: {}", p.name),
        lines: vec![
            format!("data: {} ({} train, {} val, {} test images; {} test positives)", ds.root.display(), ds.split(Split::Train).len(), val_y.len(), test_y.len(), test_y.iter().filter(|&&y| y == 1).count()),
            format!("model: {:?} width {}, {} px views; pretext {:?}", cfg.model.arch, cfg.model.width, cfg.pretext.crop, cfg.pretext.kind),
            pre_line,
            format!("arms: {}; label fractions {:?}; seeds {:?}; {} bootstrap resamples", p.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "), p.label_fractions, p.seeds, p.bootstrap_resamples),
            format!("downstream wall time this session: {:.1} min; {} threads", t.elapsed().as_secs_f64() / 60.0, rayon::current_num_threads()),
            "AUC CIs: DeLong (fast algorithm) and stratified bootstrap; model selection on validation only; test scored once per arm and seed".into(),
            format!("unreadable images skipped: {}{}", skipped.len(), if skipped.is_empty() { "" } else { " (listed in skipped.csv)" }),
        ]
        .into_iter()
        .chain(arm_lines)
        .collect(),
        pretrain_losses: &losses,
        manifest,
    };
    crate::report::protocol::write(&dir, &results, &val_y, &test_y, p.bootstrap_resamples, &ctx)
}
