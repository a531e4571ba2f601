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
//!
//! The `conv_bn` submodule fuses the conv before it into the same op.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, Var, bail};
use candle_nn::{BatchNorm, Init, ModuleT, VarBuilder};
use rayon::prelude::*;

mod conv_bn;

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

/// Element types of the kernels: arithmetic in the element type, sums in f64.
trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    fn f(self) -> f64;
    fn from_f(v: f64) -> Self;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self as f64
    }
    fn from_f(v: f64) -> Self {
        v as f32
    }
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self
    }
    fn from_f(v: f64) -> Self {
        v
    }
}

/// Lanes of the f64 sums: independent accumulators, so the adds pipeline
/// (one f64 accumulator waits on every add) and vectorise; combined in a
/// fixed order, so the result does not depend on anything but the data.
const LANES: usize = 8;

/// `acc[l] += f(a[i], b[i], c[i])` for `i = l (mod LANES)`, over three
/// equal-length slices.
#[inline(always)]
fn lane_sum<T: Copy, const K: usize>(
    a: &[T],
    b: &[T],
    c: &[T],
    acc: &mut [[f64; LANES]; K],
    f: impl Fn(T, T, T) -> [f64; K],
) {
    let (ac, bc, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ar, br, cr) = (ac.remainder(), bc.remainder(), cc.remainder());
    for ((a8, b8), c8) in ac.zip(bc).zip(cc) {
        let (a8, b8, c8): (&[T; LANES], &[T; LANES], &[T; LANES]) = (
            a8.try_into().expect("lane chunk"),
            b8.try_into().expect("lane chunk"),
            c8.try_into().expect("lane chunk"),
        );
        for l in 0..LANES {
            let v = f(a8[l], b8[l], c8[l]);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    for (l, ((&av, &bv), &cv)) in ar.iter().zip(br).zip(cr).enumerate() {
        let v = f(av, bv, cv);
        for k in 0..K {
            acc[k][l] += v[k];
        }
    }
}

fn lanes_total(acc: &[f64; LANES]) -> f64 {
    acc.iter().sum()
}

/// Planes smaller than this are summed channel-parallel ([`narrow_sums`]):
/// lanes inside a block of 1-15 values are mostly empty.
const NARROW_HW: usize = 2 * LANES;

/// Per channel `ch`, `K` sums of `f(ch, a[i], b[i])` over its elements, for
/// planes under [`NARROW_HW`] values: a task per 16 channels walks the
/// images in order, pixel by pixel, adding each of its channels' values to
/// that channel's own accumulators, held in locals (16 independent chains
/// that overlap, where a single channel's adds would wait on each other, and
/// no store and reload per add). The order per channel is fixed: image by
/// image, pixel by pixel.
fn narrow_sums<T: Float, const K: usize>(
    a: &[T],
    b: &[T],
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, T, T) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    const CH: usize = 16;
    let mut out = vec![[0f64; K]; c];
    out.par_chunks_mut(CH).enumerate().for_each(|(t, acc)| {
        let c0 = t * CH;
        let nc = acc.len();
        super::wide(
            #[inline(always)]
            || {
                let mut loc = [[0f64; K]; CH];
                for img in 0..n {
                    let base = (img * c + c0) * hw;
                    let (ab, bb) = (&a[base..base + nc * hw], &b[base..base + nc * hw]);
                    for i in 0..hw {
                        if nc == CH {
                            for (j, l) in loc.iter_mut().enumerate() {
                                // SAFETY: j < CH = nc and i < hw, so the
                                // index is below nc * hw, the slices' length.
                                let (av, bv) = unsafe {
                                    (*ab.get_unchecked(j * hw + i), *bb.get_unchecked(j * hw + i))
                                };
                                let v = f(c0 + j, av, bv);
                                for k in 0..K {
                                    l[k] += v[k];
                                }
                            }
                        } else {
                            for (j, l) in loc.iter_mut().enumerate().take(nc) {
                                let v = f(c0 + j, ab[j * hw + i], bb[j * hw + i]);
                                for k in 0..K {
                                    l[k] += v[k];
                                }
                            }
                        }
                    }
                }
                acc.copy_from_slice(&loc[..nc]);
            },
        )
    });
    out
}

/// Channels per task of [`plane_sums`]: a task reads, per image, one
/// contiguous run of this many planes.
const PLANE_BLOCK: usize = 4;

/// Per channel `ch`, `K` lane sums of `per(ch)(a[i], b[i])` over its `n`
/// planes of `hw` values (at least [`NARROW_HW`]), each plane summed by
/// [`lane_sum`] in image order. A task takes [`PLANE_BLOCK`] channels and
/// walks the images, so that it streams one contiguous run of planes per
/// image (a task per channel jumps `c * hw` values after every plane,
/// which left this pass waiting on memory). Each channel's sums are added
/// in the same order whatever the blocks, so the bits do not depend on them.
fn plane_sums<T: Float, const K: usize, G: Fn(T, T, T) -> [f64; K]>(
    a: &[T],
    b: &[T],
    (n, c, hw): (usize, usize, usize),
    per: impl Fn(usize) -> G + Sync,
) -> Vec<[[f64; LANES]; K]> {
    let mut out = vec![[[0f64; LANES]; K]; c];
    out.par_chunks_mut(PLANE_BLOCK)
        .enumerate()
        .for_each(|(t, acc)| {
            super::wide(
                #[inline(always)]
                || {
                    let c0 = t * PLANE_BLOCK;
                    for img in 0..n {
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let r = (img * c + c0 + j) * hw..(img * c + c0 + j + 1) * hw;
                            let (ab, bb) = (&a[r.clone()], &b[r]);
                            // Sums and the function in locals for the
                            // plane's loop (through the references they
                            // would be reloaded every value).
                            let mut loc = *acc;
                            lane_sum(ab, bb, bb, &mut loc, per(c0 + j));
                            *acc = loc;
                        }
                    }
                },
            )
        });
    out
}

/// Per-channel values spread over an image's `c` planes of `hw` pixels:
/// `out[ch * hw + i] = v[ch]`, so that a pass over narrow planes runs as
/// one long vector loop per image (the same operations on each value).
fn per_pixel<T: Copy>(v: &[T], hw: usize) -> Vec<T> {
    v.iter().flat_map(|&x| std::iter::repeat_n(x, hw)).collect()
}

/// Per-channel mean and biased variance of `x` (`n` blocks of `hw` per
/// channel): a pass for the mean, then one for the squared deviations.
fn channel_stats<T: Float>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    if hw < NARROW_HW {
        let mean: Vec<f64> = narrow_sums(x, x, (n, c, hw), |_, v, _| [v.f()])
            .iter()
            .map(|s| s[0] / m)
            .collect();
        let var = narrow_sums(x, x, (n, c, hw), |ch, v, _| {
            let d = v.f() - mean[ch];
            [d * d]
        })
        .iter()
        .map(|s| s[0] / m)
        .collect();
        return (mean, var);
    }
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            super::wide(
                #[inline(always)]
                || {
                    let blocks = (0..n).map(|b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
                    let mut s = [[0f64; LANES]];
                    for blk in blocks.clone() {
                        lane_sum(blk, blk, blk, &mut s, |v, _, _| [v.f()]);
                    }
                    let mean = lanes_total(&s[0]) / m;
                    let mut q = [[0f64; LANES]];
                    for blk in blocks {
                        lane_sum(blk, blk, blk, &mut q, |v, _, _| {
                            let d = v.f() - mean;
                            [d * d]
                        });
                    }
                    (mean, lanes_total(&q[0]) / m)
                },
            )
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
        let sums: Vec<(f64, f64)> = if hw < NARROW_HW {
            let (fwd, mean) = (&fwd, &mean);
            // `move`: the flag by value (through a reference it is
            // reloaded every value).
            narrow_sums(x, g, (n, c, hw), move |ch, xv, gv| {
                let d = gate(relu, fwd[ch], xv, gv).f();
                [d, d * (xv.f() - mean[ch])]
            })
            .iter()
            .zip(&inv)
            .map(|(s, is)| (s[0], s[1] * is))
            .collect()
        } else {
            plane_sums(x, g, (n, c, hw), |ch| {
                let (mu, f) = (mean[ch], fwd[ch]);
                move |xv: T, gv: T, _| {
                    let d = gate(relu, f, xv, gv).f();
                    [d, d * (xv.f() - mu)]
                }
            })
            .iter()
            .zip(&inv)
            .map(|(acc, is)| (lanes_total(&acc[0]), lanes_total(&acc[1]) * is))
            .collect()
        };
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
