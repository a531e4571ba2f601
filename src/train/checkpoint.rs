//! Checkpoints: a folder per save (`checkpoints/epoch-NNNN/`) holding the
//! weights (encoder + heads), the optimiser state, the memory bank and
//! `meta.json` (resolved config, its hash, epoch, step, losses). A folder is
//! written under a temporary name, every file fsynced, then renamed; the
//! `latest` pointer is replaced the same way, so a crash leaves either the old
//! or the new checkpoint, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result, io};
use crate::io::{fsync_file, write_atomic};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const BANK_FILE: &str = "bank.safetensors";
pub const META_FILE: &str = "meta.json";

/// Bump when a change in pirlkit changes the numbers that the same settings
/// give (a new recipe default is a change of settings and needs no bump).
/// Every protocol run's key holds it, and a pretraining checkpoint made
/// under another version is not continued (nor reused as finished) without
/// `--force-resume`.
pub const RESULT_VERSION: u32 = 2;

/// The result version of a checkpoint saved before checkpoints recorded it:
/// the one in force then, so that they stay valid.
fn unrecorded_result_version() -> u32 {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimiser steps.
    pub step: usize,
    pub config: Config,
    pub config_hash: String,
    /// Mean loss of each completed epoch.
    pub epoch_losses: Vec<f64>,
    /// Sum of the losses of the current epoch's completed steps (mid-epoch checkpoints).
    #[serde(default)]
    pub partial_loss_sum: f64,
    /// Steps summed in `partial_loss_sum`.
    #[serde(default)]
    pub partial_steps: usize,
    /// Learning-rate factor after skipped non-finite batches (1 = none).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Batches skipped for a non-finite loss or gradient.
    #[serde(default)]
    pub skipped_steps: usize,
    /// Pretraining wall time so far (s), summed over resumed sessions.
    pub wall_s: f64,
    pub pirlkit_version: String,
    /// [`RESULT_VERSION`] of the build that made it.
    #[serde(default = "unrecorded_result_version")]
    pub result_version: u32,
}

fn one() -> f64 {
    1.0
}

/// The settings pretraining reads: the config with the sections and keys it
/// does not (the probe, fine-tuning, worker threads, batch prefetching) at
/// their sections' own defaults, not a preset's, so that a preset's new
/// probe or fine-tuning defaults do not re-key its pretraining.
pub fn pretrain_settings(cfg: &Config) -> Config {
    Config {
        threads: 0,
        probe: crate::config::ProbeConfig::default(),
        finetune: crate::config::FinetuneConfig::default(),
        data: crate::config::DataConfig {
            prefetch: crate::config::DataConfig::default().prefetch,
            ..cfg.data.clone()
        },
        ..cfg.clone()
    }
}

/// SHA-256 of the pretraining settings ([`pretrain_settings`]): a checkpoint
/// is continued only under the same hash.
pub fn pretrain_hash(cfg: &Config) -> String {
    config_hash(&pretrain_settings(cfg))
}

/// SHA-256 of the config's canonical JSON.
pub fn config_hash(cfg: &Config) -> String {
    use sha2::{Digest, Sha256};
    let j = serde_json::to_vec(cfg).expect("config serialises");
    hex::encode(Sha256::digest(&j))
}

/// Everything a checkpoint holds, borrowed for saving.
pub struct Snapshot<'a> {
    pub vm: &'a VarMap,
    pub optimizer: HashMap<String, Tensor>,
    pub bank: Tensor,
    pub meta: Meta,
}

/// Saves under `<run>/checkpoints/step-NNNNNNNN`, points `latest` at it and
/// keeps the newest `keep` checkpoints. Returns the folder.
pub fn save(run_dir: &Path, snap: Snapshot, keep: usize) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let name = format!("step-{:08}", snap.meta.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = || -> Result<()> {
        snap.vm.save(tmp.join(MODEL_FILE))?;
        candle_core::safetensors::save(&snap.optimizer, tmp.join(OPTIM_FILE))?;
        candle_core::safetensors::save(
            &HashMap::from([("bank".to_string(), snap.bank.clone())]),
            tmp.join(BANK_FILE),
        )?;
        let j = serde_json::to_vec_pretty(&snap.meta).map_err(|e| Error::Checkpoint {
            path: tmp.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(tmp.join(META_FILE), j).map_err(io(tmp.join(META_FILE)))?;
        for f in [MODEL_FILE, OPTIM_FILE, BANK_FILE, META_FILE] {
            fsync_file(&tmp.join(f))?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // The best epoch-end checkpoint by mean epoch loss (the pretraining
    // metric) is kept beside the newest ones, named by `best`.
    let epoch_end = snap.meta.partial_steps == 0 && snap.meta.partial_loss_sum == 0.0;
    if epoch_end && let Some(&loss) = snap.meta.epoch_losses.last() {
        let best_loss = std::fs::read_to_string(root.join("best"))
            .ok()
            .and_then(|b| read_meta(&root.join(b.trim())).ok())
            .and_then(|m| m.epoch_losses.last().copied());
        if loss.is_finite() && best_loss.is_none_or(|b| loss < b) {
            write_atomic(&root.join("best"), name.as_bytes())?;
        }
    }
    let best = std::fs::read_to_string(root.join("best"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // Prune older checkpoints only after `latest` points at the new one.
    let mut all: Vec<String> = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    all.sort();
    if all.len() > keep.max(1) {
        for old in all[..all.len() - keep.max(1)]
            .iter()
            .filter(|n| **n != best)
        {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }
    Ok(dst)
}

/// The checkpoint `latest` points at, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let p = run_dir.join("checkpoints").join("latest");
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let d = run_dir.join("checkpoints").join(s.trim());
            if !d.join(META_FILE).is_file() {
                return Err(Error::Checkpoint {
                    path: d,
                    msg: "`latest` points at a checkpoint without meta.json".into(),
                });
            }
            Ok(Some(d))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path: p, source: e }),
    }
}

/// The checkpoint folder a user named: a checkpoint folder itself (it holds
/// `meta.json`), the `latest` pointer file, a run's `checkpoints/` folder or
/// the run folder (both: the checkpoint `latest` points at). Anything else
/// is an error that names the path and what was looked for.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    if p.join(META_FILE).is_file() {
        return Ok(p.to_path_buf());
    }
    let not_found = |msg: &str| Error::Checkpoint {
        path: p.to_path_buf(),
        msg: msg.into(),
    };
    if p.is_file() {
        let s = std::fs::read_to_string(p).map_err(io(p))?;
        let dir = p.parent().unwrap_or(Path::new(".")).join(s.trim());
        if s.trim().is_empty() || !dir.join(META_FILE).is_file() {
            return Err(not_found(
                "not a checkpoint folder, and not a `latest` pointer to one",
            ));
        }
        return Ok(dir);
    }
    if p.join("latest").is_file() {
        return resolve(&p.join("latest"));
    }
    if p.join("checkpoints").is_dir() {
        return latest(p)?.ok_or_else(|| not_found("the run has no checkpoint yet"));
    }
    Err(not_found(
        "no checkpoint here: give a checkpoint folder (runs/X/checkpoints/step-N, with meta.json), \
         its `latest` pointer, or the run folder",
    ))
}

pub fn read_meta(ckpt: &Path) -> Result<Meta> {
    let p = ckpt.join(META_FILE);
    let s = std::fs::read(&p).map_err(io(&p))?;
    serde_json::from_slice(&s).map_err(|e| Error::Checkpoint {
        path: p,
        msg: e.to_string(),
    })
}

/// Loads the weights saved in `ckpt` into `vm` (every variable of `vm` must be there).
pub fn load_weights(vm: &mut VarMap, ckpt: &Path) -> Result<()> {
    let p = ckpt.join(MODEL_FILE);
    vm.load(&p).map_err(|e| Error::Checkpoint {
        path: p,
        msg: e.to_string(),
    })
}

pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| Error::Checkpoint {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// The dotted keys whose values differ between two configs.
pub fn config_diff(a: &Config, b: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&serde_json::Value::Null),
                        y.get(k).unwrap_or(&serde_json::Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(a).expect("config"),
        &serde_json::to_value(b).expect("config"),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_takes_the_folder_the_pointer_the_checkpoints_folder_or_the_run() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        let root = run.join("checkpoints");
        for step in ["step-00000001", "step-00000002"] {
            std::fs::create_dir_all(root.join(step)).unwrap();
            std::fs::write(root.join(step).join(META_FILE), "{}").unwrap();
        }
        std::fs::write(root.join("latest"), "step-00000002\n").unwrap();
        let want = root.join("step-00000002");
        for p in [&want, &root.join("latest"), &root, &run] {
            assert_eq!(resolve(p).unwrap(), want, "{}", p.display());
        }
        // An older checkpoint named directly is taken as is.
        let older = root.join("step-00000001");
        assert_eq!(resolve(&older).unwrap(), older);
        // A path that holds none of them is an error naming it.
        let e = resolve(&t.path().join("nothing")).unwrap_err().to_string();
        assert!(
            e.contains("nothing") && e.contains("no checkpoint here"),
            "{e}"
        );
        // A pointer to a missing checkpoint is an error too.
        std::fs::write(root.join("latest"), "step-00000009").unwrap();
        let e = resolve(&run).unwrap_err().to_string();
        assert!(e.contains("without meta.json"), "{e}");
        // A run folder whose training has not checkpointed yet.
        let fresh = t.path().join("fresh");
        std::fs::create_dir_all(fresh.join("checkpoints")).unwrap();
        let e = resolve(&fresh).unwrap_err().to_string();
        assert!(e.contains("no checkpoint yet"), "{e}");
    }
}
