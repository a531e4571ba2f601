//! One fine-tuning epoch and its validation: the training step (augmented
//! views, optional mixup, the class-weighted loss and the auxiliary
//! target's, AdamW, then L2-SP's pull and the moving average), and the
//! selection of the epoch on validation.

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

use super::state::{Progress, Weights, restore, snapshot};
use super::{Classifier, Labeled, weighted_bce};
use crate::augment::{self, Chw, stack};
use crate::config::{FinetuneConfig, Selection};
use crate::error::{Error, Result};
use crate::eval::auc;
use crate::optim::{CosineSchedule, Optimizer};
use crate::rng::stream;

/// The encoder's conv and linear weights with their starting values, the
/// anchor of `finetune.l2sp` (in name order). Taken before a saved state
/// is resumed, so an interrupted run pulls toward the same values.
pub(super) fn l2sp_anchor(vm: &VarMap) -> Result<Vec<(Var, Tensor)>> {
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
pub(super) struct Trainer<'a> {
    pub(super) model: &'a Classifier,
    pub(super) opt: &'a mut Optimizer,
    pub(super) sched: CosineSchedule,
    pub(super) ft: &'a FinetuneConfig,
    pub(super) crop: usize,
    pub(super) bs: usize,
    pub(super) pos_weight: f64,
    /// The auxiliary target's positive weight, if it is on.
    pub(super) aux_pos_weight: Option<f64>,
    pub(super) seed: u64,
    pub(super) dev: &'a Device,
    pub(super) vm: &'a VarMap,
    /// The moving average of the weights (`finetune.ema`), if on.
    pub(super) ema: Option<&'a mut Weights>,
    /// The encoder's starting weights (`finetune.l2sp`), if on.
    pub(super) anchor: Option<&'a [(Var, Tensor)]>,
}

impl Trainer<'_> {
    /// Scores the validation images after an epoch (with the moving
    /// average's weights in place of the live ones, if on), records the
    /// AUC and, when the selection criterion improves, the weights scored.
    pub(super) fn validate(
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
    pub(super) fn epoch(&mut self, train: &Labeled, epoch: usize, step: &mut usize) -> Result<f64> {
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
