//! Experiment protocols (`protocols/*.toml`): one PIRL pretraining, then arms
//! (linear probe, k-NN, full or partial fine-tuning), each from PIRL, random
//! init or a weights file, at several label fractions and seeds, through one
//! code path. Each finished (arm, init, fraction, seed) is saved as it
//! completes under a key that hashes everything that fixes its numbers
//! ([`RunKey`]): an interrupted protocol continues with what is not done, a
//! changed setting reruns exactly the runs it touches, and the report is
//! built only from finished results of the current keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Preset};
use crate::data::{Dataset, RgbImage, Split};
use crate::error::{Error, Result, io};
use crate::eval::probe::{self, ProbeData};
use crate::io::write_atomic;
use crate::train::finetune::{self, Init, Labeled};

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
    pub seconds: f64,
    /// The invocation that computed it (`host:pid:unix-ms`).
    #[serde(default)]
    pub computed_by: String,
    /// Whether this process computed it (false: read back from its saved
    /// file under the same key). Not saved.
    #[serde(skip)]
    pub computed_now: bool,
}

/// Bump when a change in pirlkit changes the numbers that the same settings
/// give (a new recipe default is a change of settings and needs no bump).
pub const RESULT_VERSION: u32 = 2;

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
                        serde_json::to_value(cfg.probe.views[0]).expect("view"),
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

/// A run's lock file: created exclusively before the run is computed,
/// removed when it is saved (or fails). A lock left by a process of this
/// machine that is no longer alive is taken over.
struct RunLock(PathBuf);

impl RunLock {
    /// `Ok(Ok(lock))`, or `Ok(Err(holder))` when another live process holds it.
    fn take(path: &Path) -> Result<std::result::Result<RunLock, String>> {
        let me = crate::runner::invocation_id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes()).map_err(io(path))?;
                    return Ok(Ok(RunLock(path.to_path_buf())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    let mut parts = holder.trim().split(':');
                    let (host, pid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let my_host = me.split(':').next().unwrap_or("");
                    let dead = host == my_host
                        && !pid.is_empty()
                        && !Path::new("/proc").join(pid).exists();
                    if dead || holder.trim().is_empty() {
                        tracing::warn!("taking over the stale lock {} ({holder})", path.display());
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    return Ok(Err(holder.trim().to_string()));
                }
                Err(e) => {
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        Ok(Err(format!("{} (could not be taken over)", path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One (arm, init, fraction, seed) of a protocol, with the config it runs with.
pub struct RunSpec<'p> {
    pub arm: &'p Arm,
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub cfg: Config,
}

impl Protocol {
    /// Every run of the protocol, in order (arm, init, fraction, seed).
    pub fn runs(&self, cfg: &Config) -> Result<Vec<RunSpec<'_>>> {
        let mut out = Vec::new();
        for arm in &self.arms {
            let acfg = self.arm_config(arm, cfg).map_err(Error::Config)?;
            for init in &arm.inits {
                for &fraction in arm
                    .label_fractions
                    .as_ref()
                    .unwrap_or(&self.label_fractions)
                {
                    for &seed in arm.seeds.as_ref().unwrap_or(&self.seeds) {
                        out.push(RunSpec {
                            arm,
                            init: init.clone(),
                            fraction,
                            seed,
                            cfg: acfg.clone(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
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
    /// The external test sets, loaded.
    pub external: &'a [crate::data::external::External],
}

/// A frozen-feature arm's result, shared by the runs whose key differs only
/// in the seed and whose label subset is the same (at 100 % of the labels
/// every seed gets the same one).
type Fitted = Scored;

/// What one run measured, before it becomes an [`ArmResult`].
#[derive(Debug, Clone, Default)]
struct Scored {
    val_auc: f64,
    test_auc: f64,
    val_scores: Vec<f64>,
    test_scores: Vec<f64>,
    detail: String,
    /// Fine-tuning: validation AUC and training loss per epoch.
    val_curve: Vec<f64>,
    train_losses: Vec<f64>,
    /// Scores of each external set, in the runner's order.
    external: Vec<Vec<f64>>,
    /// Linear probe: the test features on their first two principal
    /// components.
    embedding: Vec<(f64, f64)>,
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

    /// SHA-256 of the weights an init loads (`None` for random init).
    fn init_hash(&self, s: &str) -> Result<Option<String>> {
        let path = match self.init(s)? {
            Init::Random => return Ok(None),
            Init::Checkpoint(dir) => dir.join(crate::train::checkpoint::MODEL_FILE),
            Init::Torchvision(p) => p,
        };
        Ok(Some(crate::data::fingerprint::file_sha256(&path)?))
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

    /// The key of every run of `p`, in [`Protocol::runs`] order.
    pub fn keys(
        &self,
        p: &Protocol,
        data: &crate::data::fingerprint::Fingerprint,
    ) -> Result<Vec<RunKey>> {
        let mut init_hashes: BTreeMap<String, Option<String>> = BTreeMap::new();
        p.runs(self.cfg)?
            .iter()
            .map(|r| {
                if !init_hashes.contains_key(&r.init) {
                    init_hashes.insert(r.init.clone(), self.init_hash(&r.init)?);
                }
                Ok(RunKey {
                    result_version: RESULT_VERSION,
                    kind: r.arm.kind,
                    init: r.init.clone(),
                    init_sha256: init_hashes[&r.init].clone(),
                    data_sha256: data.sha256_all.clone(),
                    split_sha256: data.split_sha256.clone(),
                    fraction: r.fraction,
                    seed: r.seed,
                    settings: RunKey::settings(r.arm.kind, &r.cfg, r.arm.k),
                    external: self
                        .external
                        .iter()
                        .map(|e| (e.name.clone(), e.sha256.clone()))
                        .collect(),
                })
            })
            .collect()
    }

    /// Runs every (arm, init, fraction, seed) that `select` picks (by its
    /// index in protocol order) and whose result under its current key is
    /// not saved yet, nor being computed by another process; says for each
    /// run what became of it.
    pub fn run(
        &self,
        p: &Protocol,
        data: &crate::data::fingerprint::Fingerprint,
        select: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<RunOutcome>> {
        std::fs::create_dir_all(&self.results_dir).map_err(io(&self.results_dir))?;
        let specs = p.runs(self.cfg)?;
        let keys = self.keys(p, data)?;
        let (_, tr_y) = self.split(Split::Train);
        let mut outcomes = Vec::new();
        // Frozen features per (encoder, view, init), computed once and shared
        // by arms, fractions and seeds.
        let mut feats: BTreeMap<String, Vec<probe::ViewFeatures>> = BTreeMap::new();
        let mut fitted: BTreeMap<(String, Vec<usize>), Fitted> = BTreeMap::new();
        for (i, (spec, key)) in specs.iter().zip(&keys).enumerate() {
            let hash = key.hash();
            let path = self.results_dir.join(result_file_name(
                &spec.arm.name,
                &spec.init,
                spec.fraction,
                spec.seed,
                &hash,
            ));
            if !select(i) {
                outcomes.push(RunOutcome::OtherShard);
                continue;
            }
            if saved_result(&path, &hash).is_some() {
                outcomes.push(RunOutcome::Reused);
                continue;
            }
            if crate::train::pretrain::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::Stopped(format!(
                    "the finished runs are saved in {}",
                    self.results_dir.display()
                )));
            }
            let _lock = match RunLock::take(&path.with_extension("lock"))? {
                Ok(l) => l,
                Err(holder) => {
                    tracing::info!(
                        "{} / {} / {} / seed {}: held by {holder}, skipped",
                        spec.arm.name,
                        spec.init,
                        spec.fraction,
                        spec.seed
                    );
                    outcomes.push(RunOutcome::HeldElsewhere(holder));
                    continue;
                }
            };
            // Another process may have finished it while we looked.
            if saved_result(&path, &hash).is_some() {
                outcomes.push(RunOutcome::Reused);
                continue;
            }
            let t = std::time::Instant::now();
            let sub = label_subset(&tr_y, spec.fraction, spec.seed);
            let sub_y: Vec<u8> = sub.iter().map(|&i| tr_y[i]).collect();
            let sc: Scored = match spec.arm.kind {
                ArmKind::LinearProbe | ArmKind::Knn => {
                    // The key without its seed: runs that share it and the
                    // label subset share the fit.
                    let mut k = key.clone();
                    k.seed = 0;
                    let fit_key = (k.hash(), sub.clone());
                    match fitted.get(&fit_key) {
                        Some(r) => r.clone(),
                        None => {
                            let r = self.frozen_arm(spec, &sub, &mut feats)?;
                            fitted.insert(fit_key, r.clone());
                            r
                        }
                    }
                }
                ArmKind::Finetune => {
                    let ckpt = path.with_extension("ckpt");
                    let r = self.finetune_arm(spec, &sub, (&ckpt, &hash))?;
                    Scored {
                        val_auc: r.val_auc,
                        test_auc: r.test_auc,
                        detail: format!("selected epoch {} of {}", r.best_epoch, r.val_curve.len()),
                        val_scores: r.val_scores,
                        test_scores: r.test_scores,
                        val_curve: r.val_curve,
                        train_losses: r.train_losses,
                        external: r.external_scores,
                        embedding: Vec::new(),
                    }
                }
            };
            let r = ArmResult {
                arm: spec.arm.name.clone(),
                kind: spec.arm.kind,
                init: spec.init.clone(),
                fraction: spec.fraction,
                seed: spec.seed,
                key: hash,
                n_train: sub_y.len(),
                n_train_pos: sub_y.iter().filter(|&&y| y == 1).count(),
                val_auc: sc.val_auc,
                test_auc: sc.test_auc,
                test_scores: sc.test_scores,
                val_scores: sc.val_scores,
                detail: sc.detail,
                val_curve: sc.val_curve,
                train_losses: sc.train_losses,
                external_scores: self
                    .external
                    .iter()
                    .map(|e| e.name.clone())
                    .zip(sc.external)
                    .collect(),
                test_embedding: sc.embedding,
                seconds: t.elapsed().as_secs_f64(),
                computed_by: crate::runner::invocation_id().to_string(),
                computed_now: true,
            };
            tracing::info!(
                "{} / {} / {:.0} % labels / seed {}: val AUC {:.4}, test AUC {:.4} ({}, {:.0} s)",
                r.arm,
                r.init,
                spec.fraction * 100.0,
                spec.seed,
                r.val_auc,
                r.test_auc,
                r.detail,
                r.seconds
            );
            let j = serde_json::to_vec(&r).map_err(|e| Error::Report(e.to_string()))?;
            write_atomic(&path, &j)?;
            let ckpt = path.with_extension("ckpt");
            if ckpt.exists() {
                let _ = std::fs::remove_dir_all(&ckpt);
            }
            outcomes.push(RunOutcome::Computed);
        }
        Ok(outcomes)
    }

    /// A linear probe or k-NN on frozen features of the training subset `sub`.
    fn frozen_arm(
        &self,
        spec: &RunSpec,
        sub: &[usize],
        feats: &mut BTreeMap<String, Vec<probe::ViewFeatures>>,
    ) -> Result<Fitted> {
        let acfg = &spec.cfg;
        // A k-NN arm reads the first view only.
        let views = if spec.arm.kind == ArmKind::Knn {
            &acfg.probe.views[..1]
        } else {
            &acfg.probe.views[..]
        };
        let feat_key = format!(
            "{}|{}|{}|{}|{}|{}",
            serde_json::to_string(&acfg.model).unwrap_or_default(),
            acfg.pretext.crop,
            serde_json::to_string(views).unwrap_or_default(),
            acfg.probe.recompute_bn,
            acfg.train.batch_size,
            spec.init
        );
        if !feats.contains_key(&feat_key) {
            let (tr_i, _) = self.split(Split::Train);
            let (va_i, _) = self.split(Split::Val);
            let (te_i, _) = self.split(Split::Test);
            let mut c = acfg.clone();
            c.probe.views = views.to_vec();
            feats.insert(
                feat_key.clone(),
                self.frozen_features(&c, &self.init(&spec.init)?, &tr_i, &va_i, &te_i)?,
            );
        }
        let (_, tr_y) = self.split(Split::Train);
        let (_, va_y) = self.split(Split::Val);
        let (_, te_y) = self.split(Split::Test);
        let sub_y: Vec<u8> = sub.iter().map(|&i| tr_y[i]).collect();
        let vf = &feats[&feat_key];
        if spec.arm.kind == ArmKind::LinearProbe {
            let r = probe::fit_probe_views(vf, sub, &sub_y, &va_y, &te_y, &acfg.probe)?;
            let detail = probe::describe_choice(&r, &acfg.probe);
            let chosen = vf.iter().find(|v| v.0 == r.view).unwrap_or(&vf[0]);
            let embedding = crate::eval::pca::project_2d(&chosen.1[0], &chosen.1[2]);
            Ok(Scored {
                val_auc: r.val_auc,
                test_auc: r.test_auc,
                val_scores: r.val_scores,
                test_scores: r.test_scores,
                detail,
                external: r.external_scores,
                embedding,
                ..Default::default()
            })
        } else {
            let [ftr, fva, fte] = &vf[0].1;
            let ftr_sub = ftr.select(ndarray::Axis(0), sub);
            let vs = probe::knn_scores(&ftr_sub, &sub_y, fva, spec.arm.k);
            let ts = probe::knn_scores(&ftr_sub, &sub_y, fte, spec.arm.k);
            Ok(Scored {
                val_auc: crate::eval::auc(&vs, &va_y)?,
                test_auc: crate::eval::auc(&ts, &te_y)?,
                val_scores: vs,
                test_scores: ts,
                detail: format!("k {}", spec.arm.k),
                external: vf[0]
                    .2
                    .iter()
                    .map(|x| probe::knn_scores(&ftr_sub, &sub_y, x, spec.arm.k))
                    .collect(),
                ..Default::default()
            })
        }
    }

    /// Fine-tuning on the training subset `sub`, checkpointed in `ckpt`.
    fn finetune_arm(
        &self,
        spec: &RunSpec,
        sub: &[usize],
        ckpt: (&Path, &str),
    ) -> Result<finetune::FinetuneResult> {
        let (tr_i, tr_y) = self.split(Split::Train);
        let (va_i, va_y) = self.split(Split::Val);
        let (te_i, te_y) = self.split(Split::Test);
        finetune::finetune(
            &spec.cfg,
            &self.init(&spec.init)?,
            &Labeled {
                images: sub.iter().map(|&i| tr_i[i]).collect(),
                labels: sub.iter().map(|&i| tr_y[i]).collect(),
            },
            &Labeled {
                images: va_i,
                labels: va_y,
            },
            Some(&Labeled {
                images: te_i,
                labels: te_y,
            }),
            &self.external_images(),
            spec.seed,
            Some(ckpt),
        )
    }

    /// Each external set's images, in order.
    fn external_images(&self) -> Vec<Vec<&RgbImage>> {
        self.external
            .iter()
            .map(|e| e.imgs.iter().collect())
            .collect()
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
    ) -> Result<Vec<probe::ViewFeatures>> {
        let (vm, enc) = finetune::encoder_from(cfg, init)?;
        probe::frozen_features(
            &vm,
            &enc,
            "encoder",
            cfg,
            tr,
            va,
            te,
            &self.external_images(),
        )
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
