//! The PIRL pretraining loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::augment::{self, Chw, stack};
use crate::config::{Config, NegativesDraw};
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

/// The negatives of the batch of bank rows `idx`, as `pirl.negatives_draw`
/// says: `(N, D)` shared by the batch, or `(B, N, D)`, a set per image.
pub fn draw_negatives<R: rand::Rng>(
    bank: &MemoryBank,
    cfg: &Config,
    idx: &[usize],
    rng: &mut R,
    dev: &Device,
) -> Result<Tensor> {
    let k = cfg.pirl.negatives;
    Ok(match cfg.pirl.negatives_draw {
        NegativesDraw::Batch => bank.gather(&bank.sample_negatives(k, idx, rng), dev)?,
        NegativesDraw::Anchor => {
            let rows = bank.sample_negatives_per_anchor(k, idx, rng);
            let per = rows.len() / idx.len().max(1);
            bank.gather(&rows, dev)?
                .reshape((idx.len(), per, bank.dim()))?
        }
    })
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
/// uninterrupted one (same machine and thread count). A checkpoint of
/// different pretraining settings is refused, naming the keys that differ,
/// unless `force_resume` (settings pretraining does not read, such as the
/// probe's and fine-tuning's, do not count). [`STOP`] ends the run after
/// the current step, with a checkpoint.
pub fn pretrain(
    cfg: &Config,
    images: &[RgbImage],
    run_dir: &Path,
    show_progress: bool,
    force_resume: bool,
) -> Result<PretrainOutcome> {
    check_inputs(cfg, images)?;
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let mut run = Run::build(cfg, images.len(), run_dir)?;
    match checkpoint::latest(run_dir)? {
        Some(ck) => run.resume(&ck, force_resume)?,
        None => {
            let cfg_json =
                serde_json::to_vec_pretty(cfg).map_err(|e| Error::Config(e.to_string()))?;
            crate::io::write_atomic(&run_dir.join("config.json"), &cfg_json)?;
            fill_bank(&run.model, cfg, images, &mut run.bank, &run.device)?;
        }
    }
    let total_steps = cfg.train.epochs * run.steps_per_epoch;
    let pb = progress_bar(total_steps.saturating_sub(run.step) as u64, show_progress);
    for epoch in run.step / run.steps_per_epoch..cfg.train.epochs {
        let te = Instant::now();
        let first = run.step - epoch * run.steps_per_epoch;
        if let Err(e) = run.epoch(images, epoch, &pb) {
            pb.abandon();
            return Err(e);
        }
        let secs = te.elapsed().as_secs_f64();
        tracing::info!(
            "epoch {}/{}: loss {:.4}, lr {:.5}, {:.1} s, {:.1} img/s",
            epoch + 1,
            cfg.train.epochs,
            run.epoch_losses.last().copied().unwrap_or(f64::NAN),
            run.sched.at(run.step.saturating_sub(1)),
            secs,
            ((run.steps_per_epoch - first) * cfg.train.batch_size) as f64 / secs
        );
    }
    pb.finish_and_clear();
    let ck = run
        .last_ckpt
        .clone()
        .ok_or_else(|| Error::Config("train.epochs is 0: nothing to pretrain".into()))?;
    let wall = run.t0.elapsed().as_secs_f64();
    Ok(PretrainOutcome {
        checkpoint: ck,
        epochs: cfg.train.epochs,
        steps: run.step,
        wall_s: run.wall_before + wall,
        epoch_losses: run.epoch_losses,
        images_per_s: if wall > 0.0 {
            run.seen as f64 / wall
        } else {
            0.0
        },
    })
}

/// Refuses settings and images pretraining cannot use, naming them.
fn check_inputs(cfg: &Config, images: &[RgbImage]) -> Result<()> {
    cfg.check().map_err(Error::Config)?;
    let (n, bs) = (images.len(), cfg.train.batch_size);
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
    Ok(())
}

/// A pretraining run's state: the model, optimiser and bank, and where the
/// schedule stands (everything a checkpoint holds).
struct Run<'c> {
    cfg: &'c Config,
    run_dir: &'c Path,
    hash: String,
    device: Device,
    vm: candle_nn::VarMap,
    model: PirlModel,
    opt: Optimizer,
    bank: MemoryBank,
    steps_per_epoch: usize,
    sched: CosineSchedule,
    step: usize,
    epoch_losses: Vec<f64>,
    partial_loss: f64,
    partial_steps: usize,
    /// Learning-rate factor after skipped non-finite batches.
    lr_scale: f64,
    skipped: usize,
    consecutive_bad: usize,
    /// Wall time of earlier sessions of a resumed run.
    wall_before: f64,
    t0: Instant,
    seen: usize,
    last_ckpt: Option<PathBuf>,
    /// The step the last checkpoint was written at.
    saved_step: Option<usize>,
}

impl<'c> Run<'c> {
    /// A fresh run over `n` images: seeded model, zero optimiser state,
    /// empty bank.
    fn build(cfg: &'c Config, n: usize, run_dir: &'c Path) -> Result<Run<'c>> {
        let device = crate::device::open(&cfg.device, cfg.tf32)?;
        let (vm, model) = model::build(
            &cfg.model,
            cfg.pretext.kind,
            cfg.pirl.head,
            cfg.seed,
            DType::F32,
            &device,
        )?;
        let opt = Optimizer::new(&vm, &cfg.train.optim, &[])?;
        let steps_per_epoch = n / cfg.train.batch_size; // the last partial batch is dropped
        let sched = CosineSchedule {
            lr: cfg.train.optim.lr,
            warmup_steps: (cfg.train.optim.warmup_epochs * steps_per_epoch as f64).round() as usize,
            total_steps: cfg.train.epochs * steps_per_epoch,
            final_fraction: cfg.train.optim.final_lr_fraction,
        };
        Ok(Run {
            cfg,
            run_dir,
            hash: checkpoint::pretrain_hash(cfg),
            device,
            vm,
            model,
            opt,
            bank: MemoryBank::new(n, EMBED_DIM, cfg.pirl.bank_momentum),
            steps_per_epoch,
            sched,
            step: 0,
            epoch_losses: Vec::new(),
            partial_loss: 0.0,
            partial_steps: 0,
            lr_scale: 1.0,
            skipped: 0,
            consecutive_bad: 0,
            wall_before: 0.0,
            t0: Instant::now(),
            seen: 0,
            last_ckpt: None,
            saved_step: None,
        })
    }

    /// Restores the state saved in checkpoint `ck`.
    fn resume(&mut self, ck: &Path, force_resume: bool) -> Result<()> {
        let meta = checkpoint::read_meta(ck)?;
        // A checkpoint this run could not have made: refused, or with
        // --force-resume continued with a warning.
        let mismatch = |what: String| -> Result<()> {
            if !force_resume {
                return Err(Error::Checkpoint {
                    path: ck.to_path_buf(),
                    msg: format!(
                        "this run folder holds a checkpoint {what}; use another output folder, or --force-resume to continue anyway"
                    ),
                });
            }
            tracing::warn!("resuming a checkpoint {what} (--force-resume)");
            Ok(())
        };
        // A build whose kernels give other numbers would continue (or
        // reuse as finished) a pretraining it could not reproduce.
        if meta.result_version != checkpoint::RESULT_VERSION {
            mismatch(format!(
                "made by a pirlkit whose kernels give other numbers (result version {}, this build's {})",
                meta.result_version,
                checkpoint::RESULT_VERSION
            ))?;
        }
        // Compare the saved config re-read under today's schema (new keys take
        // their defaults), so a pirlkit upgrade alone does not block a resume.
        if checkpoint::pretrain_hash(&meta.config) != self.hash {
            let diff = checkpoint::config_diff(
                &checkpoint::pretrain_settings(&meta.config),
                &checkpoint::pretrain_settings(self.cfg),
            );
            mismatch(format!(
                "of a different config (differing keys: {})",
                diff.join(", ")
            ))?;
        }
        checkpoint::load_weights(&mut self.vm, ck)?;
        self.opt.load_state(&checkpoint::load_tensors(
            &ck.join(checkpoint::OPTIM_FILE),
            &self.device,
        )?)?;
        let b = checkpoint::load_tensors(&ck.join(checkpoint::BANK_FILE), &self.device)?;
        let bt = b.get("bank").ok_or_else(|| Error::Checkpoint {
            path: ck.to_path_buf(),
            msg: "bank missing".into(),
        })?;
        let n = self.bank.len();
        self.bank = MemoryBank::from_tensor(bt, self.cfg.pirl.bank_momentum)?;
        if self.bank.len() != n {
            return Err(Error::Checkpoint {
                path: ck.to_path_buf(),
                msg: format!(
                    "memory bank has {} rows, data has {n} images",
                    self.bank.len()
                ),
            });
        }
        self.step = meta.step;
        self.epoch_losses = meta.epoch_losses;
        self.partial_loss = meta.partial_loss_sum;
        self.partial_steps = meta.partial_steps;
        self.lr_scale = meta.lr_scale;
        self.skipped = meta.skipped_steps;
        self.wall_before = meta.wall_s;
        tracing::info!(
            "resuming from {} (step {}, epoch {})",
            ck.display(),
            self.step,
            self.step / self.steps_per_epoch + 1
        );
        self.last_ckpt = Some(ck.to_path_buf());
        self.saved_step = Some(self.step);
        Ok(())
    }

    /// Writes a checkpoint of the current state.
    fn save(&mut self) -> Result<()> {
        let meta = Meta {
            epoch: self.step / self.steps_per_epoch,
            step: self.step,
            config: self.cfg.clone(),
            config_hash: self.hash.clone(),
            epoch_losses: self.epoch_losses.clone(),
            partial_loss_sum: self.partial_loss,
            partial_steps: self.partial_steps,
            lr_scale: self.lr_scale,
            skipped_steps: self.skipped,
            wall_s: self.wall_before + self.t0.elapsed().as_secs_f64(),
            pirlkit_version: env!("CARGO_PKG_VERSION").into(),
            result_version: checkpoint::RESULT_VERSION,
        };
        let snap = Snapshot {
            vm: &self.vm,
            optimizer: self.opt.state_tensors()?,
            bank: self.bank.to_tensor(&self.device)?,
            meta,
        };
        self.last_ckpt = Some(checkpoint::save(
            self.run_dir,
            snap,
            self.cfg.train.keep_checkpoints,
        )?);
        self.saved_step = Some(self.step);
        Ok(())
    }

    /// Closes the epoch's loss (NaN when every batch was skipped).
    fn end_epoch(&mut self) {
        self.epoch_losses.push(if self.partial_steps > 0 {
            self.partial_loss / self.partial_steps as f64
        } else {
            f64::NAN
        });
        self.partial_loss = 0.0;
        self.partial_steps = 0;
    }

    /// The rest of `epoch` from the current step, batches built ahead on a
    /// worker thread.
    fn epoch(
        &mut self,
        images: &[RgbImage],
        epoch: usize,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let (cfg, n, bs) = (self.cfg, images.len(), self.cfg.train.batch_size);
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::shuffle(&mut order, &mut stream(cfg.seed, "order", epoch as u64, 0));
        let first = self.step - epoch * self.steps_per_epoch;
        let spe = self.steps_per_epoch;
        std::thread::scope(|scope| -> Result<()> {
            let order = &order;
            let mut feed = Feed::start(scope, cfg.data.prefetch, first..spe, move |bi| {
                make_batch(
                    cfg,
                    images,
                    &order[bi * bs..(bi + 1) * bs],
                    epoch,
                    &Device::Cpu,
                )
            });
            for bi in first..spe {
                let (views, pre) = feed.next()?;
                self.step_batch(&order[bi * bs..(bi + 1) * bs], (views, pre), epoch, bi, pb)?;
                if STOP.load(Ordering::SeqCst) {
                    if self.saved_step != Some(self.step) {
                        self.save()?;
                    }
                    return Err(Error::Interrupted {
                        checkpoint: self.last_ckpt.clone().expect("just saved"),
                    });
                }
            }
            Ok(())
        })
    }

    /// One optimiser step on the images `idx` (batch `bi` of `epoch`), a
    /// checkpoint where one is due; a non-finite loss or gradient skips the
    /// batch (`train.skip_nonfinite`) or stops the run.
    fn step_batch(
        &mut self,
        idx: &[usize],
        batch: Batch,
        epoch: usize,
        bi: usize,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let cfg = self.cfg;
        let dev = &self.device;
        let batch = (
            batch.0.to_device(dev)?,
            batch
                .1
                .iter()
                .map(|t| t.to_device(dev))
                .collect::<candle_core::Result<Vec<_>>>()?,
        );
        let m = self.bank.gather(idx, dev)?;
        let neg = draw_negatives(
            &self.bank,
            cfg,
            idx,
            &mut stream(cfg.seed, "negatives", epoch as u64, bi as u64),
            dev,
        )?;
        let (mut loss, f) = pirl_forward(&self.model, cfg, &batch, &m, &neg)?;
        if injected_nan_step() == Some(self.step) {
            loss = (loss * f64::NAN)?;
        }
        let lv = loss.to_scalar::<f32>()? as f64;
        let grads = if lv.is_finite() {
            Some(loss.backward()?)
        } else {
            None
        };
        let grad_ok = match &grads {
            Some(g) => self.opt.grad_sq_norm(g)?.is_finite(),
            None => false,
        };
        let epoch_end = bi + 1 == self.steps_per_epoch;
        if !grad_ok {
            return self.skip_or_stop(lv, epoch, epoch_end, pb);
        }
        self.consecutive_bad = 0;
        self.opt.step(
            grads.as_ref().expect("finite loss has grads"),
            self.sched.at(self.step) * self.lr_scale,
        )?;
        self.bank
            .update(idx, &f.detach().flatten_all()?.to_vec1::<f32>()?);
        self.partial_loss += lv;
        self.partial_steps += 1;
        self.step += 1;
        self.seen += idx.len();
        pb.inc(1);
        pb.set_message(format!(
            "epoch {}/{} loss {lv:.3}",
            epoch + 1,
            cfg.train.epochs
        ));
        if epoch_end {
            self.end_epoch();
        }
        let every = cfg.train.checkpoint_every_steps;
        if epoch_end || (every > 0 && self.step.is_multiple_of(every)) {
            self.save()?;
        }
        Ok(())
    }

    /// A non-finite loss or gradient: skip the batch and lower the learning
    /// rate (`train.skip_nonfinite`, at most 10 in a row), or stop with the
    /// last good checkpoint named.
    fn skip_or_stop(
        &mut self,
        loss: f64,
        epoch: usize,
        epoch_end: bool,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        if self.cfg.train.skip_nonfinite && self.consecutive_bad < 10 {
            self.consecutive_bad += 1;
            self.skipped += 1;
            self.lr_scale *= self.cfg.train.nonfinite_lr_factor;
            tracing::warn!(
                "non-finite loss or gradient at step {}: batch skipped, learning rate scaled to {:.4} of the schedule",
                self.step,
                self.lr_scale
            );
            self.step += 1;
            pb.inc(1);
            if epoch_end {
                self.end_epoch();
                self.save()?;
            }
            return Ok(());
        }
        let last_good = match &self.last_ckpt {
            Some(p) => format!(
                "The last good checkpoint is {}; rerun the same command to resume from it (lower train.optim.lr, or set train.skip_nonfinite, if it diverges again).",
                p.display()
            ),
            None => "No checkpoint was written yet.".into(),
        };
        Err(Error::NonFinite {
            loss,
            epoch: epoch + 1,
            step: self.step,
            last_good,
        })
    }
}
