//! A finished run and its key: what it measured ([`ArmResult`]) and the hash
//! of everything that fixes its numbers ([`RunKey`]), under which it is
//! saved and found again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ArmKind;
use crate::config::Config;

/// One finished (arm, init, fraction, seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: String,
    pub kind: ArmKind,
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    /// The run's key ([`RunKey`]): what it was computed from.
    #[serde(default)]
    pub key: String,
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
    /// Fine-tuning: validation AUC after each epoch, and the mean training
    /// loss of each (empty for frozen-feature arms).
    #[serde(default)]
    pub val_curve: Vec<f64>,
    #[serde(default)]
    pub train_losses: Vec<f64>,
    /// Scores on each external test set: set name -> scores in that set's
    /// image order.
    #[serde(default)]
    pub external_scores: BTreeMap<String, Vec<f64>>,
    /// Linear probe: the test images' frozen features on the first two
    /// principal components of the training features (for the report's
    /// picture of what the encoder separates).
    #[serde(default)]
    pub test_embedding: Vec<(f64, f64)>,
    /// Linear probe: the same test features as an exact t-SNE map
    /// ([`crate::eval::tsne`]), seeded by the config's seed.
    #[serde(default)]
    pub test_tsne: Vec<(f64, f64)>,
    /// Fine-tuning (the largest fraction and first seed of an arm): Grad-CAM
    /// of the most confident true positives and the missed positives of the
    /// test split, by the selected epoch's model.
    #[serde(default)]
    pub gradcam: Option<crate::eval::gradcam::GradCams>,
    /// Fine-tuning with `finetune.ensemble > 1`: each member's run (the
    /// scores above are the ensemble's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::train::finetune::Member>,
    pub seconds: f64,
    /// The invocation that computed it (`host:pid:unix-ms`).
    #[serde(default)]
    pub computed_by: String,
    /// Whether this process computed it (false: read back from its saved
    /// file under the same key). Not saved.
    #[serde(skip)]
    pub computed_now: bool,
}

pub use crate::train::checkpoint::RESULT_VERSION;

/// What fixes a run's numbers, hashed into its key: the arm's kind and the
/// resolved settings that its kind reads, the init (and the hash of the
/// weights it loads), the data set's and split's hashes, the fraction and
/// the seed. Settings a kind does not read are left out, so changing them
/// reruns nothing; the report's name for an arm is left out too.
#[derive(Debug, Clone, Serialize)]
pub struct RunKey {
    pub result_version: u32,
    pub kind: ArmKind,
    pub init: String,
    /// SHA-256 of the weights the init loads (`random`: none).
    pub init_sha256: Option<String>,
    pub data_sha256: String,
    pub split_sha256: String,
    pub fraction: f64,
    pub seed: u64,
    /// The resolved settings this kind reads.
    pub settings: serde_json::Value,
    /// The external sets scored: (name, SHA-256 of its images and labels).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<(String, String)>,
}

impl RunKey {
    /// SHA-256 of the key's canonical JSON, hex.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(
            serde_json::to_vec(self).expect("key serialises"),
        ))
    }

    /// The settings of `cfg` that an arm of `kind` reads.
    pub fn settings(kind: ArmKind, cfg: &Config, k: usize) -> serde_json::Value {
        let mut v = serde_json::json!({
            "device": cfg.device,
            "tf32": cfg.tf32,
            "image_size": cfg.data.image_size,
            "limit_per_split": cfg.data.limit_per_split,
            "model": cfg.model,
            "crop": cfg.pretext.crop,
        });
        let m = v.as_object_mut().expect("object");
        match kind {
            ArmKind::LinearProbe | ArmKind::Knn => {
                // The random-init encoder is drawn from the config's seed;
                // features come in batches of train.batch_size.
                m.insert("init_seed".into(), cfg.seed.into());
                m.insert("batch".into(), cfg.train.batch_size.into());
                if kind == ArmKind::LinearProbe {
                    m.insert(
                        "probe".into(),
                        serde_json::to_value(&cfg.probe).expect("probe"),
                    );
                } else {
                    m.insert("recompute_bn".into(), cfg.probe.recompute_bn.into());
                    m.insert(
                        "probe_view".into(),
                        serde_json::to_value(&cfg.probe.views[0]).expect("view"),
                    );
                    m.insert("k".into(), k.into());
                }
            }
            ArmKind::Finetune => {
                m.insert(
                    "finetune".into(),
                    serde_json::to_value(&cfg.finetune).expect("finetune"),
                );
            }
        }
        v
    }
}

/// The file name of a run's result: readable, and unique by its key.
pub fn result_file_name(arm: &str, init: &str, fraction: f64, seed: u64, key: &str) -> String {
    let init = init.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    format!("{arm}__{init}__f{fraction}__s{seed}__{}.json", &key[..16])
}

/// A saved result under exactly `key`, if there is one.
pub fn saved_result(path: &Path, key: &str) -> Option<ArmResult> {
    let bytes = std::fs::read(path).ok()?;
    let r: ArmResult = serde_json::from_slice(&bytes).ok()?;
    (r.key == key).then_some(r)
}

/// What became of one run in [`Runner::run`].
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Computed and saved by this process.
    Computed,
    /// Its result under the same key was saved already.
    Reused,
    /// Another process holds its lock (`host:pid:...`).
    HeldElsewhere(String),
    /// Not in this process's shard.
    OtherShard,
}
