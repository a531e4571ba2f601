//! Experiment protocols (`protocols/*.toml`): one PIRL pretraining, then arms
//! (linear probe, k-NN, full or partial fine-tuning), each from PIRL, random
//! init or a weights file, at several label fractions and seeds, through one
//! code path. Each finished (arm, init, fraction, seed) is saved as it
//! completes under a key that hashes everything that fixes its numbers
//! ([`RunKey`]): an interrupted protocol continues with what is not done, a
//! changed setting reruns exactly the runs it touches, and the report is
//! built only from finished results of the current keys.

mod key;
mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use key::{ArmResult, RESULT_VERSION, RunKey, RunOutcome, result_file_name, saved_result};
pub use run::{RunSpec, Runner};

use crate::config::{Config, Preset};
use crate::data::{Dataset, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::probe::ProbeData;

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
    /// Fine-tuning settings (kind = finetune): keys of the config's
    /// `finetune` table, merged over the protocol's.
    #[serde(default)]
    pub finetune: toml::Table,
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
    /// External test sets (`[[external]]`), scored by every run with the
    /// model chosen on the main validation split.
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
}

/// An external test set of a protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// Its name in the report.
    pub name: String,
    /// The data set, in any layout `--data` reads (relative to the
    /// protocol file); every labeled image of it is scored.
    pub data: PathBuf,
    /// Leave out images that duplicate one of the main set's (found by the
    /// audit); default true.
    #[serde(default = "yes")]
    pub drop_duplicates: bool,
}

fn yes() -> bool {
    true
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
        p.validate(&cfg)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok((p, cfg))
    }

    /// The built-in protocol of `reproduce` without a protocol file: PIRL
    /// pretraining, then the linear probe of the PIRL and of the random-init
    /// encoder on all the training labels, for the config's seed.
    pub fn builtin(name: String, cfg: &Config) -> Protocol {
        Protocol {
            name,
            preset: Preset::Cpu,
            config: toml::Table::new(),
            seeds: vec![cfg.seed],
            label_fractions: vec![1.0],
            bootstrap_resamples: default_resamples(),
            external: Vec::new(),
            arms: vec![Arm {
                name: "linear-probe".into(),
                kind: ArmKind::LinearProbe,
                inits: default_inits(),
                finetune: toml::Table::new(),
                k: default_k(),
                config: toml::Table::new(),
                seeds: None,
                label_fractions: None,
            }],
        }
    }

    /// Checks the protocol and every arm's config against `cfg` (the
    /// protocol's resolved config).
    pub fn validate(&self, cfg: &Config) -> std::result::Result<(), String> {
        self.check()?;
        for a in &self.arms {
            let ac = self.arm_config(a, cfg)?;
            if ac.data != cfg.data {
                return Err(format!(
                    "arm {}: [arms.config] cannot change data settings (the images are loaded once for all arms)",
                    a.name
                ));
            }
            if ac.model != cfg.model && a.inits.iter().any(|i| i == "pirl") {
                return Err(format!(
                    "arm {} changes the encoder (model), so it cannot take the pirl init (pretrained as {:?} width {})",
                    a.name, cfg.model.arch, cfg.model.width
                ));
            }
        }
        Ok(())
    }

    /// The config an arm runs with: the protocol's, with the arm's `config`
    /// keys, then its `finetune` keys, merged on top.
    pub fn arm_config(&self, arm: &Arm, cfg: &Config) -> std::result::Result<Config, String> {
        let mut over = arm.config.clone();
        if !arm.finetune.is_empty() {
            let mut ft = match over.remove("finetune") {
                Some(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            ft.extend(arm.finetune.clone());
            over.insert("finetune".into(), toml::Value::Table(ft));
        }
        if over.is_empty() {
            return Ok(cfg.clone());
        }
        cfg.with_overrides(&over)
            .map_err(|e| format!("arm {}: [arms.config] / [arms.finetune] {e}", arm.name))
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
        let mut ext = std::collections::HashSet::new();
        for e in &self.external {
            if e.name.is_empty() || e.name.contains(['/', '\\', ' ', ',']) || !ext.insert(&e.name) {
                return Err(format!(
                    "external set name {:?} must be a plain word, used once",
                    e.name
                ));
            }
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
