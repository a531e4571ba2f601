//! Experiment protocols (`protocols/*.toml`): one PIRL pretraining, then arms
//! (linear probe, k-NN, full or partial fine-tuning), each from PIRL, random
//! init or a weights file, at several label fractions and seeds, through one
//! code path. Each finished (arm, init, fraction, seed) is saved as it
//! completes, so an interrupted protocol continues with what is not done,
//! and the report is built only from finished results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Preset};
use crate::data::{Dataset, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::probe::{self, ProbeData};
use crate::train::checkpoint::write_atomic;
use crate::train::finetune::{self, FinetuneConfig, Init, Labeled};

/// How an arm uses the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmKind {
    /// Frozen encoder, logistic regression on pooled features.
    LinearProbe,
    /// Frozen encoder, cosine k-NN vote on pooled features (a cheap check).
    Knn,
    /// Fine-tuning (full, or partial with `finetune.freeze_up_to`).
    Finetune,
}

/// One arm of a protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Name in the report (e.g. `linear-probe`, `finetune`, `partial-finetune`).
    pub name: String,
    pub kind: ArmKind,
    /// Encoder inits: `pirl`, `random`, or `weights:<path.safetensors>`
    /// (torchvision naming, relative to the protocol file).
    #[serde(default = "default_inits")]
    pub inits: Vec<String>,
    /// Fine-tuning settings (kind = finetune).
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Neighbours for kind = knn; default 20.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Config keys this arm changes (e.g. `model = { arch = "resnet50" }`
    /// and `pretext.crop = 96` for an ImageNet ResNet-50 from a `weights:`
    /// file); merged over the protocol's config. An arm whose encoder
    /// differs from the pretrained one cannot take the `pirl` init.
    #[serde(default)]
    pub config: toml::Table,
    /// This arm's seeds, instead of the protocol's (e.g. fewer for a costly
    /// fine-tune).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// This arm's label fractions, instead of the protocol's.
    #[serde(default)]
    pub label_fractions: Option<Vec<f64>>,
}

fn default_inits() -> Vec<String> {
    vec!["pirl".into(), "random".into()]
}
fn default_k() -> usize {
    20
}

/// A protocol file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub name: String,
    /// Preset under `config`; default `cpu`.
    #[serde(default = "default_preset")]
    pub preset: Preset,
    /// Overrides of the run config (the keys of `--config`), for pretraining
    /// and the shared view settings.
    #[serde(default)]
    pub config: toml::Table,
    /// Seeds of the downstream arms (label subset, head init, order); default [0].
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Fractions of the labeled training split, stratified and nested; default [1.0].
    #[serde(default = "default_fractions")]
    pub label_fractions: Vec<f64>,
    /// Bootstrap resamples for the CIs; default 2000.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: usize,
    pub arms: Vec<Arm>,
}

fn default_preset() -> Preset {
    Preset::Cpu
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_fractions() -> Vec<f64> {
    vec![1.0]
}
fn default_resamples() -> usize {
    2000
}

impl Protocol {
    /// Reads and validates a protocol file.
    pub fn from_file(path: &Path) -> Result<(Protocol, Config)> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let p: Protocol =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let cfg_text = toml::to_string(&p.config).map_err(|e| Error::Config(e.to_string()))?;
        let cfg = Config::from_toml_over(p.preset, &cfg_text)
            .map_err(|e| Error::Config(format!("{}: [config] {e}", path.display())))?;
        p.check()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for a in &p.arms {
            let ac = p
                .arm_config(a, &cfg)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if ac.data != cfg.data {
                return Err(Error::Config(format!(
                    "{}: arm {}: [arms.config] cannot change data settings (the images are loaded once for all arms)",
                    path.display(),
                    a.name
                )));
            }
            if ac.model != cfg.model && a.inits.iter().any(|i| i == "pirl") {
                return Err(Error::Config(format!(
                    "{}: arm {} changes the encoder (model), so it cannot take the pirl init (pretrained as {:?} width {})",
                    path.display(),
                    a.name,
                    cfg.model.arch,
                    cfg.model.width
                )));
            }
        }
        Ok((p, cfg))
    }

    /// The config an arm runs with: the protocol's, with the arm's `config`
    /// keys merged on top.
    pub fn arm_config(&self, arm: &Arm, cfg: &Config) -> std::result::Result<Config, String> {
        if arm.config.is_empty() {
            return Ok(cfg.clone());
        }
        cfg.with_overrides(&arm.config)
            .map_err(|e| format!("arm {}: [arms.config] {e}", arm.name))
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        if self.arms.is_empty() || self.seeds.is_empty() || self.label_fractions.is_empty() {
            return Err("a protocol needs at least one arm, seed and label fraction".into());
        }
        if let Some(f) = self
            .label_fractions
            .iter()
            .find(|f| !(**f > 0.0 && **f <= 1.0))
        {
            return Err(format!("label fraction {f} is not in (0, 1]"));
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.arms {
            if a.seeds.as_ref().is_some_and(|s| s.is_empty())
                || a.label_fractions.as_ref().is_some_and(|f| f.is_empty())
            {
                return Err(format!("arm {}: empty seeds or label_fractions", a.name));
            }
            if let Some(f) = a
                .label_fractions
                .iter()
                .flatten()
                .find(|f| !(**f > 0.0 && **f <= 1.0))
            {
                return Err(format!(
                    "arm {}: label fraction {f} is not in (0, 1]",
                    a.name
                ));
            }
            if !names.insert(&a.name) {
                return Err(format!("arm name {} used twice", a.name));
            }
            if a.name.is_empty() || a.name.contains(['/', '\\', ' ']) {
                return Err(format!("arm name {:?} must be a plain word", a.name));
            }
            for i in &a.inits {
                if !(i == "pirl" || i == "random" || i.starts_with("weights:")) {
                    return Err(format!(
                        "arm {}: init {i:?} is not pirl, random or weights:<file>",
                        a.name
                    ));
                }
            }
            if a.kind == ArmKind::Knn && a.k == 0 {
                return Err(format!("arm {}: k must be >= 1", a.name));
            }
        }
        Ok(())
    }
}

/// Indices (into `labels`) of a stratified subset holding `fraction` of each
/// class (at least one of each). For one seed, a smaller fraction's subset is
/// contained in every larger one.
pub fn label_subset(labels: &[u8], fraction: f64, seed: u64) -> Vec<usize> {
    let mut out = Vec::new();
    for class in [0u8, 1] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        crate::rng::shuffle(
            &mut idx,
            &mut crate::rng::stream(seed, "label-fraction", class as u64, 0),
        );
        let take =
            ((idx.len() as f64 * fraction).ceil() as usize).clamp(1.min(idx.len()), idx.len());
        out.extend_from_slice(&idx[..take]);
    }
    out.sort();
    out
}

/// One finished (arm, init, fraction, seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: String,
    pub kind: ArmKind,
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub n_train: usize,
    pub n_train_pos: usize,
    pub val_auc: f64,
    pub test_auc: f64,
    /// Test scores in test-split order.
    pub test_scores: Vec<f64>,
    /// Validation scores (for thresholds picked on validation).
    pub val_scores: Vec<f64>,
    /// Arm-specific detail (chosen penalty, best epoch, ...).
    pub detail: String,
    pub seconds: f64,
}

fn result_path(dir: &Path, arm: &str, init: &str, fraction: f64, seed: u64) -> PathBuf {
    let init = init.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    dir.join(format!("{arm}__{init}__f{fraction}__s{seed}.json"))
}

/// Everything needed to run arms on one data set.
pub struct Runner<'a> {
    pub cfg: &'a Config,
    pub ds: &'a Dataset,
    pub imgs: &'a [RgbImage],
    /// Folder of the finished results.
    pub results_dir: PathBuf,
    /// The PIRL checkpoint (for init `pirl`).
    pub pirl_checkpoint: Option<PathBuf>,
    /// Folder the protocol file is in (for `weights:` paths).
    pub protocol_dir: PathBuf,
}

impl Runner<'_> {
    fn init(&self, s: &str) -> Result<Init> {
        Ok(match s {
            "random" => Init::Random,
            "pirl" => {
                Init::Checkpoint(self.pirl_checkpoint.clone().ok_or_else(|| {
                    Error::Config("init pirl needs a pretrained checkpoint".into())
                })?)
            }
            w => Init::Torchvision(self.protocol_dir.join(w.trim_start_matches("weights:"))),
        })
    }

    fn split(&self, s: Split) -> (Vec<&RgbImage>, Vec<u8>) {
        let idx = self.ds.indices(s);
        (
            idx.iter().map(|&i| &self.imgs[i]).collect(),
            idx.iter()
                .map(|&i| self.ds.samples[i].label.unwrap_or(0))
                .collect(),
        )
    }

    /// Runs every (arm, init, fraction, seed) not finished yet; returns all results.
    pub fn run(&self, p: &Protocol) -> Result<Vec<ArmResult>> {
        std::fs::create_dir_all(&self.results_dir).map_err(io(&self.results_dir))?;
        let (tr_i, tr_y) = self.split(Split::Train);
        let (va_i, va_y) = self.split(Split::Val);
        let (te_i, te_y) = self.split(Split::Test);
        let mut results = Vec::new();
        // Frozen features per (encoder, view, init), computed once and shared
        // by arms, fractions and seeds.
        let mut feats: BTreeMap<String, [ndarray::Array2<f64>; 3]> = BTreeMap::new();
        // A frozen-feature arm is a function of its training subset alone
        // (at 100 % of the labels every seed gets the same subset): fitted
        // once per (arm, init, subset).
        type Fitted = (f64, f64, Vec<f64>, Vec<f64>, String);
        let mut fitted: BTreeMap<(String, String, Vec<usize>), Fitted> = BTreeMap::new();
        for arm in &p.arms {
            let acfg = p.arm_config(arm, self.cfg).map_err(Error::Config)?;
            for init_s in &arm.inits {
                let feat_key = format!(
                    "{}|{}|{init_s}",
                    serde_json::to_string(&acfg.model).unwrap_or_default(),
                    serde_json::to_string(&acfg.pretext.crop).unwrap_or_default()
                );
                for &fraction in arm.label_fractions.as_ref().unwrap_or(&p.label_fractions) {
                    for &seed in arm.seeds.as_ref().unwrap_or(&p.seeds) {
                        let path =
                            result_path(&self.results_dir, &arm.name, init_s, fraction, seed);
                        if let Ok(bytes) = std::fs::read(&path)
                            && let Ok(r) = serde_json::from_slice::<ArmResult>(&bytes)
                        {
                            results.push(r);
                            continue;
                        }
                        if crate::train::pretrain::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                            return Err(Error::Stopped(format!(
                                "{} finished runs are saved in {}",
                                results.len(),
                                self.results_dir.display()
                            )));
                        }
                        let t = std::time::Instant::now();
                        let sub = label_subset(&tr_y, fraction, seed);
                        let sub_i: Vec<&RgbImage> = sub.iter().map(|&i| tr_i[i]).collect();
                        let sub_y: Vec<u8> = sub.iter().map(|&i| tr_y[i]).collect();
                        let fit_key = (arm.name.clone(), init_s.clone(), sub.clone());
                        let earlier = fitted.get(&fit_key).cloned();
                        let (val_auc, test_auc, val_scores, test_scores, detail) = match arm.kind {
                            ArmKind::LinearProbe | ArmKind::Knn if earlier.is_some() => {
                                earlier.expect("checked by the guard")
                            }
                            ArmKind::LinearProbe | ArmKind::Knn => {
                                if !feats.contains_key(&feat_key) {
                                    feats.insert(
                                        feat_key.clone(),
                                        self.frozen_features(
                                            &acfg,
                                            &self.init(init_s)?,
                                            &tr_i,
                                            &va_i,
                                            &te_i,
                                        )?,
                                    );
                                }
                                let [ftr, fva, fte] = &feats[&feat_key];
                                let ftr_sub = ftr.select(ndarray::Axis(0), &sub);
                                if arm.kind == ArmKind::LinearProbe {
                                    let r = probe::fit_probe(
                                        &ftr_sub,
                                        &sub_y,
                                        fva,
                                        &va_y,
                                        fte,
                                        &te_y,
                                        &acfg.probe,
                                    )?;
                                    (
                                        r.val_auc,
                                        r.test_auc,
                                        r.val_scores,
                                        r.test_scores,
                                        format!("alpha {}", r.alpha),
                                    )
                                } else {
                                    let vs = probe::knn_scores(&ftr_sub, &sub_y, fva, arm.k);
                                    let ts = probe::knn_scores(&ftr_sub, &sub_y, fte, arm.k);
                                    (
                                        crate::eval::auc(&vs, &va_y)?,
                                        crate::eval::auc(&ts, &te_y)?,
                                        vs,
                                        ts,
                                        format!("k {}", arm.k),
                                    )
                                }
                            }
                            ArmKind::Finetune => {
                                let init = self.init(init_s)?;
                                let r = finetune::finetune(
                                    &acfg,
                                    &arm.finetune,
                                    &init,
                                    &Labeled {
                                        images: sub_i.clone(),
                                        labels: sub_y.clone(),
                                    },
                                    &Labeled {
                                        images: va_i.clone(),
                                        labels: va_y.clone(),
                                    },
                                    &Labeled {
                                        images: te_i.clone(),
                                        labels: te_y.clone(),
                                    },
                                    seed,
                                )?;
                                (
                                    r.val_auc,
                                    r.test_auc,
                                    r.val_scores,
                                    r.test_scores,
                                    format!("best epoch {} of {}", r.best_epoch, r.val_curve.len()),
                                )
                            }
                        };
                        if arm.kind != ArmKind::Finetune {
                            fitted.entry(fit_key).or_insert_with(|| {
                                (
                                    val_auc,
                                    test_auc,
                                    val_scores.clone(),
                                    test_scores.clone(),
                                    detail.clone(),
                                )
                            });
                        }
                        let r = ArmResult {
                            arm: arm.name.clone(),
                            kind: arm.kind,
                            init: init_s.clone(),
                            fraction,
                            seed,
                            n_train: sub_y.len(),
                            n_train_pos: sub_y.iter().filter(|&&y| y == 1).count(),
                            val_auc,
                            test_auc,
                            test_scores,
                            val_scores,
                            detail,
                            seconds: t.elapsed().as_secs_f64(),
                        };
                        tracing::info!(
                            "{} / {} / {:.0} % labels / seed {}: val AUC {:.4}, test AUC {:.4} ({}, {:.0} s)",
                            r.arm,
                            r.init,
                            fraction * 100.0,
                            seed,
                            val_auc,
                            test_auc,
                            r.detail,
                            r.seconds
                        );
                        let j = serde_json::to_vec(&r).map_err(|e| Error::Report(e.to_string()))?;
                        write_atomic(&path, &j)?;
                        results.push(r);
                    }
                }
            }
        }
        Ok(results)
    }

    /// Frozen features (train, val, test) of the encoder from `init`, with
    /// BatchNorm statistics recomputed on the training images if configured.
    fn frozen_features(
        &self,
        cfg: &Config,
        init: &Init,
        tr: &[&RgbImage],
        va: &[&RgbImage],
        te: &[&RgbImage],
    ) -> Result<[ndarray::Array2<f64>; 3]> {
        let (vm, m) = crate::model::build(
            &cfg.model,
            cfg.pretext.kind,
            cfg.seed,
            candle_core::DType::F32,
            &crate::device::open(&cfg.device, cfg.tf32)?,
        )?;
        finetune::load_encoder(&vm, init)?;
        probe::frozen_features(&vm, &m.encoder, "encoder", cfg, tr, va, te)
    }
}

/// The probe data of a data set's splits (for the spine's `reproduce`).
pub fn probe_data<'a>(ds: &Dataset, imgs: &'a [RgbImage]) -> ProbeData<'a> {
    let take = |s: Split| {
        let idx = ds.indices(s);
        (
            idx.iter().map(|&i| &imgs[i]).collect(),
            idx.iter()
                .map(|&i| ds.samples[i].label.unwrap_or(0))
                .collect(),
        )
    };
    ProbeData {
        train: take(Split::Train),
        val: take(Split::Val),
        test: take(Split::Test),
    }
}
