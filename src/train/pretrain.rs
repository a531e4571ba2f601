//! The PIRL pretraining loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::augment::{self, Chw, stack};
use crate::config::Config;
use crate::data::RgbImage;
use crate::error::{Error, Result, io};
use crate::loss::pirl_loss_multi;
use crate::memory_bank::MemoryBank;
use crate::model::{self, Branch, EMBED_DIM, PirlModel};
use crate::optim::{CosineSchedule, Optimizer};
use crate::rng::stream;
use crate::train::checkpoint::{self, Meta, Snapshot};

/// Set (by a SIGINT/SIGTERM handler) to ask a running pretraining to finish
/// its step, write a checkpoint and stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Test hook: `PIRLKIT_INJECT_NAN_AT_STEP=N` turns the loss of global step N
/// into NaN, to exercise the non-finite guard end to end.
fn injected_nan_step() -> Option<usize> {
    std::env::var("PIRLKIT_INJECT_NAN_AT_STEP")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// What a pretraining run produced.
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// The final checkpoint folder.
    pub checkpoint: PathBuf,
    pub epochs: usize,
    pub steps: usize,
    /// Pretraining wall time (s), over all sessions of a resumed run.
    pub wall_s: f64,
    pub epoch_losses: Vec<f64>,
    /// Training images per second in this session.
    pub images_per_s: f64,
}

/// The inputs of one PIRL step for images `idx` in `epoch`: the image views
/// `(B, 3, C, C)` and one input per pretext branch, in the order of
/// [`PretextKind::branches`] (jigsaw: `(9B, 3, P, P)`, rotation:
/// `(B, 3, C, C)`). Each image's randomness comes from its own stream, so
/// the batch does not depend on the thread count.
pub fn make_batch(
    cfg: &Config,
    images: &[RgbImage],
    idx: &[usize],
    epoch: usize,
    device: &Device,
) -> Result<Batch> {
    let p = &cfg.pretext;
    let branches = p.kind.branches();
    let parts: Vec<(Chw, Vec<Vec<Chw>>)> = idx
        .par_iter()
        .map(|&i| {
            let mut rng = stream(cfg.seed, "augment", epoch as u64, i as u64);
            let img = &images[i];
            let v = augment::image_view(img, p.crop, &p.augment, &mut rng);
            let t = branches
                .iter()
                .map(|b| match b {
                    Branch::Jigsaw => {
                        crate::pretext::jigsaw(img, p.patch, Some(&p.augment), &mut rng).patches
                    }
                    Branch::Rotation => {
                        vec![crate::pretext::rotation(img, p.crop, &p.augment, &mut rng).0]
                    }
                })
                .collect();
            (v, t)
        })
        .collect();
    let mut views = Vec::with_capacity(idx.len());
    let mut pre: Vec<Vec<Chw>> = vec![Vec::new(); branches.len()];
    for (v, t) in parts {
        views.push(v);
        for (k, x) in t.into_iter().enumerate() {
            pre[k].extend(x);
        }
    }
    Ok((
        stack(views, device)?,
        pre.into_iter()
            .map(|x| Ok(stack(x, device)?))
            .collect::<Result<_>>()?,
    ))
}

/// A batch: the image views and one input per pretext branch.
pub type Batch = (Tensor, Vec<Tensor>);

/// The PIRL loss of one batch against bank rows `m` (the batch's images)
/// and `negatives`, and f(v_I) for the bank update.
pub fn pirl_forward(
    model: &PirlModel,
    cfg: &Config,
    batch: &Batch,
    m: &Tensor,
    negatives: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let f = model.embed_image(&batch.0, true)?;
    let gs = model.embed_pretexts(&batch.1, true)?;
    let loss = pirl_loss_multi(m, &f, &gs, negatives, cfg.pirl.tau, cfg.pirl.lambda)?;
    Ok((loss, f))
}

/// Pretraining batches in order, built on a worker thread up to `depth`
/// ahead of the step (or in line when `depth` is 0). Each batch is a pure
/// function of (seed, epoch, image), so prefetching changes no number.
enum Feed<'a> {
    Inline(
        Box<dyn FnMut(usize) -> Result<Batch> + Send + 'a>,
        std::ops::Range<usize>,
    ),
    Worker(std::sync::mpsc::Receiver<Result<Batch>>),
}

impl<'a> Feed<'a> {
    fn start<'env, F>(
        scope: &'a std::thread::Scope<'a, 'env>,
        depth: usize,
        range: std::ops::Range<usize>,
        mut make: F,
    ) -> Feed<'a>
    where
        F: FnMut(usize) -> Result<Batch> + Send + 'a,
    {
        if depth == 0 {
            return Feed::Inline(Box::new(make), range);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        scope.spawn(move || {
            for i in range {
                let b = make(i);
                let failed = b.is_err();
                // A closed channel means the step loop ended early (error or
                // stop request): nothing more to build.
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        Feed::Worker(rx)
    }

    fn next(&mut self) -> Result<Batch> {
        match self {
            Feed::Inline(make, range) => match range.next() {
                Some(i) => make(i),
                None => Err(Error::Config("batch feed exhausted".into())),
            },
            Feed::Worker(rx) => rx
                .recv()
                .map_err(|_| Error::Config("the batch worker thread stopped".into()))?,
        }
    }
}

/// f(v) of the un-augmented images, in batches (BatchNorm in train mode, as
/// during training), written into the bank.
fn fill_bank(
    model: &PirlModel,
    cfg: &Config,
    images: &[RgbImage],
    bank: &mut MemoryBank,
    device: &Device,
) -> Result<()> {
    let order: Vec<usize> = (0..images.len()).collect();
    for chunk in order.chunks(cfg.train.batch_size.max(2)) {
        let views: Vec<Chw> = chunk
            .par_iter()
            .map(|&i| augment::resize_full(&images[i], cfg.pretext.crop))
            .collect();
        let x = stack(views, device)?;
        let f = model.embed_image(&x, chunk.len() > 1)?.detach();
        bank.fill(chunk, &f.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(())
}

fn progress_bar(total: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, {per_sec}, ETA {eta} {msg}",
        )
        .expect("progress template"),
    );
    pb.set_prefix("pretrain");
    pb
}

/// Pretrains on `images` (the unlabeled training split) into `run_dir`.
///
/// Checkpoints at every epoch end and every `train.checkpoint_every_steps`
/// steps. When `run_dir` already holds a checkpoint, continues exactly from
/// it: every random stream is a function of (seed, epoch, image or batch),
/// and weights, BatchNorm statistics, optimiser state, memory bank and step
/// are restored, so an interrupted run ends bit-identical to an
/// uninterrupted one (same machine and thread count). A checkpoint of a
/// different config is refused, naming the keys that differ, unless
/// `force_resume`. [`STOP`] ends the run after the current step, with a
/// checkpoint.
pub fn pretrain(
    cfg: &Config,
    images: &[RgbImage],
    run_dir: &Path,
    show_progress: bool,
    force_resume: bool,
) -> Result<PretrainOutcome> {
    cfg.check().map_err(Error::Config)?;
    let n = images.len();
    let bs = cfg.train.batch_size;
    if n < bs.max(2) {
        return Err(Error::Config(format!(
            "pretraining needs at least train.batch_size = {bs} images, got {n}"
        )));
    }
    if let Some(bad) = images.iter().position(|im| im.size != cfg.data.image_size) {
        return Err(Error::Config(format!(
            "image {bad} is {} px, config says {}",
            images[bad].size, cfg.data.image_size
        )));
    }
    let device = crate::device::open(&cfg.device, cfg.tf32)?;
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let hash = checkpoint::config_hash(cfg);
    let (mut vm, model) = model::build(
        &cfg.model,
        cfg.pretext.kind,
        cfg.pirl.head,
        cfg.seed,
        DType::F32,
        &device,
    )?;
    let mut opt = Optimizer::new(&vm, &cfg.train.optim, &[])?;
    let mut bank = MemoryBank::new(n, EMBED_DIM, cfg.pirl.bank_momentum);
    let steps_per_epoch = n / bs; // the last partial batch is dropped
    let sched = CosineSchedule {
        lr: cfg.train.optim.lr,
        warmup_steps: (cfg.train.optim.warmup_epochs * steps_per_epoch as f64).round() as usize,
        total_steps: cfg.train.epochs * steps_per_epoch,
        final_fraction: cfg.train.optim.final_lr_fraction,
    };

    let mut start_step = 0;
    let mut epoch_losses = Vec::new();
    let mut partial_loss = 0.0;
    let mut partial_steps = 0usize;
    let mut lr_scale = 1.0f64;
    let mut skipped = 0usize;
    let mut consecutive_bad = 0usize;
    let mut wall_before = 0.0;
    let mut last_ckpt: Option<PathBuf> = None;
    if let Some(ck) = checkpoint::latest(run_dir)? {
        let meta = checkpoint::read_meta(&ck)?;
        // Compare the saved config re-read under today's schema (new keys take
        // their defaults), so a pirlkit upgrade alone does not block a resume.
        if checkpoint::config_hash(&meta.config) != hash {
            let diff = checkpoint::config_diff(&meta.config, cfg);
            if !force_resume {
                return Err(Error::Checkpoint {
                    path: ck,
                    msg: format!(
                        "this run folder holds a checkpoint of a different config (differing keys: {}); use another output folder, or --force-resume to continue anyway",
                        diff.join(", ")
                    ),
                });
            }
            tracing::warn!("resuming despite config changes in: {}", diff.join(", "));
        }
        checkpoint::load_weights(&mut vm, &ck)?;
        opt.load_state(&checkpoint::load_tensors(
            &ck.join(checkpoint::OPTIM_FILE),
            &device,
        )?)?;
        let b = checkpoint::load_tensors(&ck.join(checkpoint::BANK_FILE), &device)?;
        let bt = b.get("bank").ok_or_else(|| Error::Checkpoint {
            path: ck.clone(),
            msg: "bank missing".into(),
        })?;
        bank = MemoryBank::from_tensor(bt, cfg.pirl.bank_momentum)?;
        if bank.len() != n {
            return Err(Error::Checkpoint {
                path: ck,
                msg: format!("memory bank has {} rows, data has {n} images", bank.len()),
            });
        }
        start_step = meta.step;
        epoch_losses = meta.epoch_losses;
        partial_loss = meta.partial_loss_sum;
        partial_steps = meta.partial_steps;
        lr_scale = meta.lr_scale;
        skipped = meta.skipped_steps;
        wall_before = meta.wall_s;
        tracing::info!(
            "resuming from {} (step {start_step}, epoch {})",
            ck.display(),
            start_step / steps_per_epoch + 1
        );
        last_ckpt = Some(ck);
    } else {
        let cfg_json = serde_json::to_vec_pretty(cfg).map_err(|e| Error::Config(e.to_string()))?;
        crate::io::write_atomic(&run_dir.join("config.json"), &cfg_json)?;
        fill_bank(&model, cfg, images, &mut bank, &device)?;
    }

    let t0 = Instant::now();
    let total_steps = cfg.train.epochs * steps_per_epoch;
    let pb = progress_bar(total_steps.saturating_sub(start_step) as u64, show_progress);
    let mut step = start_step;
    let mut seen = 0usize;
    let nan_at = injected_nan_step();
    let every = cfg.train.checkpoint_every_steps;
    #[allow(clippy::too_many_arguments)]
    let save = |step: usize,
                losses: &Vec<f64>,
                partial: (f64, usize),
                lr_scale: f64,
                skipped: usize,
                vm: &candle_nn::VarMap,
                opt: &Optimizer,
                bank: &MemoryBank|
     -> Result<PathBuf> {
        let meta = Meta {
            epoch: step / steps_per_epoch,
            step,
            config: cfg.clone(),
            config_hash: hash.clone(),
            epoch_losses: losses.clone(),
            partial_loss_sum: partial.0,
            partial_steps: partial.1,
            lr_scale,
            skipped_steps: skipped,
            wall_s: wall_before + t0.elapsed().as_secs_f64(),
            pirlkit_version: env!("CARGO_PKG_VERSION").into(),
        };
        let snap = Snapshot {
            vm,
            optimizer: opt.state_tensors()?,
            bank: bank.to_tensor(&device)?,
            meta,
        };
        checkpoint::save(run_dir, snap, cfg.train.keep_checkpoints)
    };
    for epoch in start_step / steps_per_epoch..cfg.train.epochs {
        let te = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::shuffle(&mut order, &mut stream(cfg.seed, "order", epoch as u64, 0));
        let first = step - epoch * steps_per_epoch;
        std::thread::scope(|scope| -> Result<()> {
            let order = &order;
            let mut feed = Feed::start(
                scope,
                cfg.data.prefetch,
                first..steps_per_epoch,
                move |bi| {
                    make_batch(
                        cfg,
                        images,
                        &order[bi * bs..(bi + 1) * bs],
                        epoch,
                        &Device::Cpu,
                    )
                },
            );
            for bi in first..steps_per_epoch {
                let idx = &order[bi * bs..(bi + 1) * bs];
                let (views, pre) = feed.next()?;
                let batch = (
                    views.to_device(&device)?,
                    pre.iter()
                        .map(|t| t.to_device(&device))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                );
                let m = bank.gather(idx, &device)?;
                let neg_idx = bank.sample_negatives(
                    cfg.pirl.negatives,
                    &mut stream(cfg.seed, "negatives", epoch as u64, bi as u64),
                );
                let neg = bank.gather(&neg_idx, &device)?;
                let (mut loss, f) = pirl_forward(&model, cfg, &batch, &m, &neg)?;
                if nan_at == Some(step) {
                    loss = (loss * f64::NAN)?;
                }
                let lv = loss.to_scalar::<f32>()? as f64;
                let grads = if lv.is_finite() {
                    Some(loss.backward()?)
                } else {
                    None
                };
                let grad_ok = match &grads {
                    Some(g) => opt.grad_sq_norm(g)?.is_finite(),
                    None => false,
                };
                if !grad_ok {
                    if cfg.train.skip_nonfinite && consecutive_bad < 10 {
                        consecutive_bad += 1;
                        skipped += 1;
                        lr_scale *= cfg.train.nonfinite_lr_factor;
                        tracing::warn!(
                            "non-finite loss or gradient at step {step}: batch skipped, learning rate scaled to {lr_scale:.4} of the schedule"
                        );
                        step += 1;
                        pb.inc(1);
                        if bi + 1 == steps_per_epoch {
                            epoch_losses.push(if partial_steps > 0 {
                                partial_loss / partial_steps as f64
                            } else {
                                f64::NAN
                            });
                            partial_loss = 0.0;
                            partial_steps = 0;
                            last_ckpt = Some(save(
                                step,
                                &epoch_losses,
                                (partial_loss, partial_steps),
                                lr_scale,
                                skipped,
                                &vm,
                                &opt,
                                &bank,
                            )?);
                        }
                        continue;
                    }
                    pb.abandon();
                    let last_good = match &last_ckpt {
                        Some(p) => format!(
                            "The last good checkpoint is {}; rerun the same command to resume from it (lower train.optim.lr, or set train.skip_nonfinite, if it diverges again).",
                            p.display()
                        ),
                        None => "No checkpoint was written yet.".into(),
                    };
                    return Err(Error::NonFinite {
                        loss: lv,
                        epoch: epoch + 1,
                        step,
                        last_good,
                    });
                }
                consecutive_bad = 0;
                opt.step(
                    grads.as_ref().expect("finite loss has grads"),
                    sched.at(step) * lr_scale,
                )?;
                bank.update(idx, &f.detach().flatten_all()?.to_vec1::<f32>()?);
                partial_loss += lv;
                partial_steps += 1;
                step += 1;
                seen += idx.len();
                pb.inc(1);
                pb.set_message(format!(
                    "epoch {}/{} loss {lv:.3}",
                    epoch + 1,
                    cfg.train.epochs
                ));
                let epoch_end = bi + 1 == steps_per_epoch;
                if epoch_end {
                    epoch_losses.push(partial_loss / partial_steps as f64);
                    partial_loss = 0.0;
                    partial_steps = 0;
                }
                let stop = STOP.load(Ordering::SeqCst);
                if epoch_end || stop || (every > 0 && step % every == 0) {
                    last_ckpt = Some(save(
                        step,
                        &epoch_losses,
                        (partial_loss, partial_steps),
                        lr_scale,
                        skipped,
                        &vm,
                        &opt,
                        &bank,
                    )?);
                }
                if stop {
                    pb.abandon();
                    return Err(Error::Interrupted {
                        checkpoint: last_ckpt.clone().expect("just saved"),
                    });
                }
            }
            Ok(())
        })?;
        let secs = te.elapsed().as_secs_f64();
        tracing::info!(
            "epoch {}/{}: loss {:.4}, lr {:.5}, {:.1} s, {:.1} img/s",
            epoch + 1,
            cfg.train.epochs,
            epoch_losses.last().copied().unwrap_or(f64::NAN),
            sched.at(step.saturating_sub(1)),
            secs,
            ((steps_per_epoch - first) * bs) as f64 / secs
        );
    }
    pb.finish_and_clear();
    let ck = match last_ckpt {
        Some(c) => c,
        None => {
            return Err(Error::Config(
                "train.epochs is 0: nothing to pretrain".into(),
            ));
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    Ok(PretrainOutcome {
        checkpoint: ck,
        epochs: cfg.train.epochs,
        steps: step,
        wall_s: wall_before + wall,
        epoch_losses,
        images_per_s: if wall > 0.0 { seen as f64 / wall } else { 0.0 },
    })
}
