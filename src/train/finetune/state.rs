//! Fine-tuning's saved state: after every epoch the weights, the optimiser,
//! the selected weights so far, the moving average of the weights (when
//! on) and the progress, written atomically into `epoch-NNNN` beside a
//! `latest` pointer; a rerun starts from there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::error::{Error, Result, io};
use crate::optim::Optimizer;
use crate::train::checkpoint;

pub(super) fn snapshot(vm: &VarMap) -> Result<Weights> {
    let data = vm.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

pub(super) fn restore(vm: &VarMap, snap: &Weights) -> Result<()> {
    let data = vm.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        let t = snap.get(k).ok_or_else(|| Error::Checkpoint {
            path: PathBuf::new(),
            msg: format!("saved weights lack {k}"),
        })?;
        v.set(&t.to_device(v.device())?)?;
    }
    Ok(())
}

/// Where fine-tuning stands after an epoch: what a checkpoint holds besides
/// the weights and the optimiser state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// What the run is (a hash of its settings, init and data): a folder
    /// holding another run's state is refused.
    pub(super) identity: String,
    /// Completed epochs.
    pub(super) epochs_done: usize,
    /// Completed optimiser steps.
    pub(super) step: usize,
    pub(super) val_curve: Vec<f64>,
    pub(super) train_losses: Vec<f64>,
    /// The selected epoch so far (1-based), its criterion and its
    /// validation scores; its weights are `selected.safetensors`.
    pub(super) selected: Option<(usize, f64, Vec<f64>)>,
    /// Epochs since the criterion last improved (early stopping).
    pub(super) stale: usize,
}

const PROGRESS_FILE: &str = "progress.json";
const SELECTED_FILE: &str = "selected.safetensors";
/// The moving average of the weights (`finetune.ema`).
const EMA_FILE: &str = "ema.safetensors";

/// Saves the state after an epoch into `dir/epoch-NNNN` and points
/// `dir/latest` at it; older epoch folders are removed.
pub(super) fn save_progress(
    dir: &Path,
    vm: &VarMap,
    opt: &Optimizer,
    selected: Option<&Weights>,
    ema: Option<&Weights>,
    prog: &Progress,
) -> Result<()> {
    let name = format!("epoch-{:04}", prog.epochs_done);
    crate::io::write_dir_atomic(&dir.join(&name), |tmp| {
        vm.save(tmp.join(checkpoint::MODEL_FILE))?;
        candle_core::safetensors::save(&opt.state_tensors()?, tmp.join(checkpoint::OPTIM_FILE))?;
        if let Some(sel) = selected {
            candle_core::safetensors::save(sel, tmp.join(SELECTED_FILE))?;
        }
        if let Some(e) = ema {
            candle_core::safetensors::save(e, tmp.join(EMA_FILE))?;
        }
        let j = serde_json::to_vec_pretty(prog).map_err(|e| Error::Report(e.to_string()))?;
        std::fs::write(tmp.join(PROGRESS_FILE), j).map_err(io(tmp.join(PROGRESS_FILE)))
    })?;
    crate::io::write_atomic(&dir.join("latest"), name.as_bytes())?;
    // Older epochs, and temporary folders a killed write left behind.
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if (n.starts_with("epoch-") && n != name)
            || (n.starts_with(".epoch-") && n.ends_with(".tmp"))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Weights by variable name (a snapshot, the selected epoch's, the
/// moving average).
pub(super) type Weights = HashMap<String, Tensor>;

/// A saved state: the progress, the selected weights and the moving
/// average, where saved.
type Saved = (Progress, Option<Weights>, Option<Weights>);

/// The state saved by [`save_progress`], if `dir` holds one.
fn load_progress(
    dir: &Path,
    vm: &VarMap,
    opt: &mut Optimizer,
    dev: &Device,
) -> Result<Option<Saved>> {
    let Ok(name) = std::fs::read_to_string(dir.join("latest")) else {
        return Ok(None);
    };
    let ck = dir.join(name.trim());
    let p = ck.join(PROGRESS_FILE);
    let bytes = std::fs::read(&p).map_err(io(&p))?;
    let prog: Progress = serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    restore(
        vm,
        &checkpoint::load_tensors(&ck.join(checkpoint::MODEL_FILE), dev)?,
    )?;
    opt.load_state(&checkpoint::load_tensors(
        &ck.join(checkpoint::OPTIM_FILE),
        dev,
    )?)?;
    let optional = |f: &str| -> Result<Option<Weights>> {
        let p = ck.join(f);
        Ok(if p.is_file() {
            Some(checkpoint::load_tensors(&p, dev)?)
        } else {
            None
        })
    };
    Ok(Some((prog, optional(SELECTED_FILE)?, optional(EMA_FILE)?)))
}

/// A fresh start (the moving average, if on, from the initial weights), or
/// the state saved in the checkpoint folder: its progress, selected weights
/// and moving average, the weights and optimiser restored. A folder holding
/// another run's state is refused.
pub(super) fn start_or_resume(
    ckpt: Option<(&Path, &str)>,
    ft: &FinetuneConfig,
    vm: &VarMap,
    opt: &mut Optimizer,
    dev: &Device,
) -> Result<(Progress, Option<Weights>, Option<Weights>)> {
    let fresh = Progress {
        identity: ckpt.map(|c| c.1.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let ema = (ft.ema > 0.0).then(|| snapshot(vm)).transpose()?;
    let Some((dir, identity)) = ckpt else {
        return Ok((fresh, None, ema));
    };
    let Some((p, sel, saved_ema)) = load_progress(dir, vm, opt, dev)? else {
        return Ok((fresh, None, ema));
    };
    if p.identity != identity {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            msg: "this folder holds the state of a fine-tuning with other settings, init or data; remove it or choose another output folder".into(),
        });
    }
    tracing::info!(
        "fine-tuning resumes after epoch {} of {} ({})",
        p.epochs_done,
        ft.epochs,
        dir.display()
    );
    let ema = match ema {
        Some(_) => Some(saved_ema.ok_or_else(|| Error::Checkpoint {
            path: dir.to_path_buf(),
            msg: format!("the saved state lacks {EMA_FILE} (finetune.ema is on)"),
        })?),
        None => None,
    };
    Ok((p, sel, ema))
}
