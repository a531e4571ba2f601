//! `pirlkit bench`: images per second of the ResNet training step (forward,
//! backward, optimiser) and of the forward alone, of the fine-tuning step
//! (encoder + Linear(d, 1), class-weighted BCE, AdamW), of frozen-feature
//! extraction (eval mode, pooled encoder output, no gradient), and of the
//! whole PIRL step, after warm-up, as JSON lines with the process's peak
//! resident memory. Compare ratios measured in one run: the machine may be
//! shared.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::config::Config;
use crate::data::RgbImage;
use crate::error::Result;
use crate::model::{Arch, ResNet, ResNetConfig, seeded_init};
use crate::ops::profile;
use crate::optim::{OptimConfig, Optimizer, OptimizerKind};

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchLine {
    pub what: String,
    pub arch: Arch,
    pub width: f64,
    pub batch: usize,
    pub size: usize,
    pub threads: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub steps: usize,
    /// Median seconds per step.
    pub median_s: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Median seconds of the forward alone (training step only).
    pub forward_median_s: Option<f64>,
    /// Peak resident memory of the process (Linux `VmHWM`, MiB), reset
    /// before this figure's warm-up where the kernel allows it
    /// (`/proc/self/clear_refs`): the figure's own peak, plus whatever the
    /// process still held from earlier figures. Run one figure per process
    /// to compare with another program. None off Linux.
    pub peak_rss_mib: Option<f64>,
    /// With `--profile` ([`crate::ops::profile`]): mean milliseconds per
    /// timed step of each kernel (conv also per shape), of the whole
    /// backward and of the optimiser, in first-seen order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<(String, f64)>>,
}

/// The profile totals of the timed steps, in ms per step; None when off.
fn per_step(steps: usize) -> Option<Vec<(String, f64)>> {
    let t = profile::take();
    (!t.is_empty()).then(|| {
        t.into_iter()
            .map(|(k, v)| (k, v * 1e3 / steps.max(1) as f64))
            .collect()
    })
}

/// The backward pass and the optimiser step, each under its profile timer.
fn backward_and_update(loss: &Tensor, opt: &mut Optimizer, lr: f64) -> Result<()> {
    let grads = {
        let _t = profile::time(|| "backward (all)".into());
        loss.backward()?
    };
    let _t = profile::time(|| "optimizer".into());
    opt.step(&grads, lr)?;
    Ok(())
}

/// Resets the process's peak resident memory to its current size (Linux
/// 4.0+: writing 5 to `/proc/self/clear_refs`); a no-op elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory in MiB (`VmHWM` of
/// `/proc/self/status`), None where that is not readable.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn input(batch: usize, size: usize, seed: u64, dev: &Device) -> Result<Tensor> {
    let n = batch * 3 * size * size;
    let mut rng = crate::rng::stream(seed, "bench", 0, 0);
    let v: Vec<f32> = (0..n)
        .map(|_| crate::rng::normal(&mut rng) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (batch, 3, size, size), dev)?)
}

/// The ResNet training step as in the PyTorch reference
/// (`../shared/reference/torch_resnet_step.py`): ResNet + Linear(d, 128)
/// head, BatchNorm in training mode, a squared-output loss, AdamW.
pub fn resnet_step(
    arch: Arch,
    width: f64,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> Result<BenchLine> {
    let optim = OptimConfig {
        kind: OptimizerKind::Adamw,
        lr: 1e-4,
        ..Default::default()
    };
    let (net, head, mut opt) = with_head(arch, width, 128, &optim, dev)?;
    let x = input(batch, size, 1, dev)?;
    let fig = Figure {
        arch,
        width,
        batch,
        size,
        warmup,
        steps,
    };
    let mut fwd_t = Vec::new();
    let mut line = fig.time("resnet-train-step", dev, |i| {
        let t0 = Instant::now();
        let y = head.forward(&net.forward_t(&x, true)?)?;
        let loss = y.sqr()?.mean_all()?;
        loss.to_scalar::<f32>()?;
        if i >= warmup {
            fwd_t.push(t0.elapsed().as_secs_f64());
        }
        backward_and_update(&loss, &mut opt, 1e-4)
    })?;
    line.forward_median_s = Some(median(fwd_t));
    Ok(line)
}

/// What a bench line times; `pirlkit bench --what`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// The ResNet training step with a Linear(d, 128) head (the PyTorch
    /// reference's `torch_resnet_step.py`).
    Train,
    /// The fine-tuning step: encoder + Linear(d, 1), class-weighted BCE
    /// (positive weight 4, about ISIC 2017's ratio), AdamW (3e-4, weight
    /// decay 1e-2), BatchNorm in train mode.
    Finetune,
    /// Frozen-feature extraction: eval mode (BatchNorm running statistics),
    /// the pooled encoder output copied to the host, no gradient.
    Features,
}

/// The encoder (with a seeded init) and its variables, for the bench steps.
fn bench_encoder(arch: Arch, width: f64, dev: &Device) -> Result<(VarMap, ResNet, ResNetConfig)> {
    let cfg = ResNetConfig {
        arch,
        width,
        bn_momentum: 0.1,
        ..Default::default()
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let net = ResNet::new(&cfg, vb.pp("encoder"))?;
    Ok((vm, net, cfg))
}

/// The seeded encoder with a Linear(d, `out`) head, and its optimiser.
fn with_head(
    arch: Arch,
    width: f64,
    out: usize,
    optim: &OptimConfig,
    dev: &Device,
) -> Result<(ResNet, candle_nn::Linear, Optimizer)> {
    let (vm, net, cfg) = bench_encoder(arch, width, dev)?;
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let head = candle_nn::linear(cfg.feature_dim(), out, vb.pp("head"))?;
    seeded_init(&vm, 0)?;
    let opt = Optimizer::new(&vm, optim, &[])?;
    Ok((net, head, opt))
}

/// One figure's shape and step counts.
struct Figure {
    arch: Arch,
    width: f64,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
}

impl Figure {
    /// Runs `step(i)` `warmup + steps` times (the peak memory reset before
    /// the first; the profile and the clock counting the timed ones) and
    /// reports their median.
    fn time(
        &self,
        what: &str,
        dev: &Device,
        mut step: impl FnMut(usize) -> Result<()>,
    ) -> Result<BenchLine> {
        reset_peak_rss();
        let mut times = Vec::new();
        for i in 0..self.warmup + self.steps {
            if i == self.warmup {
                profile::take();
            }
            let t0 = Instant::now();
            step(i)?;
            dev.synchronize()?;
            if i >= self.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let profile = per_step(self.steps);
        let m = median(times);
        Ok(BenchLine {
            what: what.into(),
            arch: self.arch,
            width: self.width,
            batch: self.batch,
            size: self.size,
            threads: rayon::current_num_threads(),
            device: crate::device::describe(dev),
            steps: self.steps,
            median_s: m,
            images_per_s: self.batch as f64 / m,
            forward_median_s: None,
            peak_rss_mib: peak_rss_mib(),
            profile,
        })
    }
}

/// The fine-tuning step ([`What::Finetune`]): one step per batch of `batch`
/// images, half of them labelled positive.
pub fn finetune_step(
    arch: Arch,
    width: f64,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> Result<BenchLine> {
    let optim = OptimConfig {
        kind: OptimizerKind::Adamw,
        lr: 3e-4,
        weight_decay: 1e-2,
        ..Default::default()
    };
    let (net, head, mut opt) = with_head(arch, width, 1, &optim, dev)?;
    let x = input(batch, size, 1, dev)?;
    let t: Vec<f32> = (0..batch).map(|i| (i % 2) as f32).collect();
    let targets = Tensor::from_vec(t, batch, dev)?;
    let fig = Figure {
        arch,
        width,
        batch,
        size,
        warmup,
        steps,
    };
    fig.time("finetune-step", dev, |_| {
        let z = head.forward(&net.forward_t(&x, true)?)?.flatten_all()?;
        let loss = crate::train::finetune::weighted_bce(&z, &targets, 4.0)?;
        loss.to_scalar::<f32>()?;
        backward_and_update(&loss, &mut opt, 3e-4)
    })
}

/// Frozen-feature extraction ([`What::Features`]): the probe's path
/// (`ResNet::pooled_stages`, eval mode) on batches of `batch` images, the
/// features copied to the host.
pub fn features_pass(
    arch: Arch,
    width: f64,
    batch: usize,
    size: usize,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> Result<BenchLine> {
    let (vm, net, _) = bench_encoder(arch, width, dev)?;
    seeded_init(&vm, 0)?;
    let x = input(batch, size, 1, dev)?;
    let fig = Figure {
        arch,
        width,
        batch,
        size,
        warmup,
        steps,
    };
    fig.time("features", dev, |_| {
        net.pooled_stages(&x, &[4])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(())
    })
}

/// The whole PIRL step of `cfg` (image views + 9 patches through the encoder,
/// loss against the memory bank, backward, optimiser, bank update), on
/// synthetic images of the config's size (a pool of two batches' worth; the
/// memory bank has `negatives + 1` rows or more).
pub fn pirl_step(cfg: &Config, warmup: usize, steps: usize, dev: &Device) -> Result<BenchLine> {
    let bs = cfg.train.batch_size;
    let s = cfg.data.image_size;
    let n = (bs * 2).max(cfg.pirl.negatives + 1);
    let pool = bs * 2;
    let imgs: Vec<RgbImage> = (0..pool)
        .map(|i| {
            let mut rng = crate::rng::stream(cfg.seed, "bench-images", i as u64, 0);
            crate::data::synthetic::render(s, &mut rng).0
        })
        .map(|data| RgbImage { size: s, data })
        .collect();
    let (vm, model) = crate::model::build(
        &cfg.model,
        cfg.pretext.kind,
        cfg.pirl.head,
        cfg.seed,
        DType::F32,
        dev,
    )?;
    let mut opt = Optimizer::new(&vm, &cfg.train.optim, &[])?;
    let mut bank =
        crate::memory_bank::MemoryBank::new(n, crate::model::EMBED_DIM, cfg.pirl.bank_momentum);
    let rows: Vec<f32> = (0..n * crate::model::EMBED_DIM)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    bank.fill(&(0..n).collect::<Vec<_>>(), &rows);
    let fig = Figure {
        arch: cfg.model.arch,
        width: cfg.model.width,
        batch: bs,
        size: cfg.pretext.crop,
        warmup,
        steps,
    };
    fig.time("pirl-step", dev, |i| {
        let idx: Vec<usize> = (0..bs).map(|k| (i * bs + k) % n).collect();
        let img_idx: Vec<usize> = idx.iter().map(|k| k % pool).collect();
        let batch = {
            let _t = profile::time(|| "batch (crops, jitter, patches)".into());
            crate::train::pretrain::make_batch(cfg, &imgs, &img_idx, i, dev)?
        };
        let m = bank.gather(&idx, dev)?;
        let neg = crate::train::pretrain::draw_negatives(
            &bank,
            cfg,
            &idx,
            &mut crate::rng::stream(cfg.seed, "negatives", i as u64, 0),
            dev,
        )?;
        let (loss, f) = {
            let _t = profile::time(|| "forward (all)".into());
            crate::train::pretrain::pirl_forward(&model, cfg, &batch, &m, &neg)?
        };
        backward_and_update(&loss, &mut opt, cfg.train.optim.lr)?;
        bank.update(&idx, &f.detach().flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })
}
