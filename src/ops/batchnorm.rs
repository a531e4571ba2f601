//! BatchNorm over `(N, C, H, W)` in training mode, optionally fused with the
//! ReLU after it, as one CPU `CustomOp3` with a closed-form backward.
//!
//! candle_nn's BatchNorm trains through about ten whole-tensor passes (a
//! transposed copy, mean, subtract, square, mean, divide, scale, shift, the
//! transposed copy back; more in the backward through autograd), each
//! allocating. Here the forward is two passes (per-channel sums, then
//! normalise-scale-shift-ReLU) and the backward two (per-channel sums of
//! `dy` and `dy * x_hat`, then `dx`):
//!
//! ```text
//! x_hat = (x - mean) * inv_std,          inv_std = 1 / sqrt(var + eps)
//! y     = relu?(gamma * x_hat + beta)
//! dy'   = dy masked where y <= 0 (fused ReLU)
//! dbeta = sum dy',  dgamma = sum dy' * x_hat
//! dx    = gamma * inv_std * (dy' - dbeta / M - x_hat * dgamma / M),  M = N*H*W
//! ```
//!
//! `var` is the biased batch variance (PyTorch's normalisation); the running
//! variance is updated with the unbiased one, as PyTorch and candle do.
//! Per-channel sums run in f64, channel by channel in a fixed order, so the
//! result does not depend on the number of threads.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var, bail};
use candle_nn::{BatchNorm, Init, ModuleT, VarBuilder};
use rayon::prelude::*;

/// A BatchNorm2d layer (torchvision names: `weight`, `bias`, `running_mean`,
/// `running_var`) whose training-mode forward on the CPU is the fused op.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    /// candle's layer over the same variables: evaluation mode, and every
    /// mode off the CPU.
    reference: BatchNorm,
}

impl BatchNorm2d {
    pub fn new(c: usize, eps: f64, momentum: f64, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(c, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(c, "running_var", Init::Const(1.))?;
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.))?;
        let reference = BatchNorm::new_with_momentum(
            c,
            running_mean.clone(),
            running_var.clone(),
            weight.clone(),
            bias.clone(),
            eps,
            momentum,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps,
            momentum,
            reference,
        })
    }

    /// `relu?(bn(x))`; `train` uses (and updates the running) batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let fast = train
            && super::fast_cpu(x.device())
            && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && x.rank() == 4
            && x.dtype() == self.weight.dtype();
        if !fast {
            let y = self.reference.forward_t(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let stats = Arc::new(Mutex::new(Vec::new()));
        let op = BnTrain {
            eps: self.eps,
            relu,
            stats: stats.clone(),
        };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        // Running statistics: momentum-weighted, unbiased variance.
        let st = stats.lock().expect("bn stats lock").clone();
        let c = self.weight.dim(0)?;
        let (n, _, h, w) = x.dims4()?;
        let m = (n * h * w) as f64;
        let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        let mom = self.momentum;
        let rm = self
            .running_mean
            .as_tensor()
            .to_dtype(candle_core::DType::F64)?;
        let rv = self
            .running_var
            .as_tensor()
            .to_dtype(candle_core::DType::F64)?;
        let (rm, rv) = (rm.to_vec1::<f64>()?, rv.to_vec1::<f64>()?);
        let new_m: Vec<f64> = (0..c).map(|k| (1.0 - mom) * rm[k] + mom * st[k]).collect();
        let new_v: Vec<f64> = (0..c)
            .map(|k| (1.0 - mom) * rv[k] + mom * st[c + k] * unbias)
            .collect();
        let dt = self.running_mean.dtype();
        let dev = self.running_mean.device();
        self.running_mean
            .set(&Tensor::from_vec(new_m, c, dev)?.to_dtype(dt)?)?;
        self.running_var
            .set(&Tensor::from_vec(new_v, c, dev)?.to_dtype(dt)?)?;
        Ok(y)
    }
}

/// Element types of the kernels.
trait Float: Copy + Send + Sync + 'static {
    fn f(self) -> f64;
    fn from_f(v: f64) -> Self;
}
impl Float for f32 {
    fn f(self) -> f64 {
        self as f64
    }
    fn from_f(v: f64) -> Self {
        v as f32
    }
}
impl Float for f64 {
    fn f(self) -> f64 {
        self
    }
    fn from_f(v: f64) -> Self {
        v
    }
}

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("batch-norm: {what} must be contiguous"),
    }
}

/// Per-channel mean and biased variance of `x` (`n` blocks of `hw` per channel).
fn channel_stats<T: Float>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // Two passes over the channel (mean, then squared deviations).
            let mut s = 0f64;
            for b in 0..n {
                let blk = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                s += blk.iter().map(|v| v.f()).sum::<f64>();
            }
            let mean = s / m;
            let mut q = 0f64;
            for b in 0..n {
                let blk = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                q += blk
                    .iter()
                    .map(|v| {
                        let d = v.f() - mean;
                        d * d
                    })
                    .sum::<f64>();
            }
            (mean, q / m)
        })
        .collect();
    per.into_iter().unzip()
}

/// The training-mode forward; `stats` receives `[mean (C), biased var (C)]`.
struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Vec<f64>>>,
}

fn fwd_impl<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    dims: (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<f64>) {
    let (n, c, hw) = dims;
    let (mean, var) = channel_stats(x, n, c, hw);
    // y = x * scale + shift per channel.
    let scale: Vec<f64> = (0..c).map(|k| w[k].f() / (var[k] + eps).sqrt()).collect();
    let shift: Vec<f64> = (0..c).map(|k| b[k].f() - mean[k] * scale[k]).collect();
    let mut y = vec![T::from_f(0.0); x.len()];
    y.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(blk, (yo, xi))| {
            let ch = blk % c;
            let (s, t) = (scale[ch], shift[ch]);
            for (o, &v) in yo.iter_mut().zip(xi) {
                let r = v.f() * s + t;
                *o = T::from_f(if relu && r < 0.0 { 0.0 } else { r });
            }
        });
    let mut st = mean;
    st.extend(var);
    (y, st)
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "pirlkit-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = match l1.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => bail!("batch-norm expects (N, C, H, W), got {d:?}"),
        };
        if l2.dims() != [c] || l3.dims() != [c] {
            bail!(
                "batch-norm: weight {:?} / bias {:?} for {c} channels",
                l2.dims(),
                l3.dims()
            )
        }
        let dims = (n, c, h * w);
        let (out, st) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(wt), CpuStorage::F32(b)) => {
                let (y, st) = fwd_impl(
                    slice(x, l1, "x")?,
                    slice(wt, l2, "weight")?,
                    slice(b, l3, "bias")?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (CpuStorage::F32(y), st)
            }
            (CpuStorage::F64(x), CpuStorage::F64(wt), CpuStorage::F64(b)) => {
                let (y, st) = fwd_impl(
                    slice(x, l1, "x")?,
                    slice(wt, l2, "weight")?,
                    slice(b, l3, "bias")?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (CpuStorage::F64(y), st)
            }
            _ => bail!("batch-norm: unsupported dtypes (f32 or f64, all the same)"),
        };
        *self.stats.lock().expect("bn stats lock") = st;
        Ok((out, Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = self.stats.lock().expect("bn stats lock").clone();
        let op = BnBackward {
            eps: self.eps,
            relu: self.relu,
            weight: w.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
            stats: st,
        };
        let packed = x.apply_op3_no_bwd(res, &grad_res.contiguous()?, &op)?;
        let nx = x.elem_count();
        let c = w.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = packed.narrow(0, nx, c)?;
        let db = packed.narrow(0, nx + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, y, dy) -> [dx flattened, dgamma (C), dbeta (C)]`.
struct BnBackward {
    eps: f64,
    relu: bool,
    weight: Vec<f64>,
    stats: Vec<f64>,
}

impl BnBackward {
    fn run<T: Float>(&self, x: &[T], y: &[T], g: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
        let m = (n * hw) as f64;
        let (mean, var) = self.stats.split_at(c);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let relu = self.relu;
        let gate = |yv: T, gv: T| -> f64 { if relu && yv.f() <= 0.0 { 0.0 } else { gv.f() } };
        // Per channel: sum dy', sum dy' * x_hat.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mu, is) = (mean[ch], inv[ch]);
                let (mut sd, mut sdx) = (0f64, 0f64);
                for b in 0..n {
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    for ((xv, yv), gv) in x[r.clone()].iter().zip(&y[r.clone()]).zip(&g[r]) {
                        let d = gate(*yv, *gv);
                        sd += d;
                        sdx += d * (xv.f() - mu) * is;
                    }
                }
                (sd, sdx)
            })
            .collect();
        let mut out = vec![T::from_f(0.0); x.len() + 2 * c];
        let (dx, rest) = out.split_at_mut(x.len());
        dx.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(blk, dxo)| {
                let ch = blk % c;
                let (mu, is) = (mean[ch], inv[ch]);
                let k = self.weight[ch] * is;
                let (mdy, mdyx) = (sums[ch].0 / m, sums[ch].1 / m);
                let base = blk * hw;
                for (i, o) in dxo.iter_mut().enumerate() {
                    let j = base + i;
                    let d = gate(y[j], g[j]);
                    let xh = (x[j].f() - mu) * is;
                    *o = T::from_f(k * (d - mdy - xh * mdyx));
                }
            });
        for ch in 0..c {
            rest[ch] = T::from_f(sums[ch].1);
            rest[c + ch] = T::from_f(sums[ch].0);
        }
        out
    }
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "pirlkit-batchnorm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = match l1.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => bail!("batch-norm backward expects (N, C, H, W), got {d:?}"),
        };
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() || self.stats.len() != 2 * c {
            bail!("batch-norm backward: shapes of x, y and dy differ")
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(y), CpuStorage::F32(g)) => {
                CpuStorage::F32(self.run(
                    slice(x, l1, "x")?,
                    slice(y, l2, "y")?,
                    slice(g, l3, "dy")?,
                    n,
                    c,
                    h * w,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(y), CpuStorage::F64(g)) => {
                CpuStorage::F64(self.run(
                    slice(x, l1, "x")?,
                    slice(y, l2, "y")?,
                    slice(g, l3, "dy")?,
                    n,
                    c,
                    h * w,
                ))
            }
            _ => bail!("batch-norm backward: unsupported dtypes"),
        };
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
}
