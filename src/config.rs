//! The run configuration: presets, a TOML file on top (unknown keys are an
//! error), then command-line overrides; validated once by [`Config::check`].

use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
pub use crate::augment::Tta;
use crate::model::{HeadKind, PretextKind, ResNetConfig, Stage};
use crate::optim::OptimConfig;

mod presets;

/// Data settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Side of the cached square images (px); the jigsaw grid is cut from
    /// these. Default 96.
    pub image_size: usize,
    /// Use at most this many images per split (0 = all), first in manifest
    /// order; for quick runs and tests. Default 0.
    pub limit_per_split: usize,
    /// Pretraining batches built (cropped, jittered, cut into patches) ahead
    /// of the step on a worker thread; 0 builds each in line. Default 2.
    pub prefetch: usize,
    /// For tuning: move this fraction of the training split (stratified,
    /// whole groups, drawn from the seed) into the validation split, for a
    /// validation set large enough to tell settings apart; the test split
    /// is untouched. Default 0.
    pub val_from_train: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            image_size: 96,
            limit_per_split: 0,
            prefetch: 2,
            val_from_train: 0.0,
        }
    }
}

/// Pretext settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PretextConfig {
    /// `jigsaw` (default) or `rotation`.
    pub kind: PretextKind,
    /// Side of the image-branch view v_I, and of the evaluation view (px); default 64.
    pub crop: usize,
    /// Side of each jigsaw patch, cropped inside a cell of `image_size / 3`; default 28.
    pub patch: usize,
    /// Image-branch (and per-patch colour) augmentation.
    pub augment: AugmentConfig,
}

impl Default for PretextConfig {
    fn default() -> Self {
        Self {
            kind: PretextKind::Jigsaw,
            crop: 64,
            patch: 28,
            augment: AugmentConfig::default(),
        }
    }
}

/// PIRL objective settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PirlConfig {
    /// Temperature τ; default 0.07.
    pub tau: f64,
    /// Negatives sampled from the memory bank per batch (from the rows of
    /// the other images: a batch's own rows are never its negatives, as in
    /// the paper's per-image sampling); at most the bank's rows minus the
    /// batch. Default 1023.
    pub negatives: usize,
    /// Weight λ of the pretext term; default 0.5.
    pub lambda: f64,
    /// Weight of the old row in the bank update; default 0.5.
    pub bank_momentum: f32,
    /// Form of the heads f and g: `linear` (the paper) or `mlp` (VISSL's
    /// PIRL MLP variant); default `linear`.
    pub head: HeadKind,
    /// How the negatives are drawn: `batch` (one set for the whole batch,
    /// none of the batch's own rows; default) or `anchor` (a set of its own
    /// for each image, only its own row left out: the PyTorch reference's).
    pub negatives_draw: NegativesDraw,
}

/// See [`PirlConfig::negatives_draw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativesDraw {
    #[default]
    Batch,
    Anchor,
}

impl Default for PirlConfig {
    fn default() -> Self {
        Self {
            tau: 0.07,
            negatives: 1023,
            lambda: 0.5,
            bank_momentum: 0.5,
            head: HeadKind::Linear,
            negatives_draw: NegativesDraw::Batch,
        }
    }
}

/// Pretraining schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Epochs over the training images; default 80.
    pub epochs: usize,
    /// Images per step; default 64.
    pub batch_size: usize,
    /// Also checkpoint every N optimiser steps (0 = at epoch ends only); default 0.
    pub checkpoint_every_steps: usize,
    /// Checkpoints kept (the newest); default 2.
    pub keep_checkpoints: usize,
    /// On a non-finite loss or gradient, skip the batch and scale the
    /// learning rate by `nonfinite_lr_factor` instead of stopping (at most 10
    /// in a row); default false (stop, the last good checkpoint intact).
    pub skip_nonfinite: bool,
    /// Default 0.5.
    pub nonfinite_lr_factor: f64,
    pub optim: OptimConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 80,
            batch_size: 64,
            checkpoint_every_steps: 0,
            keep_checkpoints: 2,
            skip_nonfinite: false,
            nonfinite_lr_factor: 0.5,
            optim: OptimConfig {
                lr: 0.0075,
                ..Default::default()
            },
        }
    }
}

/// Linear-probe settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// L2 penalties tried for the logistic regression (on standardised
    /// features; alpha = 1 / C of scikit-learn), the one with the best
    /// validation AUC is refit. A choice at either end of the grid is
    /// flagged in the log and the report. Default 1e-3 .. 1e5 in steps of
    /// about half a decade.
    pub alphas: Vec<f64>,
    /// Recompute BatchNorm statistics on the un-augmented training images
    /// before extracting features (pretraining's statistics mix views and
    /// patches); default true.
    pub recompute_bn: bool,
    /// Logistic-regression iterations; default 300.
    pub max_iterations: u64,
    /// Refit the chosen model on train + val before scoring test; default true.
    pub refit_on_train_val: bool,
    /// The feature views tried: the whole image at `crop` px (0 =
    /// `pretext.crop`), features averaged over the views of `tta`. With
    /// several, the one whose best penalty has the best validation AUC is
    /// used (each encoder, PIRL or random init, gets its own best view).
    /// The k-NN arm reads the first. Default one: `{ crop = 0, tta = "none" }`.
    pub views: Vec<ProbeView>,
    /// What picks the penalty and the view: the validation AUC (`val`, the
    /// default) or the out-of-fold AUC of a stratified `cv_folds`-fold
    /// cross-validation on the training rows (`cv`; validation is then
    /// scored, not chosen on). Left out of the saved config (and so of the
    /// protocol's run keys) when it is the default.
    #[serde(skip_serializing_if = "ProbeSelection::is_val")]
    pub selection: ProbeSelection,
    /// Folds of `selection = "cv"`, at least 2; default 5 (left out of the
    /// saved config when it is the default).
    #[serde(skip_serializing_if = "is_five")]
    pub cv_folds: usize,
}

/// How the linear probe picks its penalty and view.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeSelection {
    /// The best AUC on the validation split.
    #[default]
    Val,
    /// The best out-of-fold AUC of a stratified k-fold cross-validation on
    /// the training rows (each fold's rows taken in turn within each class).
    Cv,
}

fn is_five(n: &usize) -> bool {
    *n == 5
}

impl ProbeSelection {
    fn is_val(&self) -> bool {
        *self == ProbeSelection::Val
    }
}

/// One feature view of the linear probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeView {
    /// Side (px) of the whole image (0 = `pretext.crop`); default 0.
    pub crop: usize,
    /// Features averaged over these views; default `none`.
    pub tta: Tta,
    /// The stages whose pooled outputs are the features, concatenated (4 =
    /// the encoder's output; 3 adds the mid-level layer3); default [4].
    pub stages: Vec<usize>,
}

impl Default for ProbeView {
    fn default() -> Self {
        Self {
            crop: 0,
            tta: Tta::None,
            stages: vec![4],
        }
    }
}

impl ProbeView {
    /// The view with its crop resolved against the pretext crop.
    pub fn resolved(&self, pretext_crop: usize) -> ProbeView {
        ProbeView {
            crop: if self.crop == 0 {
                pretext_crop
            } else {
                self.crop
            },
            ..self.clone()
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            alphas: vec![
                1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3,
                1e4, 3e4, 1e5,
            ],
            recompute_bn: true,
            max_iterations: 300,
            refit_on_train_val: true,
            views: vec![ProbeView::default()],
            selection: ProbeSelection::Val,
            cv_folds: 5,
        }
    }
}

/// How fine-tuning picks the epoch whose weights score the test split; the
/// validation split alone decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The epoch of the highest validation AUC (ties: the earliest).
    Best,
    /// The last epoch of the schedule (validation only watched).
    Last,
    /// The epoch ending the `selection_window` epochs of highest mean
    /// validation AUC: a 150-image validation split moves by about 0.05
    /// from epoch to epoch, and a mean over several is steadier.
    Smoothed,
}

/// Fine-tuning settings (the `finetune` table; a protocol arm's
/// `[arms.finetune]` keys are merged over it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Epochs of the schedule; default 30.
    pub epochs: usize,
    /// Default 64.
    pub batch_size: usize,
    /// AdamW peak learning rate of the new head; default 3e-4.
    pub lr: f64,
    /// The encoder's learning rate as a fraction of `lr` (discriminative
    /// rates; 1 = the same rate); default 1.
    pub encoder_lr_mult: f64,
    /// Linear warm-up (epochs, may be fractional) before the cosine decay;
    /// default 1.
    pub warmup_epochs: f64,
    /// Linear probing first (LP-FT, Kumar et al. 2022): the first
    /// `head_epochs` train the new head alone on the frozen encoder
    /// (BatchNorm in eval mode); then the whole network trains, the
    /// encoder's rate warming up again over `warmup_epochs`. Default 0.
    pub head_epochs: usize,
    /// AdamW decoupled weight decay (not on BatchNorm or biases); default 1e-2.
    pub weight_decay: f64,
    /// Weigh the positive class by negatives / positives in the loss;
    /// default true.
    pub class_weight: bool,
    /// Stop after this many epochs without a better selection criterion
    /// (0 = train the whole schedule); default 0.
    pub patience: usize,
    /// Which epoch's weights are scored; default `smoothed`.
    pub selection: Selection,
    /// Epochs averaged by `selection = "smoothed"`; default 5.
    pub selection_window: usize,
    /// Epochs before this fraction of the schedule are never selected
    /// (`best` and `smoothed`); default 0.5.
    pub selection_from: f64,
    /// Freeze the encoder up to and including this stage (partial
    /// fine-tuning); default none (full fine-tuning).
    pub freeze_up_to: Option<Stage>,
    /// Augmentation of the training images.
    pub augment: AugmentConfig,
    /// Test-time augmentation of the validation and test images; default `none`.
    pub tta: Tta,
    /// Side (px) of the training views and of the scored whole images
    /// (0 = `pretext.crop`); default 0.
    pub crop: usize,
    /// Mixup (Zhang et al. 2018): each training batch is blended with a
    /// shuffled copy of itself, `λ x + (1 - λ) x'`, and the loss is `λ
    /// BCE(y) + (1 - λ) BCE(y')`, with one `λ ~ Beta(mixup, mixup)` per
    /// batch; 0 = off (default; left out of the saved config, and so of the
    /// protocol's run keys, when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub mixup: f64,
    /// An exponential moving average of the weights (and BatchNorm
    /// statistics), `ema <- d ema + (1 - d) w` after every step with this
    /// decay `d`; validation, selection and test score the averaged
    /// weights. 0 = off (default; left out of the saved config, and so of
    /// the protocol's run keys, when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub ema: f64,
    /// The weight of an auxiliary target: a second head on the same
    /// features learns the data's second label ([`crate::data::Sample::aux`];
    /// ISIC 2017: seborrheic keratosis), and the loss adds this weight times
    /// its class-weighted BCE. Only the main head is scored. 0 = off
    /// (default; left out of the saved config, and so of the protocol's run
    /// keys, when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub aux_weight: f64,
    /// Members of a fine-tuning ensemble: the run is repeated this many
    /// times from the same init on the same data, member `k` with its own
    /// seed (head init, data order, augmentation; and the encoder with a
    /// random init), each selecting its epoch on validation; the scored
    /// logits are the members' mean. 1 = one run (default; left out of the
    /// saved config, and so of the protocol's run keys, when 1).
    #[serde(skip_serializing_if = "is_one")]
    pub ensemble: usize,
    /// L2-SP (Li et al. 2018), decoupled as AdamW's weight decay: after
    /// every step each encoder conv and linear weight is pulled toward its
    /// starting value, `w <- w - lr_enc * l2sp * (w - w0)`, where `lr_enc`
    /// is the encoder's learning rate at that step. It keeps a pretrained
    /// encoder near what pretraining learned (with a random init, near its
    /// random draw: the same recipe for every init). 0 = off (default;
    /// left out of the saved config, and so of the protocol's run keys,
    /// when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub l2sp: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 3e-4,
            encoder_lr_mult: 1.0,
            warmup_epochs: 1.0,
            head_epochs: 0,
            weight_decay: 1e-2,
            class_weight: true,
            patience: 0,
            selection: Selection::Smoothed,
            selection_window: 5,
            selection_from: 0.5,
            freeze_up_to: None,
            augment: AugmentConfig {
                crop_scale_min: 0.5,
                jitter: 0.0,
                hue: 0.0,
                jitter_p: 0.0,
                grayscale_p: 0.0,
                flip_p: 0.5,
                vflip_p: 0.5,
                rot90: false,
            },
            tta: Tta::None,
            crop: 0,
            mixup: 0.0,
            ema: 0.0,
            aux_weight: 0.0,
            ensemble: 1,
            l2sp: 0.0,
        }
    }
}

impl FinetuneConfig {
    /// The view side: `crop`, or the pretext's when 0.
    pub fn view(&self, pretext_crop: usize) -> usize {
        if self.crop == 0 {
            pretext_crop
        } else {
            self.crop
        }
    }

    /// Rejects settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size < 2 {
            return Err("finetune.epochs must be >= 1 and finetune.batch_size >= 2".into());
        }
        if self.ensemble == 0 {
            return Err("finetune.ensemble must be >= 1 (1 = a single run)".into());
        }
        for (k, v) in [
            ("lr", self.lr),
            ("encoder_lr_mult", self.encoder_lr_mult),
            ("warmup_epochs", self.warmup_epochs),
            ("weight_decay", self.weight_decay),
            ("mixup", self.mixup),
            ("aux_weight", self.aux_weight),
            ("l2sp", self.l2sp),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("finetune.{k} must be finite and >= 0, got {v}"));
            }
        }
        if self.lr == 0.0 {
            return Err("finetune.lr must be > 0".into());
        }
        if !(0.0..1.0).contains(&self.ema) {
            return Err(format!("finetune.ema must be in [0, 1), got {}", self.ema));
        }
        if self.head_epochs >= self.epochs {
            return Err(format!(
                "finetune.head_epochs ({}) must be below finetune.epochs ({})",
                self.head_epochs, self.epochs
            ));
        }
        if self.selection_window == 0 {
            return Err("finetune.selection_window must be >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.selection_from) {
            return Err(format!(
                "finetune.selection_from must be in [0, 1], got {}",
                self.selection_from
            ));
        }
        self.augment.check("finetune.augment")
    }
}

/// Everything a run needs; written beside its artifacts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The one seed every random stream derives from; default 0.
    pub seed: u64,
    /// Worker threads (0 = all cores); default 0.
    pub threads: usize,
    /// `cpu` (default), `cuda` or `cuda:N` (a binary built with the `cuda`
    /// feature); `--device` overrides it.
    pub device: String,
    /// CUDA only: TF32 tensor-core matmuls (about 10 mantissa bits) for the
    /// encoder; the loss and the memory bank stay in f32. Default false.
    pub tf32: bool,
    pub data: DataConfig,
    pub model: ResNetConfig,
    pub pretext: PretextConfig,
    pub pirl: PirlConfig,
    pub train: TrainConfig,
    pub probe: ProbeConfig,
    pub finetune: FinetuneConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config::preset(Preset::Cpu)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// A 2-core machine in under an hour: quarter-width ResNet-18 at 64 px, 28 px
    /// patches, SGD 0.03, 100 epochs, probe chosen by 5-fold cross-validation (chosen on the tuning split, README ablations).
    Cpu,
    /// The paper: ResNet-50, 224 px, 64 px patches, batch 256, 32000 negatives (GPU).
    Paper,
    /// The built-in default (datasets/isic2017-mini): minutes on 2 cores.
    Demo,
    /// Tests: tiny width, 32 px, seconds.
    Tiny,
}

impl Config {
    pub fn preset(p: Preset) -> Config {
        let base = presets::base();
        match p {
            Preset::Cpu => presets::cpu(base),
            Preset::Paper => presets::paper(base),
            Preset::Demo => presets::demo(base),
            Preset::Tiny => presets::tiny(base),
        }
    }

    /// This config with `over` (keys as in a config file) merged on top;
    /// validated.
    pub fn with_overrides(&self, over: &toml::Table) -> Result<Config, String> {
        let mut base = toml::Value::try_from(self).map_err(|e| e.to_string())?;
        merge(&mut base, toml::Value::Table(over.clone()));
        let cfg: Config = base
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The preset with a TOML document merged on top: keys it names replace
    /// the preset's, keys it omits keep them, unknown keys are an error.
    pub fn from_toml_over(p: Preset, toml_text: &str) -> Result<Config, String> {
        let mut base = toml::Value::try_from(Config::preset(p)).map_err(|e| e.to_string())?;
        let over: toml::Value = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        merge(&mut base, over);
        let cfg: Config = base
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Rejects settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        self.model.check()?;
        self.train.optim.check()?;
        crate::device::DeviceSpec::parse(&self.device)?;
        let d = &self.data;
        let p = &self.pretext;
        if d.image_size < 24 {
            return Err(format!(
                "data.image_size must be >= 24, got {}",
                d.image_size
            ));
        }
        if p.crop < 16 || p.crop > d.image_size {
            return Err(format!(
                "pretext.crop must be in [16, data.image_size = {}], got {}",
                d.image_size, p.crop
            ));
        }
        if p.kind != PretextKind::Rotation && (p.patch < 8 || p.patch > d.image_size / 3) {
            return Err(format!(
                "pretext.patch must be in [8, data.image_size / 3 = {}], got {}",
                d.image_size / 3,
                p.patch
            ));
        }
        p.augment.check("pretext.augment")?;
        self.finetune.check()?;
        if !(0.0..0.9).contains(&d.val_from_train) {
            return Err(format!(
                "data.val_from_train must be in [0, 0.9), got {}",
                d.val_from_train
            ));
        }
        if self.probe.cv_folds < 2 {
            return Err(format!(
                "probe.cv_folds must be >= 2, got {}",
                self.probe.cv_folds
            ));
        }
        if self.probe.views.is_empty() {
            return Err("probe.views must name at least one view".into());
        }
        if self
            .probe
            .views
            .iter()
            .any(|v| v.stages.is_empty() || v.stages.iter().any(|s| !(1..=4).contains(s)))
        {
            return Err("probe.views.stages must list stages among 1..=4".into());
        }
        let crops = std::iter::once(("finetune.crop", self.finetune.crop)).chain(
            self.probe
                .views
                .iter()
                .map(|v| ("probe.views.crop", v.crop)),
        );
        for (k, c) in crops {
            if c != 0 && !(16..=d.image_size).contains(&c) {
                return Err(format!(
                    "{k} must be 0 (the pretext crop) or in [16, data.image_size = {}], got {c}",
                    d.image_size
                ));
            }
        }
        let q = &self.pirl;
        if !(q.tau.is_finite() && q.tau > 0.0) {
            return Err(format!("pirl.tau must be > 0, got {}", q.tau));
        }
        if !(0.0..=1.0).contains(&q.lambda) || !(0.0..1.0).contains(&q.bank_momentum) {
            return Err("pirl.lambda must be in [0, 1] and pirl.bank_momentum in [0, 1)".into());
        }
        if q.negatives == 0 {
            return Err("pirl.negatives must be > 0".into());
        }
        if !(self.train.nonfinite_lr_factor > 0.0 && self.train.nonfinite_lr_factor <= 1.0) {
            return Err(format!(
                "train.nonfinite_lr_factor must be in (0, 1], got {}",
                self.train.nonfinite_lr_factor
            ));
        }
        if self.train.keep_checkpoints == 0 {
            return Err("train.keep_checkpoints must be >= 1".into());
        }
        if self.train.batch_size < 2 {
            return Err(format!(
                "train.batch_size must be >= 2 (BatchNorm), got {}",
                self.train.batch_size
            ));
        }
        if self.probe.alphas.is_empty()
            || self
                .probe
                .alphas
                .iter()
                .any(|a| !(a.is_finite() && *a >= 0.0))
        {
            return Err("probe.alphas must be a non-empty list of finite values >= 0".into());
        }
        Ok(())
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}
