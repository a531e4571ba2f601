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

use candle_core::{DType, Device, Module, Tensor};
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

mod ensemble;
mod state;
mod trainer;
pub use ensemble::{Member, member_seed};
use state::{restore, save_progress, start_or_resume};
pub use trainer::l2sp_pull;
use trainer::{Trainer, l2sp_anchor};

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

impl<'s, 'a> Splits<'s, 'a> {
    /// Train, validation and (when given) test, no external sets.
    pub fn new(
        train: &'s Labeled<'a>,
        val: &'s Labeled<'a>,
        test: Option<&'s Labeled<'a>>,
    ) -> Self {
        Self {
            train,
            val,
            test,
            external: &[],
        }
    }
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
