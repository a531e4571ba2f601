//! 2-D max pooling with padding and a backward pass, as a candle `CustomOp1`.
//!
//! candle 0.11's `max_pool2d` has no backward when kernel != stride, which is
//! exactly the ResNet stem's 3x3/2 (padding 1) pool. This op computes the
//! forward on the CPU and, on backward, routes each output gradient to the
//! first maximal input of its window (PyTorch's convention on ties).
//!
//! # Shapes
//! input `(N, C, H, W)` -> output `(N, C, Ho, Wo)` with
//! `Ho = (H + 2p - k) / s + 1` (floor), likewise `Wo`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

/// Max pool with square kernel `k`, stride `s` and zero-size padding `p`
/// (padded cells never win the max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
        }
    }

    fn out_dims(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 || self.padding * 2 > self.kernel {
            bail!(
                "max-pool: invalid kernel {} stride {} padding {}",
                self.kernel,
                self.stride,
                self.padding
            )
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            bail!(
                "max-pool: input {h}x{w} smaller than kernel {}",
                self.kernel
            )
        }
        Ok((
            (h + 2 * self.padding - self.kernel) / self.stride + 1,
            (w + 2 * self.padding - self.kernel) / self.stride + 1,
        ))
    }

    /// Applies the pool, with gradient tracking.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if super::fast_cpu(x.device()) {
            let op = PoolOp {
                pool: *self,
                argmax: Arc::new(Mutex::new(Vec::new())),
            };
            x.contiguous()?.apply_op1(op)
        } else {
            self.forward_composed(x)
        }
    }

    /// The same pool from candle's own differentiable ops, for any device
    /// (the CUDA path): pad with -inf, then a separable max over the `k`
    /// strided row offsets and the `k` column offsets (`index_select` +
    /// `maximum`, whose backward candle has). On exact ties inside a window
    /// the gradient is split between the tied inputs (candle's `maximum`
    /// backward) rather than routed to the first one; after a ReLU such ties
    /// are zeros, whose gradient the ReLU drops anyway.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (ho, wo) = self.out_dims(h, w)?;
        let y = self.pool_dim(x, 2, ho)?;
        self.pool_dim(&y, 3, wo)
    }

    fn pool_dim(&self, x: &Tensor, dim: usize, out: usize) -> Result<Tensor> {
        let x = if self.padding > 0 {
            let mut shape = x.dims().to_vec();
            shape[dim] = self.padding;
            let pad = Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())?;
            Tensor::cat(&[&pad, x, &pad], dim)?
        } else {
            x.clone()
        };
        let mut acc: Option<Tensor> = None;
        for d in 0..self.kernel {
            let idx: Vec<u32> = (0..out).map(|i| (i * self.stride + d) as u32).collect();
            let idx = Tensor::from_vec(idx, out, x.device())?;
            let sel = x.index_select(&idx, dim)?;
            acc = Some(match acc {
                None => sel,
                Some(a) => a.maximum(&sel)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("max-pool: kernel 0".into()))
    }
}

fn dims4(layout: &Layout) -> Result<(usize, usize, usize, usize)> {
    match layout.shape().dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => bail!("max-pool expects (N, C, H, W), got {d:?}"),
    }
}

/// The float types the pool runs on, with a branch-free select (on real
/// data "is this tap larger" is a coin flip for the branch predictor).
trait PoolElem: Copy + Send + Sync + Default + PartialOrd {
    fn is_nan(self) -> bool;
    fn select(c: bool, a: Self, b: Self) -> Self;
}

impl PoolElem for f32 {
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline(always)]
    fn select(c: bool, a: Self, b: Self) -> Self {
        let m = 0u32.wrapping_sub(c as u32);
        f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

impl PoolElem for f64 {
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    #[inline(always)]
    fn select(c: bool, a: Self, b: Self) -> Self {
        let m = 0u64.wrapping_sub(c as u64);
        f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

#[inline(always)]
fn select_u32(c: bool, a: u32, b: u32) -> u32 {
    let m = 0u32.wrapping_sub(c as u32);
    (a & m) | (b & !m)
}

/// Whether input `(v, i)` replaces the running maximum `(b, j)` of a window
/// (`j == u32::MAX`: none yet): larger, or equal and earlier in the plane,
/// or the earliest NaN (a NaN wins, so the loss guard sees it). Inside a
/// window a smaller plane index is an earlier row, or the same row and an
/// earlier column, so the winner is the first maximum in window order
/// whatever order the taps are visited in.
#[inline(always)]
fn beats<T: PoolElem>(v: T, i: u32, b: T, j: u32) -> bool {
    let (vn, bn) = (v.is_nan(), b.is_nan());
    let earlier = i < j;
    (j == u32::MAX) | (v > b) | ((v == b) & earlier) | (vn & (!bn | earlier))
}

/// Output and, per output, the plane index of its first maximal input in
/// window order (`u32::MAX` for a window entirely in the padding; see
/// [`beats`]). Separable: per output row, the maximum of each input column
/// over the window's rows (whole contiguous rows per tap, which vectorise),
/// then per output the maximum over its columns.
fn fwd_impl<T: PoolElem>(
    x: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    p: &MaxPool2d,
    ho: usize,
    wo: usize,
) -> (Vec<T>, Vec<u32>) {
    let mut out = vec![T::default(); n * c * ho * wo];
    let mut arg = vec![u32::MAX; n * c * ho * wo];
    let tap = |t, len, outs| super::tap_outputs(t, p.padding, p.stride, len, outs);
    let rows: Vec<(usize, usize)> = (0..p.kernel).map(|t| tap(t, h, ho)).collect();
    let cols: Vec<(usize, usize)> = (0..p.kernel).map(|t| tap(t, w, wo)).collect();
    out.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(vv, vi, tv, ti): &mut (Vec<T>, Vec<u32>, Vec<T>, Vec<u32>), (pl, (o, a))| {
                super::wide(
                    #[inline(always)]
                    || {
                        // The sizes in locals: read through the closure's captures
                        // they are reloaded after every store.
                        let (h, w, ho, wo) = (h, w, ho, wo);
                        let (stride, padding) = (p.stride, p.padding);
                        let plane = &x[pl * h * w..(pl + 1) * h * w];
                        // Vertical: vv/vi[oy * w + ix].
                        vv.clear();
                        vv.resize(ho * w, T::default());
                        vi.clear();
                        vi.resize(ho * w, u32::MAX);
                        for (ky, &(lo, hi)) in rows.iter().enumerate() {
                            for oy in lo..hi {
                                let iy = oy * stride + ky - padding;
                                let src = &plane[iy * w..(iy + 1) * w];
                                let bv = &mut vv[oy * w..(oy + 1) * w];
                                let bi = &mut vi[oy * w..(oy + 1) * w];
                                for (ix, ((&v, b), j)) in src.iter().zip(bv).zip(bi).enumerate() {
                                    let i = (iy * w + ix) as u32;
                                    let take = beats(v, i, *b, *j);
                                    *b = T::select(take, v, *b);
                                    *j = select_u32(take, i, *j);
                                }
                            }
                        }
                        // Horizontal, over the window's columns: per tap, its
                        // strided column of every output row gathered into one
                        // contiguous plane first, so the compare-and-select runs
                        // element-wise over the whole output plane (and vectorises).
                        for (kx, &(lo, hi)) in cols.iter().enumerate() {
                            tv.clear();
                            tv.resize(ho * wo, T::default());
                            ti.clear();
                            ti.resize(ho * wo, u32::MAX);
                            for oy in 0..ho {
                                let (sv, si) =
                                    (&vv[oy * w..(oy + 1) * w], &vi[oy * w..(oy + 1) * w]);
                                for ox in lo..hi {
                                    let ix = ox * stride + kx - padding;
                                    tv[oy * wo + ox] = sv[ix];
                                    ti[oy * wo + ox] = si[ix];
                                }
                            }
                            for (((&v, &i), b), j) in
                                tv.iter().zip(ti.iter()).zip(o.iter_mut()).zip(a.iter_mut())
                            {
                                let take = (i != u32::MAX) & beats(v, i, *b, *j);
                                *b = T::select(take, v, *b);
                                *j = select_u32(take, i, *j);
                            }
                        }
                    },
                )
            },
        );
    (out, arg)
}

/// Routes each output gradient to the input its forward picked.
fn bwd_impl<T: Copy + Send + Sync + Default + std::ops::AddAssign>(
    g: &[T],
    arg: &[u32],
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<T> {
    let mut out = vec![T::default(); n * c * h * w];
    out.par_chunks_mut(h * w).enumerate().for_each(|(pl, o)| {
        let r = pl * ho * wo..(pl + 1) * ho * wo;
        for (&v, &i) in g[r.clone()].iter().zip(&arg[r]) {
            if i != u32::MAX {
                o[i as usize] += v;
            }
        }
    });
    out
}

/// The pool as it runs: [`MaxPool2d`] plus the argmax of its forward, which
/// the backward reads instead of searching the windows again.
struct PoolOp {
    pool: MaxPool2d,
    argmax: Arc<Mutex<Vec<u32>>>,
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "pirlkit-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::time(|| "max-pool forward".into());
        let d = dims4(layout)?;
        let (ho, wo) = self.pool.out_dims(d.2, d.3)?;
        if (d.2 * d.3) as u64 >= u32::MAX as u64 {
            bail!("max-pool: plane of {}x{} pixels too large", d.2, d.3)
        }
        let (out, arg) = match storage {
            CpuStorage::F32(v) => {
                let (o, a) = fwd_impl(
                    super::contiguous(v, layout, "max-pool: input")?,
                    d,
                    &self.pool,
                    ho,
                    wo,
                );
                (CpuStorage::F32(o), a)
            }
            CpuStorage::F64(v) => {
                let (o, a) = fwd_impl(
                    super::contiguous(v, layout, "max-pool: input")?,
                    d,
                    &self.pool,
                    ho,
                    wo,
                );
                (CpuStorage::F64(o), a)
            }
            _ => bail!("max-pool: unsupported dtype (f32 and f64 only)"),
        };
        *self.argmax.lock().expect("max-pool argmax lock") = arg;
        Ok((out, Shape::from((d.0, d.1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let op = MaxPool2dBackward {
            pool: self.pool,
            argmax: self.argmax.lock().expect("max-pool argmax lock").clone(),
        };
        Ok(Some(arg.apply_op2_no_bwd(&g, &op)?))
    }
}

/// Gradient of [`MaxPool2d`] w.r.t. its input: `(input, grad_output) ->
/// grad_input` (the input gives the shape; the forward's argmax the routes).
struct MaxPool2dBackward {
    pool: MaxPool2d,
    argmax: Vec<u32>,
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "pirlkit-max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::profile::time(|| "max-pool backward".into());
        let d = dims4(l1)?;
        let (ho, wo) = self.pool.out_dims(d.2, d.3)?;
        if l2.shape().dims() != [d.0, d.1, ho, wo] {
            bail!(
                "max-pool backward: gradient shape {:?} does not match output",
                l2.shape()
            )
        }
        if self.argmax.len() != d.0 * d.1 * ho * wo {
            bail!("max-pool backward: no forward argmax for this input")
        }
        let out = match s2 {
            CpuStorage::F32(g) => CpuStorage::F32(bwd_impl(
                super::contiguous(g, l2, "max-pool backward: gradient")?,
                &self.argmax,
                d,
                (ho, wo),
            )),
            CpuStorage::F64(g) => CpuStorage::F64(bwd_impl(
                super::contiguous(g, l2, "max-pool backward: gradient")?,
                &self.argmax,
                d,
                (ho, wo),
            )),
            _ => bail!("max-pool backward: unsupported dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }
}
