//! Fine-tuning on labels: the encoder (from PIRL, from random init, or from a
//! weights file in torchvision naming) plus Linear(d, 1), (class-weighted)
//! BCE, augmentation, AdamW with warm-up and cosine decay, optionally a lower
//! rate for the encoder than for the head or a pull of the encoder toward
//! its starting weights after each step (L2-SP); the epoch is selected on the
//! validation split only (best, last, or best mean over a window of epochs)
//! and the test split is scored once, with that epoch's weights, optionally
//! averaged over flipped and rotated views, or over the runs of an ensemble
//! ([`ensemble`]).
//!
//! With a checkpoint folder, every epoch end is saved (weights, optimiser
//! state, the selected weights so far, the validation history); a rerun
//! continues from the last one and ends bit-identical to an uninterrupted
//! run, since every random stream is a function of (seed, epoch, image).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{self, Chw, stack};
use crate::config::Config;
pub use crate::config::{FinetuneConfig, Selection, Tta};
use crate::data::RgbImage;
use crate::error::{Error, Result};
use crate::eval::auc;
pub use crate::model::Stage;
use crate::model::{ResNet, seeded_init};
use crate::optim::{CosineSchedule, OptimConfig, Optimizer, OptimizerKind};
use crate::rng::stream;

mod ensemble;
mod state;
pub use ensemble::{Member, member_seed};
use state::{Progress, Weights, restore, save_progress, snapshot, start_or_resume};

/// Where the encoder's starting weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Seeded random init.
    Random,
    /// A pirlkit checkpoint folder (names `encoder.*`).
    Checkpoint(PathBuf),
    /// A safetensors file in torchvision / timm naming (`conv1.weight`,
    /// `layer1.0.bn1.running_mean`, ...; `fc.*` ignored).
    Torchvision(PathBuf),
}

/// Loads the encoder's variables of `vm` (`encoder.<name>`) from `init`.
pub fn load_encoder(vm: &VarMap, init: &Init) -> Result<()> {
    let (path, file_prefix) = match init {
        Init::Random => return Ok(()),
        Init::Checkpoint(dir) => (dir.join(crate::train::checkpoint::MODEL_FILE), "encoder."),
        Init::Torchvision(p) => (p.clone(), ""),
    };
    let tensors = crate::train::checkpoint::load_tensors(&path, &Device::Cpu)?;
    let data = vm.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().filter(|n| n.starts_with("encoder.")).collect();
    names.sort();
    for name in names {
        let key = format!("{file_prefix}{}", &name["encoder.".len()..]);
        let var = &data[name];
        let t = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            msg: format!("no tensor {key}"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint {
                path: path.clone(),
                msg: format!(
                    "{key} has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// The encoder alone (variables `encoder.*`) on the config's device: seeded
/// from `cfg.seed`, then loaded from `init`.
pub fn encoder_from(cfg: &Config, init: &Init) -> Result<(VarMap, ResNet)> {
    let (vm, enc) = crate::model::build_encoder(
        &cfg.model,
        cfg.seed,
        DType::F32,
        &crate::device::open(&cfg.device, cfg.tf32)?,
    )?;
    load_encoder(&vm, init)?;
    Ok((vm, enc))
}

/// Images and their labels.
pub struct Labeled<'a> {
    pub images: Vec<&'a RgbImage>,
    pub labels: Vec<u8>,
    /// Each image's auxiliary label ([`crate::data::Sample::aux`]), when
    /// every image has one; read only for training with
    /// `finetune.aux_weight > 0`.
    pub aux: Option<Vec<u8>>,
}

/// The images of a fine-tune: it trains on `train`, selects its epoch on
/// `val`, scores `test` once (when given: without it the test split is
/// never touched) and each `external` set's images with the same weights.
#[derive(Clone, Copy)]
pub struct Splits<'s, 'a> {
    pub train: &'s Labeled<'a>,
    pub val: &'s Labeled<'a>,
    pub test: Option<&'s Labeled<'a>>,
    pub external: &'s [Vec<&'a RgbImage>],
}

/// What a fine-tuning run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneResult {
    /// The selected epoch (1-based).
    pub best_epoch: usize,
    /// Validation AUC of the selected epoch.
    pub val_auc: f64,
    pub test_auc: f64,
    /// Test logits of the selected epoch's weights, in test order.
    pub test_scores: Vec<f64>,
    /// Validation logits of the selected epoch.
    pub val_scores: Vec<f64>,
    /// Validation AUC after each epoch run.
    pub val_curve: Vec<f64>,
    pub train_losses: Vec<f64>,
    /// Logits of each external set's images, by the selected weights.
    #[serde(default)]
    pub external_scores: Vec<Vec<f64>>,
    /// With `finetune.ensemble > 1`: each member's run. The scores and
    /// AUCs above are then the ensemble's (the members' mean logits); the
    /// selected epoch, curve, losses and model are the first member's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// The classifier with the selected epoch's weights, as the test split
    /// was scored with it (for looking inside it: Grad-CAM). Not saved.
    #[serde(skip)]
    pub model: Option<Finetuned>,
}

/// A fine-tuned classifier: `head` on the average-pooled layer4 of
/// `encoder`, one logit per image.
#[derive(Debug, Clone)]
pub struct Finetuned {
    pub encoder: ResNet,
    pub head: candle_nn::Linear,
    /// The view size (px) it scores images at.
    pub view: usize,
}

/// Class-weighted binary cross-entropy on logits, averaged:
/// `-(w y log σ(z) + (1 - y) log(1 - σ(z)))`.
///
/// # Shapes
/// `logits: (B,)`, `targets: (B,)` in {0, 1} -> scalar.
pub fn weighted_bce(logits: &Tensor, targets: &Tensor, pos_weight: f64) -> Result<Tensor> {
    // softplus(x) = max(x, 0) + log(1 + exp(-|x|)), stable for any x.
    let softplus = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
    };
    let pos = (softplus(&logits.neg()?)? * targets)?; // -log σ(z) for positives
    let neg = (softplus(logits)? * (1.0 - targets)?)?; // -log(1 - σ(z)) for negatives
    Ok(((pos * pos_weight)? + neg)?.mean_all()?)
}

struct Classifier {
    encoder: ResNet,
    head: candle_nn::Linear,
    /// The auxiliary target's head (`finetune.aux_weight > 0`): trained, never scored.
    aux_head: Option<candle_nn::Linear>,
    /// Stages whose output is detached (partial fine-tuning).
    frozen: usize,
}

impl Classifier {
    fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .head
            .forward(&self.encoder.forward_frozen(x, train, self.frozen)?)?
            .squeeze(1)?)
    }

    /// The training logits of the main head and, if on, the auxiliary one;
    /// with `head_only`, on the frozen encoder (BatchNorm in eval mode, no
    /// gradient into the encoder): the linear-probing phase of LP-FT.
    fn train_logits(&self, x: &Tensor, head_only: bool) -> Result<(Tensor, Option<Tensor>)> {
        let f = if head_only {
            crate::ops::inference(|| self.encoder.forward_t(&x.detach(), false))?.detach()
        } else {
            self.encoder.forward_frozen(x, true, self.frozen)?
        };
        let z = self.head.forward(&f)?.squeeze(1)?;
        let za = match &self.aux_head {
            Some(h) => Some(h.forward(&f)?.squeeze(1)?),
            None => None,
        };
        Ok((z, za))
    }

    /// Logits of the whole images at `crop` px (BatchNorm in eval mode, as
    /// inference: no graph), averaged over the views of `tta`.
    fn scores(
        &self,
        images: &[&RgbImage],
        crop: usize,
        batch: usize,
        tta: Tta,
    ) -> Result<Vec<f64>> {
        let views = augment::tta_views(tta);
        let mut out = vec![0f64; images.len()];
        for &(k, mirror) in views {
            let mut i = 0;
            for chunk in images.chunks(batch.max(1)) {
                let xs: Vec<Chw> = chunk
                    .par_iter()
                    .map(|im| augment::tta_view(im, crop, (k, mirror)))
                    .collect();
                let x = stack(xs, self.encoder.device())?;
                let z = crate::ops::inference(|| self.logits(&x, false))?;
                for v in z.to_vec1::<f32>()? {
                    out[i] += f64::from(v) / views.len() as f64;
                    i += 1;
                }
            }
        }
        Ok(out)
    }
}

/// The encoder's conv and linear weights with their starting values, the
/// anchor of `finetune.l2sp` (in name order). Taken before a saved state
/// is resumed, so an interrupted run pulls toward the same values.
fn l2sp_anchor(vm: &VarMap) -> Result<Vec<(Var, Tensor)>> {
    let data = vm.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data
        .iter()
        .filter(|(k, v)| k.starts_with("encoder.") && v.rank() > 1)
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|k| {
            let v = data[k].clone();
            let w0 = v.as_tensor().copy()?;
            Ok((v, w0))
        })
        .collect()
}

/// L2-SP's decoupled step: `w <- w - factor * (w - w0)` for each anchored
/// weight (`factor` = the encoder's learning rate times `finetune.l2sp`,
/// at most 1, where `w` lands on `w0`).
pub fn l2sp_pull(anchor: &[(Var, Tensor)], factor: f64) -> Result<()> {
    let f = factor.min(1.0);
    for (v, w0) in anchor {
        let w = v.as_tensor();
        v.set(&(w - ((w - w0)? * f)?)?)?;
    }
    Ok(())
}

/// The selection criterion after the epochs in `curve` (`None`: the last
/// epoch of `curve` cannot be selected).
fn criterion(ft: &FinetuneConfig, curve: &[f64]) -> Option<f64> {
    let e = curve.len();
    let from = ((ft.selection_from * ft.epochs as f64).ceil() as usize).max(1);
    match ft.selection {
        Selection::Last => (e == ft.epochs).then_some(0.0),
        _ if e < from => None,
        Selection::Best => curve.last().copied(),
        Selection::Smoothed => {
            let w = &curve[e.saturating_sub(ft.selection_window)..];
            Some(w.iter().sum::<f64>() / w.len() as f64)
        }
    }
}

/// The classifier (encoder from `init`, a new seeded head) and its AdamW
/// over the parameters fine-tuning trains (all, or the stages after
/// `finetune.freeze_up_to`, and the head).
fn build_classifier(
    cfg: &Config,
    init: &Init,
    seed: u64,
    dev: &Device,
) -> Result<(VarMap, Classifier, Optimizer)> {
    let ft = &cfg.finetune;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let encoder = ResNet::new(&cfg.model, vb.pp("encoder"))?;
    // `head.*` sorts after `encoder.*`: a seed's random encoder is the one
    // pretraining starts from and the random-init probe reads.
    let head = candle_nn::linear(cfg.model.feature_dim(), 1, vb.pp("head"))?;
    // `head_aux.*` sorts after `head.*`: the encoder and head draw the same
    // values with the auxiliary target on or off.
    let aux_head = (ft.aux_weight > 0.0)
        .then(|| candle_nn::linear(cfg.model.feature_dim(), 1, vb.pp("head_aux")))
        .transpose()?;
    seeded_init(&vm, seed)?;
    load_encoder(&vm, init)?;
    let frozen = match ft.freeze_up_to {
        None => 0,
        Some(last) => Stage::ALL.iter().filter(|s| **s <= last).count(),
    };
    let model = Classifier {
        encoder,
        head,
        aux_head,
        frozen,
    };

    let heads: &[&str] = if ft.aux_weight > 0.0 {
        &["head.", "head_aux."]
    } else {
        &["head."]
    };
    let trainable: Vec<&str> = match ft.freeze_up_to {
        None => ["encoder."].iter().chain(heads).copied().collect(),
        Some(last) => Stage::ALL
            .iter()
            .filter(|s| **s > last)
            .flat_map(|s| s.prefixes())
            .chain(heads.iter().copied())
            .collect(),
    };
    let ocfg = OptimConfig {
        kind: OptimizerKind::Adamw,
        lr: ft.lr,
        weight_decay: ft.weight_decay,
        ..Default::default()
    };
    let opt =
        Optimizer::with_lr_mults(&vm, &ocfg, &trainable, &[("encoder.", ft.encoder_lr_mult)])?;
    Ok((vm, model, opt))
}

/// Fine-tunes from `init` on `data` ([`Splits`]).
/// `cfg` gives the architecture, the view size and `cfg.finetune` the
/// recipe; `seed` the head init, data order and augmentation. With
/// `ckpt = (folder, identity)`, each epoch is saved in the folder and an
/// earlier run's saved state is continued if its identity (a hash of
/// everything that fixes the run's numbers) is the same; a folder holding
/// another identity is an error. With `finetune.ensemble = N > 1`, N such
/// runs ([`member_seed`]; member K's state in `folder/member-K`) and their
/// mean logits scored ([`FinetuneResult::members`]).
pub fn finetune(
    cfg: &Config,
    init: &Init,
    data: Splits,
    seed: u64,
    ckpt: Option<(&Path, &str)>,
) -> Result<FinetuneResult> {
    if cfg.finetune.ensemble <= 1 {
        return finetune_one(cfg, init, data, seed, ckpt);
    }
    ensemble::run(cfg, init, data, seed, ckpt)
}

/// One fine-tuning run (see [`finetune`]).
fn finetune_one(
    cfg: &Config,
    init: &Init,
    data: Splits,
    seed: u64,
    ckpt: Option<(&Path, &str)>,
) -> Result<FinetuneResult> {
    let Splits {
        train,
        val,
        test,
        external,
    } = data;
    let ckpt_dir = ckpt.map(|c| c.0);
    let ft = &cfg.finetune;
    ft.check().map_err(Error::Config)?;
    let n = train.images.len();
    let n_pos = train.labels.iter().filter(|&&l| l == 1).count();
    if n_pos == 0 || n_pos == n {
        return Err(Error::Config(format!(
            "fine-tuning needs both classes in the training labels ({n_pos} positives of {n})"
        )));
    }
    let aux_pos_weight = aux_pos_weight(ft, train)?;
    let dev = crate::device::open(&cfg.device, cfg.tf32)?;
    let (vm, model, mut opt) = build_classifier(cfg, init, seed, &dev)?;
    let anchor = (ft.l2sp > 0.0).then(|| l2sp_anchor(&vm)).transpose()?;
    let bs = ft.batch_size.min(n);
    let steps_per_epoch = n / bs;
    let sched = CosineSchedule {
        lr: ft.lr,
        warmup_steps: (ft.warmup_epochs * steps_per_epoch as f64).round() as usize,
        total_steps: ft.epochs * steps_per_epoch,
        final_fraction: 0.0,
    };
    let pos_weight = if ft.class_weight {
        (n - n_pos) as f64 / n_pos as f64
    } else {
        1.0
    };
    let crop = ft.view(cfg.pretext.crop);

    let (mut prog, mut selected, mut ema) = start_or_resume(ckpt, ft, &vm, &mut opt, &dev)?;
    let mut trainer = Trainer {
        model: &model,
        opt: &mut opt,
        sched,
        ft,
        crop,
        bs,
        pos_weight,
        aux_pos_weight,
        seed,
        dev: &dev,
        vm: &vm,
        ema: ema.as_mut(),
        anchor: anchor.as_deref(),
    };
    while prog.epochs_done < ft.epochs && (ft.patience == 0 || prog.stale < ft.patience) {
        let epoch = prog.epochs_done;
        let loss = trainer.epoch(train, epoch, &mut prog.step)?;
        prog.train_losses.push(loss);
        trainer.validate(val, &mut prog, &mut selected)?;
        tracing::debug!(
            "fine-tune epoch {}: loss {loss:.4}, val AUC {:.4}",
            epoch + 1,
            prog.val_curve[epoch]
        );
        if let Some(dir) = ckpt_dir {
            let ema = trainer.ema.as_deref();
            save_progress(dir, &vm, trainer.opt, selected.as_ref(), ema, &prog)?;
        }
        if crate::train::pretrain::STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Stopped(format!(
                "fine-tuning stopped after epoch {} of {}{}",
                prog.epochs_done,
                ft.epochs,
                if ckpt_dir.is_some() {
                    "; it resumes from there"
                } else {
                    ""
                }
            )));
        }
    }
    let (best_epoch, _, val_scores) = prog.selected.clone().ok_or_else(|| {
        Error::Config("fine-tuning selected no epoch (finetune.selection_from too late?)".into())
    })?;
    restore(&vm, selected.as_ref().expect("saved with the selection"))?;
    // Without a test split (tuning on validation alone) nothing is scored.
    let (test_scores, test_auc) = match test {
        Some(t) => {
            let s = model.scores(&t.images, crop, bs, ft.tta)?;
            let a = auc(&s, &t.labels)?;
            (s, a)
        }
        None => (Vec::new(), f64::NAN),
    };
    let external_scores = external
        .iter()
        .map(|e| model.scores(e, crop, bs, ft.tta))
        .collect::<Result<_>>()?;
    Ok(FinetuneResult {
        best_epoch,
        val_auc: prog.val_curve[best_epoch - 1],
        test_auc,
        test_scores,
        val_scores,
        val_curve: prog.val_curve,
        train_losses: prog.train_losses,
        external_scores,
        members: Vec::new(),
        model: Some(Finetuned {
            encoder: model.encoder.clone(),
            head: model.head.clone(),
            view: crop,
        }),
    })
}

/// The auxiliary target's positive-class weight (`finetune.class_weight`:
/// negatives over positives, as the main target's), or `None` when it is
/// off; an error when it is on and the training images lack the labels or
/// one of their classes.
fn aux_pos_weight(ft: &FinetuneConfig, train: &Labeled) -> Result<Option<f64>> {
    if ft.aux_weight == 0.0 {
        return Ok(None);
    }
    let aux = train.aux.as_ref().ok_or_else(|| {
        Error::Config(
            "finetune.aux_weight needs a second label for every training image, and this \
             data has none (an ISIC challenge folder whose descriptor names an aux_column, as \
             ISIC 2017's seborrheic_keratosis, or a manifest with an aux_label column)"
                .into(),
        )
    })?;
    let n = aux.len();
    if n != train.labels.len() {
        return Err(Error::Config(format!(
            "finetune: {n} auxiliary labels for {} training images",
            train.labels.len()
        )));
    }
    let n_pos = aux.iter().filter(|&&l| l == 1).count();
    if n_pos == 0 || n_pos == n {
        return Err(Error::Config(format!(
            "finetune.aux_weight needs both classes in the training images' auxiliary labels \
             ({n_pos} positives of {n})"
        )));
    }
    Ok(Some(if ft.class_weight {
        (n - n_pos) as f64 / n_pos as f64
    } else {
        1.0
    }))
}

/// `ema <- d ema + (1 - d) w` for every variable `w` of `vm`.
fn ema_step(ema: &mut Weights, vm: &VarMap, d: f64) -> Result<()> {
    let data = vm.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        let e = ema.get_mut(k).ok_or_else(|| Error::Checkpoint {
            path: PathBuf::new(),
            msg: format!("the moving average lacks {k}"),
        })?;
        // Detached: otherwise each average would keep the graph of the one
        // before, and with it every step's tensors (11.7 GB of memory after
        // 60 epochs, measured).
        let w = v.as_tensor().detach();
        *e = ((&*e * d)? + (w * (1.0 - d))?)?.detach();
    }
    Ok(())
}

/// Mixup's draw for batch `b` of `epoch`: `λ ~ Beta(alpha, alpha)` and the
/// partner of each of the `n` images (a shuffle), from their own stream.
fn mixup_draw(alpha: f64, n: usize, seed: u64, epoch: usize, b: usize) -> (f64, Vec<u32>) {
    let mut rng = stream(seed, "finetune-mixup", epoch as u64, b as u64);
    let lam = crate::rng::beta(alpha, alpha, &mut rng);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    crate::rng::shuffle(&mut perm, &mut rng);
    (lam, perm)
}

/// What a fine-tuning epoch needs besides the data.
struct Trainer<'a> {
    model: &'a Classifier,
    opt: &'a mut Optimizer,
    sched: CosineSchedule,
    ft: &'a FinetuneConfig,
    crop: usize,
    bs: usize,
    pos_weight: f64,
    /// The auxiliary target's positive weight, if it is on.
    aux_pos_weight: Option<f64>,
    seed: u64,
    dev: &'a Device,
    vm: &'a VarMap,
    /// The moving average of the weights (`finetune.ema`), if on.
    ema: Option<&'a mut Weights>,
    /// The encoder's starting weights (`finetune.l2sp`), if on.
    anchor: Option<&'a [(Var, Tensor)]>,
}

impl Trainer<'_> {
    /// Scores the validation images after an epoch (with the moving
    /// average's weights in place of the live ones, if on), records the
    /// AUC and, when the selection criterion improves, the weights scored.
    fn validate(
        &self,
        val: &Labeled,
        prog: &mut Progress,
        selected: &mut Option<Weights>,
    ) -> Result<()> {
        let live = match self.ema.as_deref() {
            Some(e) => {
                let live = snapshot(self.vm)?;
                restore(self.vm, e)?;
                Some(live)
            }
            None => None,
        };
        let vs = self
            .model
            .scores(&val.images, self.crop, self.bs, self.ft.tta)?;
        prog.val_curve.push(auc(&vs, &val.labels)?);
        prog.epochs_done += 1;
        if let Some(c) = criterion(self.ft, &prog.val_curve) {
            if prog.selected.as_ref().is_none_or(|(_, b, _)| c > *b) {
                prog.selected = Some((prog.epochs_done, c, vs));
                *selected = Some(snapshot(self.vm)?);
                prog.stale = 0;
            } else {
                prog.stale += 1;
            }
        }
        if let Some(live) = live {
            restore(self.vm, &live)?;
        }
        Ok(())
    }

    /// The moving average's step, if on.
    fn update_ema(&mut self) -> Result<()> {
        match self.ema.as_deref_mut() {
            Some(ema) => ema_step(ema, self.vm, self.ft.ema),
            None => Ok(()),
        }
    }

    /// The encoder's learning-rate factor at `step`: 0 while the head trains
    /// alone (`head_epochs`), then `encoder_lr_mult`, warmed up again over
    /// `warmup_epochs` after a head-only phase.
    fn encoder_mult(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let ft = self.ft;
        let head_steps = ft.head_epochs * steps_per_epoch;
        if step < head_steps {
            return 0.0;
        }
        let warm = (ft.warmup_epochs * steps_per_epoch as f64).round() as usize;
        if ft.head_epochs == 0 || warm == 0 {
            return ft.encoder_lr_mult;
        }
        ft.encoder_lr_mult * ((step - head_steps + 1) as f64 / warm as f64).min(1.0)
    }

    /// One epoch of training; returns its mean loss. `step` counts optimiser steps.
    fn epoch(&mut self, train: &Labeled, epoch: usize, step: &mut usize) -> Result<f64> {
        let (ft, seed, bs, dev) = (self.ft, self.seed, self.bs, self.dev);
        let n = train.images.len();
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::shuffle(
            &mut order,
            &mut stream(seed, "finetune-order", epoch as u64, 0),
        );
        let mut loss_sum = 0.0;
        let steps = n / bs;
        let head_only = epoch < ft.head_epochs;
        for (b, idx) in order.chunks_exact(bs).enumerate() {
            let views: Vec<Chw> = idx
                .par_iter()
                .map(|&i| {
                    augment::image_view(
                        train.images[i],
                        self.crop,
                        &ft.augment,
                        &mut stream(seed, "finetune-augment", epoch as u64, i as u64),
                    )
                })
                .collect();
            let y: Vec<f32> = idx.iter().map(|&i| train.labels[i] as f32).collect();
            let x = stack(views, dev)?;
            let mix = (ft.mixup > 0.0).then(|| mixup_draw(ft.mixup, idx.len(), seed, epoch, b));
            let x = match &mix {
                Some((lam, perm)) => {
                    let perm = Tensor::from_vec(perm.clone(), perm.len(), dev)?;
                    ((&x * *lam)? + (x.index_select(&perm, 0)? * (1.0 - lam))?)?
                }
                None => x,
            };
            let (logits, aux_logits) = self.model.train_logits(&x, head_only)?;
            // The loss on targets `y` (mixed with the partners' as the images are).
            let mixed = |logits: &Tensor, y: Vec<f32>, w: f64| -> Result<Tensor> {
                let bce = |y: Vec<f32>| -> Result<Tensor> {
                    let t = Tensor::from_vec(y, idx.len(), dev)?;
                    weighted_bce(logits, &t, w)
                };
                Ok(match &mix {
                    Some((lam, perm)) => {
                        let y2: Vec<f32> = perm.iter().map(|&j| y[j as usize]).collect();
                        ((bce(y)? * *lam)? + (bce(y2)? * (1.0 - lam))?)?
                    }
                    None => bce(y)?,
                })
            };
            let mut loss = mixed(&logits, y, self.pos_weight)?;
            if let (Some(za), Some(w), Some(aux)) = (&aux_logits, self.aux_pos_weight, &train.aux) {
                let ya: Vec<f32> = idx.iter().map(|&i| aux[i] as f32).collect();
                loss = (loss + (mixed(za, ya, w)? * ft.aux_weight)?)?;
            }
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite {
                    loss: lv,
                    epoch: epoch + 1,
                    step: *step,
                    last_good: "The last epoch's state is in the fine-tune checkpoint, if one is kept; lower finetune.lr.".into(),
                });
            }
            let enc_mult = if ft.head_epochs > 0 {
                let m = self.encoder_mult(*step, steps);
                self.opt.set_lr_mult("encoder.", m);
                m
            } else {
                ft.encoder_lr_mult
            };
            let lr = self.sched.at(*step);
            self.opt.step(&loss.backward()?, lr)?;
            if let Some(anchor) = self.anchor {
                l2sp_pull(anchor, lr * enc_mult * ft.l2sp)?;
            }
            self.update_ema()?;
            loss_sum += lv;
            *step += 1;
        }
        Ok(loss_sum / steps as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The average is a value, not a graph: it must not hold on to the
    /// variables (nor, through them, to every step before).
    #[test]
    fn the_moving_average_is_detached_and_moves_by_the_decay() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let w = vb
            .get_with_hints(2, "w", candle_nn::Init::Const(1.0))
            .unwrap();
        let mut ema = snapshot(&vm).unwrap();
        vm.data().lock().unwrap()["w"]
            .set(&(w.ones_like().unwrap() * 3.0).unwrap())
            .unwrap();
        ema_step(&mut ema, &vm, 0.75).unwrap();
        assert!(!ema["w"].track_op(), "the average tracks the graph");
        assert_eq!(ema["w"].to_vec1::<f32>().unwrap(), vec![1.5, 1.5]);
    }
}
