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
//! result does not depend on the number of threads (submodule `sums`).
//!
//! The `conv_bn` submodule fuses the conv before it into the same op.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, Var, bail};
use candle_nn::{BatchNorm, Init, ModuleT, VarBuilder};
use rayon::prelude::*;

mod conv_bn;
mod sums;

use sums::{Float, NARROW_HW, channel_stats, narrow_sums, plane_sums};

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
        let st = stats.lock().expect("bn stats lock").clone();
        self.update_running(&st, x.dims4()?)?;
        Ok(y)
    }

    /// Running statistics from a batch's `[mean (C), biased var (C)]`:
    /// momentum-weighted, the variance unbiased (as PyTorch and candle).
    fn update_running(&self, st: &[f64], (n, _, h, w): (usize, usize, usize, usize)) -> Result<()> {
        let c = self.weight.dim(0)?;
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
        Ok(())
    }
}

/// Per-channel values spread over an image's `c` planes of `hw` pixels:
/// `out[ch * hw + i] = v[ch]`, so that a pass over narrow planes runs as
/// one long vector loop per image (the same operations on each value).
fn per_pixel<T: Copy>(v: &[T], hw: usize) -> Vec<T> {
    v.iter().flat_map(|&x| std::iter::repeat_n(x, hw)).collect()
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
    assert!(
        x.len() == n * c * hw && w.len() >= c && b.len() >= c,
        "batch-norm: parameters shorter than the channels"
    );
    let (mean, var) = channel_stats(x, n, c, hw);
    // y = (x - mean) * scale + beta per channel, in the element type.
    let scale: Vec<T> = (0..c)
        .map(|k| T::from_f(w[k].f() / (var[k] + eps).sqrt()))
        .collect();
    let mu: Vec<T> = mean.iter().map(|&v| T::from_f(v)).collect();
    let img = (c * hw).max(1);
    // Narrow planes: the per-channel values spread per pixel, one loop per
    // image (per-plane loops of 1-15 values would cost more in overhead).
    let spread = (hw < NARROW_HW).then(|| {
        (
            per_pixel(&scale, hw),
            per_pixel(&mu, hw),
            per_pixel(&b[..c], hw),
        )
    });
    let fill = |y: &mut [std::mem::MaybeUninit<T>]| {
        y.par_chunks_mut(img)
            .zip(x.par_chunks(img))
            .for_each(|(yi, xi)| {
                super::wide(
                    #[inline(always)]
                    || {
                        if let Some((se, me, te)) = &spread {
                            for ((o, &v), ((&s, &m), &t)) in
                                yi.iter_mut().zip(xi).zip(se.iter().zip(me).zip(te))
                            {
                                let r = (v - m) * s + t;
                                o.write(if relu && r < T::ZERO { T::ZERO } else { r });
                            }
                            return;
                        }
                        for ((yo, xc), ((&s, &m), &t)) in yi
                            .chunks_mut(hw.max(1))
                            .zip(xi.chunks(hw.max(1)))
                            .zip(scale.iter().zip(&mu).zip(b))
                        {
                            for (o, &v) in yo.iter_mut().zip(xc) {
                                let r = (v - m) * s + t;
                                o.write(if relu && r < T::ZERO { T::ZERO } else { r });
                            }
                        }
                    },
                )
            });
    };
    // SAFETY: x has n*c*hw values and scale, mu and b c each (asserted
    // above), so every image's c planes of y are written.
    let y = unsafe { super::written(x.len(), fill) };
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
        let _t = super::profile::time(|| "batch-norm forward".into());
        let _s = super::profile::time(|| format!("batch-norm forward {n}x{c}x{h}x{w}"));
        let dims = (n, c, h * w);
        let (out, st) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(wt), CpuStorage::F32(b)) => {
                let (y, st) = fwd_impl(
                    super::contiguous(x, l1, "batch-norm: x")?,
                    super::contiguous(wt, l2, "batch-norm: weight")?,
                    super::contiguous(b, l3, "batch-norm: bias")?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (CpuStorage::F32(y), st)
            }
            (CpuStorage::F64(x), CpuStorage::F64(wt), CpuStorage::F64(b)) => {
                let (y, st) = fwd_impl(
                    super::contiguous(x, l1, "batch-norm: x")?,
                    super::contiguous(wt, l2, "batch-norm: weight")?,
                    super::contiguous(b, l3, "batch-norm: bias")?,
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
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = self.stats.lock().expect("bn stats lock").clone();
        let op = BnBackward {
            eps: self.eps,
            relu: self.relu,
            weight: w.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
            bias: b.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
            stats: st,
        };
        let packed = x.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?;
        let nx = x.elem_count();
        let c = w.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = packed.narrow(0, nx, c)?;
        let db = packed.narrow(0, nx + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `dy` where the fused ReLU passed the forward's output (`relu`), else
/// `+0.0`: the forward's `(x - mean) * scale + beta` recomputed in the same
/// type, so the same bits decide.
#[inline(always)]
fn gate<T: Float>(relu: bool, [mu, s, t]: [T; 3], xv: T, gv: T) -> T {
    if relu && (xv - mu) * s + t <= T::ZERO {
        T::ZERO
    } else {
        gv
    }
}

/// `(x, dy) -> [dx flattened, dgamma (C), dbeta (C)]`.
struct BnBackward {
    eps: f64,
    relu: bool,
    weight: Vec<f64>,
    bias: Vec<f64>,
    stats: Vec<f64>,
}

impl BnBackward {
    /// The ReLU's mask is recomputed from `x` with the forward's own
    /// per-channel values (the same operations in the same type, so the same
    /// bits) rather than read from `y`: a whole-tensor stream less per pass.
    fn run<T: Float>(&self, x: &[T], g: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
        let m = (n * hw) as f64;
        let (mean, var) = self.stats.split_at(c);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // The forward's y = (x - mean) * scale + beta, as it computed it.
        let fwd: Vec<[T; 3]> = (0..c)
            .map(|k| {
                [
                    T::from_f(mean[k]),
                    T::from_f(self.weight[k] / (var[k] + self.eps).sqrt()),
                    T::from_f(self.bias[k]),
                ]
            })
            .collect();
        let relu = self.relu;
        // Per channel: sum dy', sum dy' * x_hat.
        let raw: Vec<[f64; 2]> = if hw < NARROW_HW {
            let (fwd, mean) = (&fwd, &mean);
            // `move`: the flag by value (through a reference it is
            // reloaded every value).
            narrow_sums(x, g, (n, c, hw), move |ch, xv, gv| {
                let d = gate(relu, fwd[ch], xv, gv).f();
                [d, d * (xv.f() - mean[ch])]
            })
        } else {
            plane_sums(x, g, (n, c, hw), |ch| {
                let (mu, f) = (mean[ch], fwd[ch]);
                move |xv: T, gv: T, _| {
                    let d = gate(relu, f, xv, gv).f();
                    [d, d * (xv.f() - mu)]
                }
            })
        };
        let sums: Vec<(f64, f64)> = raw
            .iter()
            .zip(&inv)
            .map(|(s, is)| (s[0], s[1] * is))
            .collect();
        // dx = k * (dy' - mean(dy') - x_hat * mean(dy' x_hat))
        //    = k * dy' + a * (x - mean) + b   per channel, in the element type.
        let coef: Vec<[T; 4]> = (0..c)
            .map(|ch| {
                let k = self.weight[ch] * inv[ch];
                let (mdy, mdyx) = (sums[ch].0 / m, sums[ch].1 / m);
                let a = -k * inv[ch] * mdyx;
                [k, a, mean[ch], -k * mdy].map(T::from_f)
            })
            .collect();
        let img = (c * hw).max(1);
        // Narrow planes: the coefficients spread per pixel (as in the
        // forward), one loop per image.
        let spread = (hw < NARROW_HW).then(|| (per_pixel(&coef, hw), per_pixel(&fwd, hw)));
        let fill = |out: &mut [std::mem::MaybeUninit<T>]| {
            let (dx, rest) = out.split_at_mut(x.len());
            dx.par_chunks_mut(img).enumerate().for_each(|(bi, dxi)| {
                super::wide(
                    #[inline(always)]
                    || {
                        // A local copy, as in the sums above: reloaded
                        // through the capture, it keeps the loops scalar.
                        #[allow(clippy::redundant_locals)]
                        let relu = relu;
                        if let Some((ce, fe)) = &spread {
                            let r = bi * img..(bi + 1) * img;
                            let (xi, gi) = (&x[r.clone()], &g[r]);
                            for (((o, &xv), &gv), (&[k, a, mu, b], &f)) in
                                dxi.iter_mut().zip(xi).zip(gi).zip(ce.iter().zip(fe))
                            {
                                o.write(k * gate(relu, f, xv, gv) + a * (xv - mu) + b);
                            }
                            return;
                        }
                        for (ch, dxo) in dxi.chunks_mut(hw.max(1)).enumerate() {
                            let [k, a, mu, b] = coef[ch];
                            let r = bi * img + ch * hw..bi * img + (ch + 1) * hw;
                            let (xb, gb) = (&x[r.clone()], &g[r]);
                            let f = fwd[ch];
                            for ((o, &xv), &gv) in dxo.iter_mut().zip(xb).zip(gb) {
                                o.write(k * gate(relu, f, xv, gv) + a * (xv - mu) + b);
                            }
                        }
                    },
                )
            });
            for ch in 0..c {
                rest[ch].write(T::from_f(sums[ch].1));
                rest[c + ch].write(T::from_f(sums[ch].0));
            }
        };
        // SAFETY: every image's c planes of dx (x.len() values in all) and
        // the 2c sums after them are written above.
        unsafe { super::written(x.len() + 2 * c, fill) }
    }
}

impl CustomOp2 for BnBackward {
    fn name(&self) -> &'static str {
        "pirlkit-batchnorm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = match l1.dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => bail!("batch-norm backward expects (N, C, H, W), got {d:?}"),
        };
        if l2.dims() != l1.dims() || self.stats.len() != 2 * c {
            bail!("batch-norm backward: shapes of x and dy differ")
        }
        let _t = super::profile::time(|| "batch-norm backward".into());
        let _s = super::profile::time(|| format!("batch-norm backward {n}x{c}x{h}x{w}"));
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(self.run(
                super::contiguous(x, l1, "batch-norm: x")?,
                super::contiguous(g, l2, "batch-norm: dy")?,
                n,
                c,
                h * w,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(self.run(
                super::contiguous(x, l1, "batch-norm: x")?,
                super::contiguous(g, l2, "batch-norm: dy")?,
                n,
                c,
                h * w,
            )),
            _ => bail!("batch-norm backward: unsupported dtypes"),
        };
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
}
