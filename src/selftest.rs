//! `pirlkit selftest`: the ops and a short PIRL run on a device, against
//! pirlkit's fast CPU path.
//!
//! On a GPU (`--device cuda`) this checks candle's CUDA ops, and the paths
//! pirlkit composes where candle lacks one (the 3x3/2 max-pool backward),
//! against the CPU kernels. With `--device cpu` the "device" side runs the
//! same composed path on the CPU ([`crate::ops::with_reference_ops`]), so the
//! code a GPU runs is tested on machines without one too.

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::config::{Config, Preset};
use crate::data::RgbImage;
use crate::error::Result;
use crate::model::{Arch, ResNetConfig};
use crate::ops::{MaxPool2d, conv2d, with_reference_ops};

/// One comparison: the largest absolute difference between the CPU and the
/// device results, relative to the largest CPU magnitude.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub device: String,
    pub max_abs_diff: f64,
    pub max_abs_cpu: f64,
    pub rel_diff: f64,
    pub tolerance: f64,
    pub ok: bool,
}

fn det(n: usize, salt: usize) -> Vec<f32> {
    // Distinct values (no ties in a max-pool window), roughly in [-0.5, 0.5].
    (0..n)
        .map(|i| (((i * 7919 + salt * 104_729) % 10_007) as f32 / 10_007.0) - 0.5 + i as f32 * 1e-6)
        .collect()
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn check(name: &str, dev: &Device, cpu: &[f32], other: &[f32], tol: f64) -> Check {
    let scale = cpu.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = if cpu.len() != other.len() {
        f64::INFINITY
    } else {
        cpu.iter()
            .zip(other)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()))
    };
    let rel = diff / scale.max(1e-12);
    Check {
        name: name.into(),
        device: crate::device::describe(dev),
        max_abs_diff: diff,
        max_abs_cpu: scale,
        rel_diff: rel,
        tolerance: tol,
        ok: rel.is_finite() && rel <= tol,
    }
}

/// Runs `f` for the "device" side: on the device itself, or on the CPU
/// through the reference (GPU) code path.
fn on_device<T>(dev: &Device, f: impl FnOnce() -> T) -> T {
    if dev.is_cpu() {
        with_reference_ops(f)
    } else {
        f()
    }
}

/// `(output, grad wrt input, grad wrt second operand)` of `sum(op(x, w) * r)`.
type OpFn<'a> = &'a dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn op_grads(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    dev: &Device,
    op: OpFn,
) -> Result<[Vec<f32>; 3]> {
    let xv = Var::from_tensor(&Tensor::from_slice(x, xs, dev)?)?;
    let wv = Var::from_tensor(&Tensor::from_slice(w, ws, dev)?)?;
    let y = op(xv.as_tensor(), wv.as_tensor())?;
    let r = Tensor::from_vec(det(y.elem_count(), 9), y.shape(), dev)?;
    let g = (&y * &r)?.sum_all()?.backward()?;
    let gx = g
        .get(xv.as_tensor())
        .map(host)
        .transpose()?
        .unwrap_or_default();
    let gw = g
        .get(wv.as_tensor())
        .map(host)
        .transpose()?
        .unwrap_or_default();
    Ok([host(&y)?, gx, gw])
}

fn compare_op(
    out: &mut Vec<Check>,
    name: &str,
    dev: &Device,
    xs: &[usize],
    ws: &[usize],
    op: OpFn,
    tol: f64,
) -> Result<()> {
    let x = det(xs.iter().product(), 1);
    let w = det(ws.iter().product(), 2);
    let a = op_grads(&x, xs, &w, ws, &Device::Cpu, op)?;
    let b = on_device(dev, || op_grads(&x, xs, &w, ws, dev, op))?;
    for (k, part) in ["forward", "grad-input", "grad-weight"].iter().enumerate() {
        if !a[k].is_empty() {
            out.push(check(&format!("{name} {part}"), dev, &a[k], &b[k], tol));
        }
    }
    Ok(())
}

/// ResNet-18 (width 1/8) features and every parameter's gradient, BatchNorm
/// in train mode, same seeded weights on both sides.
fn resnet_grads(dev: &Device) -> Result<(Vec<f32>, Vec<f32>)> {
    let cfg = ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.125,
        bn_momentum: 0.1,
        ..Default::default()
    };
    let (vm, model) = crate::model::build(
        &cfg,
        crate::model::PretextKind::Jigsaw,
        crate::model::HeadKind::Linear,
        7,
        DType::F32,
        dev,
    )?;
    let x = Tensor::from_vec(det(4 * 3 * 33 * 31, 3), (4, 3, 33, 31), dev)?;
    let f = model.encoder.forward_t(&x, true)?;
    let r = Tensor::from_vec(det(f.elem_count(), 4), f.shape(), dev)?;
    let grads = (&f * &r)?.sum_all()?.backward()?;
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(n, _)| n.starts_with("encoder."))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut g = Vec::new();
    for (_, v) in &vars {
        if let Some(t) = grads.get(v.as_tensor()) {
            g.extend(host(t)?);
        }
    }
    Ok((host(&f)?, g))
}

/// Per-epoch losses of a short tiny-preset PIRL pretraining on synthetic
/// images (memory bank, negatives, optimiser, checkpoints: the whole loop).
fn pirl_losses(dev_name: &str, dir: &std::path::Path) -> Result<Vec<f32>> {
    let mut cfg = Config::preset(Preset::Tiny);
    cfg.device = dev_name.into();
    cfg.train.epochs = 3;
    // A small rate: the check is of the kernels, and at the tiny preset's
    // 0.03 a few SGD steps amplify their 1e-7 rounding differences into
    // 3e-4 of the loss (measured: 2e-7 at a vanishing rate, 8e-7 at 0.003,
    // 3e-4 at 0.01 and 0.03).
    cfg.train.optim.lr = 0.003;
    let s = cfg.data.image_size;
    let imgs: Vec<RgbImage> = (0..48)
        .map(|i| {
            let mut rng = crate::rng::stream(cfg.seed, "selftest-images", i, 0);
            RgbImage {
                size: s,
                data: crate::data::synthetic::render(s, &mut rng).0,
            }
        })
        .collect();
    let out = crate::train::pretrain::pretrain(&cfg, &imgs, dir, false, false)?;
    Ok(out.epoch_losses.iter().map(|&v| v as f32).collect())
}

/// Every check, CPU against `dev` (TF32 off).
pub fn run(dev: &Device, scratch: &std::path::Path) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let convs: [(&str, [usize; 4], [usize; 4], usize, usize); 5] = [
        ("conv 7x7/2 pad 3", [2, 3, 17, 13], [8, 3, 7, 7], 2, 3),
        ("conv 3x3/1 pad 1", [3, 5, 9, 9], [6, 5, 3, 3], 1, 1),
        ("conv 3x3/2 pad 1", [1, 12, 11, 8], [10, 12, 3, 3], 2, 1),
        ("conv 1x1/2", [2, 16, 8, 7], [12, 16, 1, 1], 2, 0),
        ("conv 1x1/1", [2, 9, 5, 6], [7, 9, 1, 1], 1, 0),
    ];
    for (name, xs, ws, s, p) in convs {
        let op = move |x: &Tensor, w: &Tensor| conv2d(x, w, s, p);
        compare_op(&mut out, name, dev, &xs, &ws, &op, 1e-4)?;
    }
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let pool = MaxPool2d::new(k, s, p);
        let op = move |x: &Tensor, _w: &Tensor| pool.forward(x);
        let name = format!("max-pool {k}x{k}/{s} pad {p}");
        compare_op(&mut out, &name, dev, &[2, 3, 15, 12], &[1], &op, 1e-6)?;
    }
    let (fa, ga) = resnet_grads(&Device::Cpu)?;
    let (fb, gb) = on_device(dev, || resnet_grads(dev))?;
    out.push(check("resnet18/8 features (BN train)", dev, &fa, &fb, 1e-3));
    out.push(check("resnet18/8 parameter grads", dev, &ga, &gb, 1e-3));

    // Training amplifies float-rounding differences step by step (BatchNorm
    // over 16 images, lr 0.03): the first epoch's mean loss must agree
    // closely, the curve to within 2 %.
    let la = pirl_losses("cpu", &scratch.join("cpu"))?;
    let name = crate::device::describe(dev);
    let lb = on_device(dev, || pirl_losses(&name, &scratch.join("device")))?;
    let first = |v: &[f32]| v.first().copied().into_iter().collect::<Vec<f32>>();
    out.push(check(
        "PIRL tiny epoch-1 loss",
        dev,
        &first(&la),
        &first(&lb),
        1e-4,
    ));
    out.push(check("PIRL tiny 3-epoch losses", dev, &la, &lb, 2e-2));
    Ok(out)
}
