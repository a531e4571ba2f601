//! `pirlkit bench`: images per second of the ResNet training step (forward,
//! backward, optimiser) and of the forward alone, and of the whole PIRL step,
//! after warm-up, as JSON lines. Compare ratios measured in one run: the
//! machine may be shared.

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
    let cfg = ResNetConfig {
        arch,
        width,
        bn_momentum: 0.1,
        ..Default::default()
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let net = ResNet::new(&cfg, vb.pp("encoder"))?;
    let head = candle_nn::linear(cfg.feature_dim(), 128, vb.pp("head"))?;
    seeded_init(&vm, 0)?;
    let mut opt = Optimizer::new(
        &vm,
        &OptimConfig {
            kind: OptimizerKind::Adamw,
            lr: 1e-4,
            ..Default::default()
        },
        &[],
    )?;
    let x = input(batch, size, 1, dev)?;
    let (mut step_t, mut fwd_t) = (Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        if i == warmup {
            profile::take();
        }
        let t0 = Instant::now();
        let y = head.forward(&net.forward_t(&x, true)?)?;
        let loss = y.sqr()?.mean_all()?;
        loss.to_scalar::<f32>()?;
        let tf = t0.elapsed().as_secs_f64();
        backward_and_update(&loss, &mut opt, 1e-4)?;
        dev.synchronize()?;
        if i >= warmup {
            step_t.push(t0.elapsed().as_secs_f64());
            fwd_t.push(tf);
        }
    }
    let profile = per_step(steps);
    let m = median(step_t);
    Ok(BenchLine {
        what: "resnet-train-step".into(),
        arch,
        width,
        batch,
        size,
        threads: rayon::current_num_threads(),
        device: crate::device::describe(dev),
        steps,
        median_s: m,
        images_per_s: batch as f64 / m,
        forward_median_s: Some(median(fwd_t)),
        profile,
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
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        if i == warmup {
            profile::take();
        }
        let idx: Vec<usize> = (0..bs).map(|k| (i * bs + k) % n).collect();
        let img_idx: Vec<usize> = idx.iter().map(|k| k % pool).collect();
        let t0 = Instant::now();
        let batch = crate::train::pretrain::make_batch(cfg, &imgs, &img_idx, i, dev)?;
        let m = bank.gather(&idx, dev)?;
        let neg_idx = bank.sample_negatives(
            cfg.pirl.negatives,
            &idx,
            &mut crate::rng::stream(cfg.seed, "negatives", i as u64, 0),
        );
        let neg = bank.gather(&neg_idx, dev)?;
        let (loss, f) = crate::train::pretrain::pirl_forward(&model, cfg, &batch, &m, &neg)?;
        backward_and_update(&loss, &mut opt, cfg.train.optim.lr)?;
        bank.update(&idx, &f.detach().flatten_all()?.to_vec1::<f32>()?);
        dev.synchronize()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let profile = per_step(steps);
    let m = median(times);
    Ok(BenchLine {
        what: "pirl-step".into(),
        arch: cfg.model.arch,
        width: cfg.model.width,
        batch: bs,
        size: cfg.pretext.crop,
        threads: rayon::current_num_threads(),
        device: crate::device::describe(dev),
        steps,
        median_s: m,
        images_per_s: bs as f64 / m,
        forward_median_s: None,
        profile,
    })
}
