//! The one runner: `reproduce` with a protocol file, `reproduce` without one
//! (a built-in protocol: pretraining and the linear probe of both inits),
//! and each shard of a protocol on a cluster all go through [`run`]; the
//! report is always rebuilt from the saved runs alone ([`report`]), so a
//! single process and a set of shards sharing a results folder give the same
//! report.
//!
//! A run folder (`<reports>/<protocol name>/`) holds `pretrain/` (the PIRL
//! run, resumable), `runs/` (one JSON file per finished run, named by its
//! key, written atomically; a `.lock` beside a run another process is
//! computing; a `.ckpt/` folder beside a fine-tuning in progress),
//! `report_inputs.json` (what the report needs besides the runs) and the
//! report files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::data::load::{apply_config, load_images, open_dataset, write_skipped};
use crate::data::{ImageCache, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::protocol::{Protocol, RunOutcome, Runner};
use crate::train;

pub use crate::report::inputs::{REPORT_INPUTS, ReportInputs, RunRef};

/// Which part of a protocol a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Pretraining, every run (of this shard), then the report.
    All,
    /// The PIRL pretraining alone (the first job on a cluster).
    Pretrain,
    /// The runs alone (of this shard), after a finished pretraining.
    Arms,
}

/// A deterministic share of a protocol's runs: run `i` (in protocol order)
/// belongs to shard `i % count + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `K/N` (1 <= K <= N).
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected K/N, e.g. 2/4"))?;
        let (index, count): (usize, usize) = (
            k.trim()
                .parse()
                .map_err(|_| format!("--shard {s:?}: K is not a number"))?,
            n.trim()
                .parse()
                .map_err(|_| format!("--shard {s:?}: N is not a number"))?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(format!("--shard {s:?}: need 1 <= K <= N"));
        }
        Ok(Shard { index, count })
    }

    /// The shard of this Slurm array task, from `SLURM_ARRAY_TASK_ID`,
    /// `SLURM_ARRAY_TASK_MIN` (default 0) and `SLURM_ARRAY_TASK_COUNT`;
    /// `None` outside an array job.
    pub fn from_slurm_env() -> std::result::Result<Option<Shard>, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(id), Some(count)) = (get("SLURM_ARRAY_TASK_ID"), get("SLURM_ARRAY_TASK_COUNT"))
        else {
            return Ok(None);
        };
        let num = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match get("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        if id < min || id - min >= count {
            return Err(format!(
                "SLURM_ARRAY_TASK_ID {id} is outside the array ({count} tasks from {min}); submit the array as --array=0-{}",
                count.saturating_sub(1)
            ));
        }
        Ok(Some(Shard {
            index: id - min + 1,
            count,
        }))
    }

    pub fn holds(&self, run_index: usize) -> bool {
        run_index % self.count + 1 == self.index
    }
}

/// How a run of the runner behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The reports folder; the protocol's folder is `<reports>/<name>/`.
    pub reports: PathBuf,
    pub cache: ImageCache,
    pub progress: bool,
    pub force_resume: bool,
    pub skip_bad: bool,
    pub stage: Stage,
    pub shard: Option<Shard>,
}

/// What a run of the runner did.
#[derive(Debug)]
pub struct Outcome {
    /// The protocol's folder.
    pub dir: PathBuf,
    /// Runs computed by this process, read back, and left to other processes.
    pub computed: usize,
    pub reused: usize,
    pub held_elsewhere: usize,
    /// The report's headline (one line per comparison), when it was built.
    pub headline: Option<Vec<String>>,
}

/// This process's identity for result files and locks: `host:pid:unix-ms`.
pub fn invocation_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{host}:{}:{ms}", std::process::id())
    })
}

/// Refuses an output folder name that would escape the reports folder.
pub fn check_run_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Config(format!(
            "run name {name:?} must be a plain folder name"
        )));
    }
    Ok(())
}

/// Runs `p` (resolved as `cfg`; `weights:` paths relative to
/// `protocol_dir`) on `data` (the built-in default without it), as far as
/// `opts.stage` and `opts.shard` say; with [`Stage::All`] and no shard the
/// report is rebuilt from the saved runs at the end.
pub fn run(
    p: &Protocol,
    cfg: &Config,
    protocol_dir: &Path,
    data: Option<&Path>,
    opts: &Options,
) -> Result<Outcome> {
    check_run_name(&p.name)?;
    p.validate(cfg).map_err(Error::Config)?;
    let mut ds = open_dataset(data, &opts.cache, cfg.seed)?;
    apply_config(&mut ds, cfg);
    let (imgs, skipped) = load_images(&mut ds, cfg, &opts.cache, opts.skip_bad)?;
    ds.check_labeled()?;
    let dir = opts.reports.join(&p.name);
    write_skipped(&dir, &skipped)?;
    let needs_pirl = p.arms.iter().any(|a| a.inits.iter().any(|i| i == "pirl"));
    let pre = if needs_pirl {
        Some(pretrain_stage(cfg, &ds, &imgs, &dir, opts)?)
    } else {
        None
    };
    let external = p
        .external
        .iter()
        .map(|e| {
            crate::data::external::load(
                &e.name,
                &protocol_dir.join(&e.data),
                &ds,
                &opts.cache,
                cfg,
                e.drop_duplicates,
                &dir.join(format!("external-{}-audit.csv", e.name)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = Outcome {
        dir: dir.clone(),
        computed: 0,
        reused: 0,
        held_elsewhere: 0,
        headline: None,
    };
    if opts.stage == Stage::Pretrain {
        return Ok(out);
    }
    let t = Instant::now();
    let runner = Runner {
        cfg,
        ds: &ds,
        imgs: &imgs,
        results_dir: dir.join("runs"),
        pirl_checkpoint: pre.as_ref().map(|o| o.checkpoint.clone()),
        protocol_dir: protocol_dir.to_path_buf(),
        external: &external,
    };
    let fp = crate::data::fingerprint::fingerprint(&ds)?;
    // What the report needs is written before the runs, so a shard's
    // results can be merged whichever shard finishes last.
    let mut inputs = report_inputs(p, cfg, &ds, &fp, &runner, pre.as_ref(), skipped.len())?;
    inputs.external = external_sets(&external)?;
    crate::io::write_atomic(&dir.join(REPORT_INPUTS), &to_json(&inputs)?)?;
    let shard = opts.shard;
    let outcomes = runner.run(p, &fp, &|i| shard.is_none_or(|s| s.holds(i)))?;
    for o in &outcomes {
        match o {
            RunOutcome::Computed => out.computed += 1,
            RunOutcome::Reused => out.reused += 1,
            RunOutcome::HeldElsewhere(_) => out.held_elsewhere += 1,
            RunOutcome::OtherShard => {}
        }
    }
    tracing::info!(
        "{} runs computed, {} reused, {} held by another process ({:.1} min)",
        out.computed,
        out.reused,
        out.held_elsewhere,
        t.elapsed().as_secs_f64() / 60.0
    );
    inputs.lines.push(format!(
        "downstream wall time of this invocation: {:.1} min; {} threads",
        t.elapsed().as_secs_f64() / 60.0,
        rayon::current_num_threads()
    ));
    crate::io::write_atomic(&dir.join(REPORT_INPUTS), &to_json(&inputs)?)?;
    if opts.stage == Stage::All && shard.is_none() {
        out.headline = Some(report(&dir)?);
    }
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Report(e.to_string()))
}

/// The PIRL pretraining on the training split: run (or resumed) in
/// `dir/pretrain`, except in [`Stage::Arms`], where it must be finished.
fn pretrain_stage(
    cfg: &Config,
    ds: &crate::data::Dataset,
    imgs: &[RgbImage],
    dir: &Path,
    opts: &Options,
) -> Result<train::PretrainOutcome> {
    let pdir = dir.join("pretrain");
    if opts.stage == Stage::Arms {
        let done = train::checkpoint::latest(&pdir)?
            .map(|ck| train::checkpoint::read_meta(&ck))
            .transpose()?
            .is_some_and(|m| m.epoch >= cfg.train.epochs);
        if !done {
            return Err(Error::Config(format!(
                "{}: the pretraining is not finished; run the pretrain stage first (--stage pretrain)",
                pdir.display()
            )));
        }
    }
    let train_imgs: Vec<RgbImage> = ds
        .indices(Split::Train)
        .iter()
        .map(|&i| imgs[i].clone())
        .collect();
    tracing::info!("pretraining on {} training images", train_imgs.len());
    let show = opts.progress && opts.stage != Stage::Arms;
    train::pretrain(cfg, &train_imgs, &pdir, show, opts.force_resume)
}

/// The external sets as the report shows them.
fn external_sets(
    external: &[crate::data::external::External],
) -> Result<Vec<crate::report::sets::ExternalSet>> {
    external
        .iter()
        .map(|e| {
            let meta = crate::data::metadata::load(&e.ds)?;
            Ok(crate::report::sets::ExternalSet {
                name: e.name.clone(),
                ids: e.ds.samples.iter().map(|s| s.id.clone()).collect(),
                labels: e.labels(),
                meta: e
                    .ds
                    .samples
                    .iter()
                    .map(|s| meta.get(&s.id).cloned().unwrap_or_default())
                    .collect(),
                duplicates_dropped: e.dropped.clone(),
            })
        })
        .collect()
}

fn report_inputs(
    p: &Protocol,
    cfg: &Config,
    ds: &crate::data::Dataset,
    fp: &crate::data::fingerprint::Fingerprint,
    runner: &Runner,
    pre: Option<&train::PretrainOutcome>,
    skipped: usize,
) -> Result<ReportInputs> {
    let labels = |s: Split| {
        ds.indices(s)
            .iter()
            .map(|&i| ds.samples[i].label.unwrap_or(0))
            .collect::<Vec<u8>>()
    };
    let (val_y, test_y) = (labels(Split::Val), labels(Split::Test));
    let extra = serde_json::to_value(p).map_err(|e| Error::Report(e.to_string()))?;
    let ckpts: Vec<PathBuf> = pre.iter().map(|o| o.checkpoint.clone()).collect();
    let mut manifest = crate::report::manifest::manifest(cfg, ds, fp, &ckpts, extra)?;
    manifest["weights_sha256"] = weights_sha256(p, runner)?;
    let arm_lines = arm_lines(p, cfg)?;
    let pre_line = match pre {
        Some(o) => format!(
            "PIRL pretraining: {} epochs, {} steps, {:.1} min, final loss {:.4}",
            o.epochs,
            o.steps,
            o.wall_s / 60.0,
            o.epoch_losses.last().copied().unwrap_or(f64::NAN)
        ),
        None => "no PIRL arm: no pretraining".into(),
    };
    let specs = p.runs(cfg)?;
    let keys = runner.keys(p, fp)?;
    let runs = run_refs(&specs, &keys);
    let ft_arms = finetune_lines(p, cfg);
    Ok(ReportInputs {
        title: format!("pirlkit: {}", p.name),
        lines: vec![
            format!("data: {} ({} train, {} val, {} test images; {} test positives)", ds.root.display(), ds.split(Split::Train).len(), val_y.len(), test_y.len(), test_y.iter().filter(|&&y| y == 1).count()),
            format!("model: {:?} width {}, {} px views; pretext {:?}", cfg.model.arch, cfg.model.width, cfg.pretext.crop, cfg.pretext.kind),
            pre_line,
            format!("arms: {}; label fractions {:?}; seeds {:?}; {} bootstrap resamples", p.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "), p.label_fractions, p.seeds, p.bootstrap_resamples),
            "AUC CIs: DeLong (fast algorithm) and stratified bootstrap; model selection on validation only; test scored once per arm and seed".into(),
            format!("unreadable images skipped: {}{}", skipped, if skipped == 0 { "" } else { " (listed in skipped.csv)" }),
        ]
        .into_iter()
        .chain(arm_lines)
        .chain(ft_arms)
        .collect(),
        pretrain_losses: pre.map(|o| o.epoch_losses.clone()).unwrap_or_default(),
        manifest,
        val_labels: val_y,
        test_labels: test_y,
        test_ids: ds.split(Split::Test).iter().map(|s| s.id.clone()).collect(),
        resamples: p.bootstrap_resamples,
        runs,
        invocation: invocation_id().to_string(),
        test_meta: {
            let meta = crate::data::metadata::load(ds)?;
            ds.split(Split::Test)
                .iter()
                .map(|s| meta.get(&s.id).cloned().unwrap_or_default())
                .collect()
        },
        external: Vec::new(),
    })
}

/// SHA-256 of each `weights:` init's file, by init.
fn weights_sha256(p: &Protocol, runner: &Runner) -> Result<serde_json::Value> {
    let mut weights = serde_json::Map::new();
    for init in p.arms.iter().flat_map(|a| &a.inits) {
        if let Some(f) = init.strip_prefix("weights:") {
            let wp = runner.protocol_dir.join(f);
            weights.insert(
                init.clone(),
                crate::data::fingerprint::file_sha256(&wp)?.into(),
            );
        }
    }
    Ok(weights.into())
}

/// One line per arm with its own model settings.
fn arm_lines(p: &Protocol, cfg: &Config) -> Result<Vec<String>> {
    let mut arm_lines = Vec::new();
    for a in p.arms.iter().filter(|a| !a.config.is_empty()) {
        let ac = p.arm_config(a, cfg).map_err(Error::Config)?;
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
    Ok(arm_lines)
}

/// Where each run's result is saved, under its key.
fn run_refs(specs: &[crate::protocol::RunSpec], keys: &[crate::protocol::RunKey]) -> Vec<RunRef> {
    specs
        .iter()
        .zip(keys)
        .map(|(s, k)| {
            let key = k.hash();
            RunRef {
                arm: s.arm.name.clone(),
                init: s.init.clone(),
                fraction: s.fraction,
                seed: s.seed,
                file: crate::protocol::result_file_name(
                    &s.arm.name,
                    &s.init,
                    s.fraction,
                    s.seed,
                    &key,
                ),
                key,
            }
        })
        .collect()
}

/// One line per fine-tuning arm: its schedule and options.
fn finetune_lines(p: &Protocol, cfg: &Config) -> Vec<String> {
    p
        .arms
        .iter()
        .filter(|a| a.kind == crate::protocol::ArmKind::Finetune)
        .filter_map(|a| {
            let c = p.arm_config(a, cfg).ok()?;
            let f = &c.finetune;
            // Options named only when on, so default runs read as before.
            let mut on = Vec::new();
            if f.head_epochs > 0 {
                on.push(format!("{} head-only epochs first", f.head_epochs));
            }
            if f.mixup > 0.0 {
                on.push(format!("mixup Beta({0}, {0})", f.mixup));
            }
            if f.ema > 0.0 {
                on.push(format!("weights' moving average {} scored", f.ema));
            }
            if f.aux_weight > 0.0 {
                on.push(format!("auxiliary target weighted {}", f.aux_weight));
            }
            if f.ensemble > 1 {
                on.push(format!(
                    "an ensemble of {} runs (mean logits scored)",
                    f.ensemble
                ));
            }
            Some(format!(
                "arm {}: {} epochs, batch {}, lr {} (encoder x{}), wd {}, warm-up {} epochs, selection {:?}{}, TTA {:?}{}",
                a.name,
                f.epochs,
                f.batch_size,
                f.lr,
                f.encoder_lr_mult,
                f.weight_decay,
                f.warmup_epochs,
                f.selection,
                if f.selection == crate::config::Selection::Smoothed {
                    format!(" (window {})", f.selection_window)
                } else {
                    String::new()
                },
                f.tta,
                on.iter().map(|o| format!("; {o}")).collect::<String>()
            ))
        })
        .collect()
}

/// Rebuilds the report of the run folder `dir` from `report_inputs.json`
/// and the saved runs alone; a run not finished yet is an error naming it.
/// Returns the headline lines.
pub fn report(dir: &Path) -> Result<Vec<String>> {
    let ip = dir.join(REPORT_INPUTS);
    let bytes = std::fs::read(&ip).map_err(io(&ip))?;
    let mut inputs: ReportInputs = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Report(format!("{}: {e}", ip.display())))?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for r in &inputs.runs {
        let path = dir.join("runs").join(&r.file);
        match crate::protocol::saved_result(&path, &r.key) {
            Some(mut res) => {
                res.arm = r.arm.clone();
                res.computed_now = res.computed_by == inputs.invocation;
                results.push(res);
            }
            None => missing.push(format!(
                "{} / {} / {} / seed {}",
                r.arm, r.init, r.fraction, r.seed
            )),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Report(format!(
            "{}: {} of {} runs are not finished (or were computed under other settings): {}{}",
            dir.display(),
            missing.len(),
            inputs.runs.len(),
            missing
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            if missing.len() > 5 { "; ..." } else { "" }
        )));
    }
    // Per run: its key, who computed it, and whether this invocation did.
    inputs.manifest["runs"] = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "arm": r.arm, "init": r.init, "fraction": r.fraction, "seed": r.seed,
                "key": r.key,
                "computed_by": r.computed_by,
                "status": if r.computed_now { "computed" } else { "reused" },
            })
        })
        .collect::<Vec<_>>()
        .into();
    crate::report::protocol::write_with_external(dir, &results, &inputs, |r| {
        r.external_scores.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's line for a fine-tuning arm names the options that are on
    /// (LP-FT, mixup, the weights' average), and only those.
    #[test]
    fn finetune_lines_name_the_options_that_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            r#"
name = "t"
preset = "tiny"
seeds = [0]
label_fractions = [1.0]
[[arms]]
name = "plain"
kind = "finetune"
inits = ["random"]
[[arms]]
name = "mixed"
kind = "finetune"
inits = ["random"]
[arms.finetune]
mixup = 0.4
ema = 0.99
head_epochs = 1
aux_weight = 0.5
"#,
        )
        .unwrap();
        let (p, cfg) = Protocol::from_file(&path).unwrap();
        let lines = finetune_lines(&p, &cfg);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("arm plain:") && !lines[0].contains("mixup"));
        assert!(!lines[0].contains("; "), "{}", lines[0]);
        for want in [
            "1 head-only epochs first",
            "mixup Beta(0.4, 0.4)",
            "moving average 0.99",
            "auxiliary target weighted 0.5",
        ] {
            assert!(lines[1].contains(want), "{want:?} not in {}", lines[1]);
        }
    }
}
