//! Fine-tuning on labels: the encoder (from PIRL, from random init, or from a
//! weights file in torchvision naming) plus Linear(d, 1), class-weighted BCE,
//! augmentation, AdamW with a cosine schedule, model selection and early
//! stopping on validation AUC only; the test split is scored once, with the
//! weights of the best validation epoch.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{self, AugmentConfig, Chw};
use crate::config::Config;
use crate::data::RgbImage;
use crate::error::{Error, Result};
use crate::eval::auc;
use crate::model::{ResNet, seeded_init};
use crate::optim::{CosineSchedule, OptimConfig, Optimizer, OptimizerKind};
use crate::rng::stream;
use crate::train::pretrain::stack;

/// A stage of the ResNet, for partial fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Stem,
    Layer1,
    Layer2,
    Layer3,
    Layer4,
}

impl Stage {
    /// Variable-name prefixes (under `encoder.`) of this stage.
    fn prefixes(self) -> Vec<&'static str> {
        match self {
            Stage::Stem => vec!["encoder.conv1.", "encoder.bn1."],
            Stage::Layer1 => vec!["encoder.layer1."],
            Stage::Layer2 => vec!["encoder.layer2."],
            Stage::Layer3 => vec!["encoder.layer3."],
            Stage::Layer4 => vec!["encoder.layer4."],
        }
    }
    const ALL: [Stage; 5] = [
        Stage::Stem,
        Stage::Layer1,
        Stage::Layer2,
        Stage::Layer3,
        Stage::Layer4,
    ];
}

/// Fine-tuning settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Maximum epochs; default 30.
    pub epochs: usize,
    /// Default 32.
    pub batch_size: usize,
    /// AdamW learning rate; default 3e-4.
    pub lr: f64,
    /// AdamW decoupled weight decay (not on BatchNorm or biases); default 1e-4.
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation AUC (0 = never); default 10.
    pub patience: usize,
    /// Freeze the encoder up to and including this stage (partial
    /// fine-tuning); default none (full fine-tuning).
    pub freeze_up_to: Option<Stage>,
    /// Augmentation of the training images.
    pub augment: AugmentConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 32,
            lr: 3e-4,
            weight_decay: 1e-4,
            patience: 10,
            freeze_up_to: None,
            augment: AugmentConfig {
                crop_scale_min: 0.5,
                jitter: 0.2,
                hue: 0.02,
                jitter_p: 0.8,
                grayscale_p: 0.0,
                flip_p: 0.5,
            },
        }
    }
}

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

/// Images and their labels.
pub struct Labeled<'a> {
    pub images: Vec<&'a RgbImage>,
    pub labels: Vec<u8>,
}

/// What a fine-tuning run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneResult {
    pub best_epoch: usize,
    pub val_auc: f64,
    pub test_auc: f64,
    pub test_scores: Vec<f64>,
    /// Validation scores of the selected epoch.
    pub val_scores: Vec<f64>,
    /// Validation AUC after each epoch run.
    pub val_curve: Vec<f64>,
    pub train_losses: Vec<f64>,
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

    fn scores(&self, images: &[&RgbImage], crop: usize, batch: usize) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let views: Vec<Chw> = chunk
                .par_iter()
                .map(|im| augment::resize_full(im, crop))
                .collect();
            let z = self.logits(&stack(views, self.encoder.device())?, false)?;
            out.extend(z.to_vec1::<f32>()?.into_iter().map(f64::from));
        }
        Ok(out)
    }
}

fn snapshot(vm: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = vm.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn restore(vm: &VarMap, snap: &HashMap<String, Tensor>) -> Result<()> {
    let data = vm.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        v.set(&snap[k])?;
    }
    Ok(())
}

/// Fine-tunes from `init` on `train`, selects the epoch on `val`, scores `test` once.
/// `cfg` gives the architecture and the view size; `seed` the head init,
/// data order and augmentation.
pub fn finetune(
    cfg: &Config,
    ft: &FinetuneConfig,
    init: &Init,
    train: &Labeled,
    val: &Labeled,
    test: &Labeled,
    seed: u64,
) -> Result<FinetuneResult> {
    let n = train.images.len();
    let n_pos = train.labels.iter().filter(|&&l| l == 1).count();
    if n_pos == 0 || n_pos == n {
        return Err(Error::Config(format!(
            "fine-tuning needs both classes in the training labels ({n_pos} positives of {n})"
        )));
    }
    if ft.batch_size < 2 || ft.epochs == 0 {
        return Err(Error::Config(
            "finetune.batch_size must be >= 2 and finetune.epochs >= 1".into(),
        ));
    }
    let dev = crate::device::open(&cfg.device, cfg.tf32)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let encoder = ResNet::new(&cfg.model, vb.pp("encoder"))?;
    let head = candle_nn::linear(cfg.model.feature_dim(), 1, vb.pp("classifier"))?;
    seeded_init(&vm, seed)?;
    load_encoder(&vm, init)?;
    let frozen = match ft.freeze_up_to {
        None => 0,
        Some(last) => Stage::ALL.iter().filter(|s| **s <= last).count(),
    };
    let model = Classifier {
        encoder,
        head,
        frozen,
    };

    let trainable: Vec<&str> = match ft.freeze_up_to {
        None => vec!["encoder.", "classifier."],
        Some(last) => Stage::ALL
            .iter()
            .filter(|s| **s > last)
            .flat_map(|s| s.prefixes())
            .chain(["classifier."])
            .collect(),
    };
    let ocfg = OptimConfig {
        kind: OptimizerKind::Adamw,
        lr: ft.lr,
        weight_decay: ft.weight_decay,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vm, &ocfg, &trainable)?;
    let bs = ft.batch_size.min(n);
    let steps_per_epoch = n / bs;
    let sched = CosineSchedule {
        lr: ft.lr,
        warmup_steps: 0,
        total_steps: ft.epochs * steps_per_epoch,
        final_fraction: 0.0,
    };
    let pos_weight = (n - n_pos) as f64 / n_pos as f64;
    let crop = cfg.pretext.crop;

    let mut best: Option<(usize, f64, HashMap<String, Tensor>, Vec<f64>)> = None;
    let mut val_curve = Vec::new();
    let mut train_losses = Vec::new();
    let mut step = 0;
    for epoch in 0..ft.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::shuffle(
            &mut order,
            &mut stream(seed, "finetune-order", epoch as u64, 0),
        );
        let mut loss_sum = 0.0;
        for idx in order.chunks_exact(bs) {
            let views: Vec<Chw> = idx
                .par_iter()
                .map(|&i| {
                    augment::image_view(
                        train.images[i],
                        crop,
                        &ft.augment,
                        &mut stream(seed, "finetune-augment", epoch as u64, i as u64),
                    )
                })
                .collect();
            let y: Vec<f32> = idx.iter().map(|&i| train.labels[i] as f32).collect();
            let logits = model.logits(&stack(views, &dev)?, true)?;
            let loss = weighted_bce(&logits, &Tensor::from_vec(y, idx.len(), &dev)?, pos_weight)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite {
                    loss: lv,
                    epoch: epoch + 1,
                    step,
                    last_good: "Fine-tuning keeps no checkpoint; lower finetune.lr.".into(),
                });
            }
            opt.step(&loss.backward()?, sched.at(step))?;
            if crate::train::pretrain::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::Stopped(format!(
                    "fine-tuning was at epoch {}, step {step}; it restarts from its first epoch",
                    epoch + 1
                )));
            }
            loss_sum += lv;
            step += 1;
        }
        train_losses.push(loss_sum / steps_per_epoch as f64);
        let vs = model.scores(&val.images, crop, bs)?;
        let v = auc(&vs, &val.labels)?;
        val_curve.push(v);
        tracing::debug!(
            "fine-tune epoch {}: loss {:.4}, val AUC {v:.4}",
            epoch + 1,
            train_losses.last().unwrap()
        );
        if best.as_ref().is_none_or(|(_, b, _, _)| v > *b) {
            best = Some((epoch + 1, v, snapshot(&vm)?, vs));
        } else if ft.patience > 0 && epoch + 1 - best.as_ref().map_or(0, |b| b.0) >= ft.patience {
            break;
        }
    }
    let (best_epoch, val_auc, snap, val_scores) = best.expect("at least one epoch");
    restore(&vm, &snap)?;
    let test_scores = model.scores(&test.images, crop, bs)?;
    let test_auc = auc(&test_scores, &test.labels)?;
    Ok(FinetuneResult {
        best_epoch,
        val_auc,
        test_auc,
        test_scores,
        val_scores,
        val_curve,
        train_losses,
    })
}
