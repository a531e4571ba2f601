//! Command-line interface: raw arguments become one validated [`Config`] and
//! a command; the library does the rest.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Preset};

#[derive(Debug, Parser)]
#[command(
    name = "pirlkit",
    version,
    about = "PIRL pretraining and honest evaluation for medical images"
)]
pub struct Cli {
    /// More log output (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// PIRL pretraining on the training split (labels unused).
    Pretrain {
        #[command(flatten)]
        run: RunArgs,
        /// Run folder (config, checkpoints); an existing one of the same config is resumed.
        #[arg(long, default_value = "runs/pretrain")]
        out: PathBuf,
        /// Resume even though the folder's checkpoint has a different config.
        #[arg(long)]
        force_resume: bool,
    },
    /// Linear probe of a checkpoint's encoder (or of a random init).
    Probe {
        #[command(flatten)]
        run: RunArgs,
        /// Checkpoint: its folder (runs/pretrain/checkpoints/step-N), the `latest`
        /// pointer beside it, or the run folder (runs/pretrain: its latest); its config is used.
        #[arg(
            long,
            conflicts_with = "random_init",
            required_unless_present = "random_init"
        )]
        checkpoint: Option<PathBuf>,
        /// Probe a seeded random-init encoder instead.
        #[arg(long)]
        random_init: bool,
        /// Tuning: fit and choose on validation, never score the test split.
        #[arg(long)]
        val_only: bool,
        /// Where to write probe.json.
        #[arg(long, default_value = "runs/probe")]
        out: PathBuf,
    },
    /// Fine-tune an encoder (PIRL checkpoint, random init or a torchvision-named
    /// safetensors file) on a fraction of the training labels.
    Finetune(FinetuneArgs),
    /// Metrics of a scores file (CSV with a label column and one or more score
    /// columns): AUC with DeLong and bootstrap CIs, operating points, and the
    /// paired DeLong test of the first two score columns.
    Evaluate {
        /// CSV file: `label` column (0/1) and score columns.
        scores: PathBuf,
        /// Name of the label column.
        #[arg(long, default_value = "label")]
        label_column: String,
        /// Bootstrap resamples.
        #[arg(long, default_value_t = 2000)]
        resamples: usize,
        /// Seed of the bootstrap.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the metrics as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Download a data set's official files (the challenge zips and
    /// ground-truth CSVs), verify checksums, resume broken downloads, and
    /// extract safely.
    Download(DownloadArgs),
    /// Audit a data set: exact and near-duplicate images within and across
    /// splits, a group on both sides of a split, unreadable files, odd sizes,
    /// label rows without an image and images without a label.
    Audit {
        /// The data set (as for --data).
        data: PathBuf,
        /// Where to write the findings CSV.
        #[arg(long, default_value = "audit.csv")]
        out: PathBuf,
        /// Image cache folder (default $PIRLKIT_CACHE, else ~/.cache/pirlkit).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Exit with status 3 when something leaks across splits.
        #[arg(long)]
        fail_on_leak: bool,
    },
    /// Build the small ISIC 2017 copy pirlkit ships (datasets/isic2017-mini):
    /// every image of the challenge's three splits resized to SIZE x SIZE
    /// JPEG, a manifest (the challenge's splits, melanoma labels,
    /// near-duplicate groups), a README and SHA256SUMS; the same bytes on
    /// every run and machine.
    MakeBuiltin {
        /// The ISIC 2017 challenge folder (ground-truth CSVs and image folders).
        #[arg(long)]
        from: PathBuf,
        /// Side of the square images, in pixels.
        #[arg(long, default_value_t = crate::data::builtin::DEFAULT_SIZE)]
        size: u32,
        /// Output folder: new, empty, or an earlier build (replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a device against pirlkit's CPU kernels: conv and max-pool
    /// (forward and gradients), a ResNet's gradients, and a short PIRL run's
    /// losses; one JSON line each, exit status 1 if any differs. With
    /// `--device cpu`, the GPU code path runs on the CPU.
    Selftest {
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Images per second of the ResNet training step and forward, and of the
    /// whole PIRL step of a preset, after warm-up; one JSON line each.
    Bench(BenchArgs),
    /// Convert pretrained weights from another framework into a
    /// torchvision-named safetensors file for `finetune --weights` (biases,
    /// BatchNorm eps and input preprocessing folded in; see src/import.rs).
    ImportWeights {
        /// Input format: keras-resnet50 = a TF.js layers model folder
        /// (model.json + shards) of Keras' ResNet50.
        #[arg(long, value_enum)]
        from: crate::import::Source,
        /// The input (for keras-resnet50: the folder holding model.json).
        input: PathBuf,
        /// The safetensors file to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Pretrain, probe the PIRL and the random-init encoder, write the report;
    /// or, given a protocol file, run the whole protocol.
    Reproduce {
        /// A protocol file (protocols/*.toml): arms, label fractions, seeds.
        protocol: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
        /// Report name: files go to <reports>/<run>/.
        #[arg(long)]
        run_name: Option<String>,
        /// Reports folder.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        /// Resume even though the run's checkpoint has a different config.
        #[arg(long)]
        force_resume: bool,
        /// Which part to run: all (pretraining, runs, report), pretrain, or
        /// arms (the runs of this shard, after the pretraining).
        #[arg(long, value_enum, default_value = "all")]
        stage: crate::runner::Stage,
        /// Run only the K-th of N shares of the runs (1 <= K <= N), as one
        /// task of a cluster array job; inside a Slurm array job it is read
        /// from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when not given.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
    },
    /// Rebuild a protocol's report from its saved runs alone (no training):
    /// merges the shards of a cluster run into one report.
    Report {
        /// The protocol's folder (`<reports>/<protocol name>`), or the
        /// protocol file (its folder is then found under --reports).
        target: PathBuf,
        /// Reports folder (with a protocol file).
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
    },
}

/// The arguments of `pirlkit finetune`.
#[derive(Debug, Args, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// PIRL checkpoint: its folder (runs/pretrain/checkpoints/step-N), the
    /// `latest` pointer beside it, or the run folder (its latest).
    #[arg(long, conflicts_with_all = ["random_init", "weights"])]
    pub checkpoint: Option<PathBuf>,
    /// Start from a seeded random init.
    #[arg(long)]
    pub random_init: bool,
    /// Start from a safetensors file in torchvision/timm naming.
    #[arg(long, conflicts_with = "random_init")]
    pub weights: Option<PathBuf>,
    /// Fraction of the labeled training split (stratified); default 1.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// Freeze the encoder up to and including this stage.
    #[arg(long, value_parser = ["stem", "layer1", "layer2", "layer3", "layer4"])]
    pub freeze_up_to: Option<String>,
    /// Fine-tuning epochs (overrides the config's finetune.epochs).
    #[arg(long)]
    pub ft_epochs: Option<usize>,
    /// Tuning: train and select on validation, never score the test split.
    #[arg(long)]
    pub val_only: bool,
    /// Where to write finetune.json.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
}

/// The arguments of `pirlkit download`.
#[derive(Debug, Args, Clone)]
pub struct DownloadArgs {
    /// `isic2017`, or a dataset descriptor TOML file (see datasets/).
    pub dataset: String,
    /// Destination folder (default datasets/<name>).
    #[arg(long)]
    pub dest: Option<PathBuf>,
    /// Replace the scheme and host of every URL (a mirror).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Retries per file after a broken connection.
    #[arg(long, default_value_t = 3)]
    pub retries: usize,
}

/// The arguments of `pirlkit bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Architecture of the ResNet step.
    #[arg(long, default_value = "resnet18", value_parser = ["resnet18", "resnet34", "resnet50"])]
    pub arch: String,
    /// Width multiplier of the ResNet step.
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Batch sizes (comma-separated).
    #[arg(long, default_value = "32", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Image sizes (comma-separated).
    #[arg(long, default_value = "64,96", value_delimiter = ',')]
    pub size: Vec<usize>,
    /// What to time (comma-separated): `train` (the ResNet training step),
    /// `finetune` (the fine-tuning step), `features` (frozen-feature
    /// extraction); each at every batch and size.
    #[arg(long, value_enum, default_value = "train", value_delimiter = ',')]
    pub what: Vec<crate::bench::What>,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Timed steps (the median is reported) after 2 warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Also time the whole PIRL step of this preset.
    #[arg(long, value_enum)]
    pub pirl_preset: Option<crate::config::Preset>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CUDA only: TF32 matmuls.
    #[arg(long)]
    pub tf32: bool,
    /// Also time each CPU kernel (conv per shape, BatchNorm, max-pool),
    /// the whole backward and the optimiser; ms per step in `profile`.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Data set: an ISIC challenge folder, a folder with manifest.csv, or a
    /// manifest CSV. Without it, the built-in ISIC 2017 copy
    /// (datasets/isic2017-mini, 64 px).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Settings preset (default: cpu with --data, demo without).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// TOML config merged over the preset (unknown keys are an error).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The seed for every random stream (overrides the config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pretraining epochs (overrides the config).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Worker threads, 0 = all cores (overrides the config).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (overrides the config; cuda needs a binary built
    /// with the `cuda` feature).
    #[arg(long)]
    pub device: Option<String>,
    /// Use only the first N images of each split (overrides the config).
    #[arg(long)]
    pub limit_per_split: Option<usize>,
    /// Image cache folder (default $PIRLKIT_CACHE, else ~/.cache/pirlkit).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Leave out unreadable images (listed in the log and in the report's
    /// skipped.csv) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

impl RunArgs {
    /// Preset, then config file, then flags; validated.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        use anyhow::Context;
        let preset = self.preset.unwrap_or(if self.data.is_some() {
            Preset::Cpu
        } else {
            Preset::Demo
        });
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Config::from_toml_over(preset, &text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => Config::preset(preset),
        };
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(e) = self.epochs {
            cfg.train.epochs = e;
        }
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        if let Some(d) = &self.device {
            cfg.device = d.clone();
        }
        if let Some(l) = self.limit_per_split {
            cfg.data.limit_per_split = l;
        }
        cfg.check().map_err(|e| anyhow::anyhow!("config: {e}"))?;
        Ok(cfg)
    }
}
