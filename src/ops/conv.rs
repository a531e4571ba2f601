//! Fast CPU 2-D convolution (groups = 1, dilation = 1, no bias) as a candle
//! `CustomOp2`, with its own backward.
//!
//! candle 0.11 computes the input gradient of `conv2d` with a scalar
//! `conv_transpose2d` loop and the weight gradient with a conv2d that treats
//! the batch as channels; both dominate ResNet training on the CPU. Here:
//!
//! * forward, per group of images (enough for about 512 output pixels): the
//!   im2col of the group into one `K x (G*Ho*Wo)` buffer (`K = Cin*kh*kw`),
//!   one GEMM `W (Cout x K) * col`, then the result scattered into NCHW (a
//!   single image goes straight into the output). Grouping matters for the
//!   deep layers of small inputs: at 2x2 pixels a GEMM per image re-reads
//!   the whole weight matrix for every image.
//! * backward, one extra op computing both gradients per group: `dY`
//!   gathered into `Cout x cols`, `dW^T += col * dY^T` and `dcol = W^T * dY`
//!   as one GEMM each, then col2im per image.
//! * a single group (deep layers of small inputs) runs gemm's own threads
//!   inside the GEMMs and splits its im2col / col2im by channel blocks.
//!
//! The first of these that applies replaces im2col (`Path`, in submodule
//! `geom` with the sizes, `Geom`):
//! * stride-1 3x3 convs with padding 1 on planes of 16 pixels and more:
//!   Winograd F(2x2, 3x3), 2.25x fewer multiply-adds in the GEMMs
//!   (submodule `winograd`).
//! * other stride-1 "same" convs on planes of 4-36 pixels: one GEMM per
//!   kernel tap over the pixels it reaches, no padding taps (submodule
//!   `taps`).
//! * other small planes (`H*W <= kh*kw`), forward from 64 images and always
//!   in the backward: one dense matrix (submodule `dense`).
//!
//! im2col itself, by shifted planes, row copies or a tap table, is in
//! submodule `im2col`.
//! * the grouping of images, the thread split and the ordered sum of the
//!   weight-gradient partials, shared by these paths, are in `groups`.
//!
//! Parallelism is rayon over groups with single-threaded `gemm` inside, or,
//! when there are fewer groups than threads, gemm's own threads inside each
//! GEMM. Group sizes depend on the shapes only and the weight-gradient
//! partials are summed in group order, so results are bit-identical whatever
//! the number of rayon threads.
//!
//! # Shapes
//! `x: (N, Cin, H, W)`, `w: (Cout, Cin, kh, kw)` -> `(N, Cout, Ho, Wo)` with
//! `Ho = (H + 2p - kh) / s + 1` (floor), likewise `Wo`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Mutex;

mod dense;
mod geom;
mod groups;
mod im2col;
mod taps;
mod winograd;

use super::contiguous;
use dense::{DENSE_FWD_MIN_BATCH, dense_bwd, dense_fwd};
use geom::{Geom, Path};
use groups::{
    col2im_group, for_groups, group_size, im2col_group, map_groups, split_threads, sum_partials,
};
use im2col::table_for;
use taps::{taps_bwd, taps_fwd};
use winograd::{wino_bwd, wino_fwd};

/// 2-D convolution without bias, groups = 1, dilation = 1, with a fast CPU
/// backward.
///
/// Falls back to candle's own [`Tensor::conv2d`] on non-CPU devices.
///
/// # Shapes
/// `x: (N, Cin, H, W)`, `w: (Cout, Cin, kh, kw)` -> `(N, Cout, Ho, Wo)`,
/// `Ho = (H + 2p - kh)/s + 1`, `Wo = (W + 2p - kw)/s + 1`.
///
/// # Errors
/// Ranks other than 4, mismatched input channels or dtypes, a zero stride,
/// a kernel larger than the padded input, or a dtype other than f32/f64.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !super::fast_cpu(x.device()) || !w.device().is_cpu() {
        return candle_conv2d(x, w, stride, padding);
    }
    // Validate here too, for errors that name this op before any copy.
    Geom::new(x.dims(), w.dims(), stride, padding)?;
    if x.dtype() != w.dtype() {
        bail!(
            "conv2d: dtype mismatch, x {:?} w {:?}",
            x.dtype(),
            w.dtype()
        )
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2dOp { stride, padding })
}

/// candle's own `conv2d` (the path on a GPU), made safe for backward on
/// non-square inputs.
///
/// candle 0.11's conv2d backward derives the transposed conv's output padding
/// from the height alone, so when `(H + 2p - k) % s` and `(W + 2p - k) % s`
/// differ the input gradient comes out one column short and the add fails.
/// Zero columns (or rows) appended past the last window change no output and
/// get a zero gradient; appending just enough to equalise the two remainders
/// makes candle's backward consistent.
fn candle_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if h + 2 * padding < kh || wd + 2 * padding < kw || stride == 0 {
        bail!("conv2d: input {h}x{wd} (padding {padding}) smaller than kernel {kh}x{kw}")
    }
    let rh = (h + 2 * padding - kh) % stride;
    let rw = (wd + 2 * padding - kw) % stride;
    let x = if rh > rw {
        x.pad_with_zeros(3, 0, rh - rw)?
    } else if rw > rh {
        x.pad_with_zeros(2, 0, rw - rh)?
    } else {
        x.clone()
    };
    x.conv2d(w, padding, stride, 1, 1)
}

/// The forward op; see [`conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

/// Element types the kernels run on (f32, f64).
trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
}
impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}
impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, each operand given with
/// its (row stride, column stride); `threads > 1` lets gemm split the output
/// over that many rayon threads (each output element is still reduced in
/// one fixed order, so the result does not depend on it).
///
/// # Safety
/// The pointers must cover the strided matrices they describe; `dst` must not
/// alias `lhs` or `rhs`. `dst` need not be initialised unless `accumulate`
/// (gemm does not read it otherwise).
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn gemm_strided<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    threads: usize,
) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded to the caller; dst spans m x n with these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// [`gemm_strided`] split across the rayon threads by blocks of output
/// columns (or rows, when there are more rows than columns), each block one
/// single-threaded GEMM. For GEMMs that gemm's own threads do not split
/// well (the dense path's: 64 images, K = 512): measured there, gemm with 2
/// threads ran no faster than with one. gemm reduces every output value over
/// `k` in an order fixed by `k` alone (its depth blocking depends on `k`
/// only), so the result is the same as one call's, whatever the split.
///
/// # Safety
/// As [`gemm_strided`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_split<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    /// Blocks are multiples of this many rows or columns (gemm's tiles).
    const ALIGN: usize = 16;
    let threads = rayon::current_num_threads().max(1);
    let by_rows = m > n;
    let len = if by_rows { m } else { n };
    let block = len.div_ceil(threads).next_multiple_of(ALIGN).max(ALIGN);
    let (dst, lhs, rhs) = (
        groups::SendPtr(dst),
        groups::SendPtr(lhs.cast_mut()),
        groups::SendPtr(rhs.cast_mut()),
    );
    (0..len.div_ceil(block)).into_par_iter().for_each(|b| {
        let (dst, lhs, rhs) = (dst, lhs, rhs);
        let (o, l) = (b * block, block.min(len - b * block));
        // Block b: rows o..o+l of dst and lhs, or columns o..o+l of dst and rhs.
        let (bm, bn, d, lo, ro) = if by_rows {
            (l, n, o * dst_rs, o * lhs_rs, 0)
        } else {
            (m, l, o * dst_cs, 0, o * rhs_cs)
        };
        // SAFETY: the block lies inside the matrices the caller described;
        // blocks write disjoint parts of dst.
        unsafe {
            gemm_strided(
                bm,
                bn,
                k,
                dst.0.add(d),
                (dst_rs, dst_cs),
                false,
                lhs.0.add(lo).cast_const(),
                (lhs_rs, lhs_cs),
                rhs.0.add(ro).cast_const(),
                (rhs_rs, rhs_cs),
                1,
            )
        }
    });
}

fn fwd_impl<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    match Path::of(g) {
        Path::Winograd => return wino_fwd(g, x, w),
        Path::Taps => return taps_fwd(g, x, w),
        Path::Dense if g.n >= DENSE_FWD_MIN_BATCH => return dense_fwd(g, x, w),
        _ => {}
    }
    if g.degenerate() {
        return vec![T::ZERO; g.y_len()];
    }
    let (k, pix, img, yimg) = (g.k(), g.pix(), g.cin * g.hw(), g.cout * g.pix());
    let gs = group_size(g);
    let table = table_for(g);
    let table = &table[..];
    let groups = g.n.div_ceil(gs);
    let (across, inner) = split_threads(groups);
    // Each group's chunk of y is written whole, by its GEMM (one image) or
    // by the scatter, so y is not zeroed first (a pass over 19 MiB for the
    // stem at batch 32 and 96 px).
    let per_group = |(col, tmp): &mut (Vec<T>, Vec<T>),
                     (gi, yg): (usize, &mut [MaybeUninit<T>])| {
        let imgs = yg.len() / yimg;
        let cols = imgs * pix;
        let i0 = gi * gs;
        // The K x cols column matrix: for one image of a pointwise conv the
        // input plane itself, else the group's im2col.
        let colp: *const T = if g.pointwise() && imgs == 1 {
            x[i0 * img..].as_ptr()
        } else {
            col.resize(k * cols, T::ZERO);
            im2col_group(g, table, x, i0, imgs, col, !across);
            col.as_ptr()
        };
        // One image: straight into y; several: Cout x cols, scattered below.
        let dst: *mut T = if imgs == 1 {
            yg.as_mut_ptr().cast()
        } else {
            tmp.resize(g.cout * cols, T::ZERO);
            tmp.as_mut_ptr()
        };
        // SAFETY: w is Cout x K, colp is K x cols, dst is Cout x cols.
        unsafe {
            gemm_strided(
                g.cout,
                cols,
                k,
                dst,
                (cols, 1),
                false,
                w.as_ptr(),
                (k, 1),
                colp,
                (cols, 1),
                inner,
            )
        }
        if imgs == 1 {
            return;
        }
        // Cout x (imgs * pix) -> imgs x Cout x pix (image by image across
        // the threads when this is the only group).
        let tmp = &tmp[..];
        let scatter = |(j, yj): (usize, &mut [MaybeUninit<T>])| {
            for (co, d) in yj.chunks_exact_mut(pix).enumerate() {
                let src = &tmp[co * cols + j * pix..co * cols + (j + 1) * pix];
                for (d, &v) in d.iter_mut().zip(src) {
                    d.write(v);
                }
            }
        };
        if across {
            yg.chunks_mut(yimg).enumerate().for_each(scatter);
        } else {
            yg.par_chunks_mut(yimg).enumerate().for_each(scatter);
        }
    };
    let scratch = || (Vec::new(), Vec::new());
    // SAFETY: every group writes all of its chunk (above).
    unsafe {
        crate::ops::written(g.y_len(), |y| {
            for_groups(y, gs * yimg, across, scratch, per_group)
        })
    }
}

/// Both gradients: `dX` (N*Cin*H*W, empty unless `want_dx`) and `dW`
/// (Cout*K).
///
/// Per group of images: `dY` gathered into `Cout x cols`, the im2col of the
/// group (`K x cols`), then `dW^T += col * dY^T` and `dcol = W^T * dY`, both as
/// one GEMM, and col2im per image. Group partials of `dW` are summed in group
/// order.
fn bwd_impl<T: Elem>(g: &Geom, x: &[T], w: &[T], dy: &[T], want_dx: bool) -> (Vec<T>, Vec<T>) {
    match Path::of(g) {
        Path::Winograd => return wino_bwd(g, x, w, dy, want_dx),
        Path::Taps => return taps_bwd(g, x, w, dy, want_dx),
        Path::Dense => return dense_bwd(g, x, w, dy, want_dx),
        Path::Im2col => {}
    }
    let (nx, nw) = (if want_dx { g.x_len() } else { 0 }, g.w_len());
    let (mut dx, mut dw) = (vec![T::ZERO; nx], vec![T::ZERO; nw]);
    if g.degenerate() {
        return (dx, dw);
    }
    let (k, pix, img, yimg) = (g.k(), g.pix(), g.cin * g.hw(), g.cout * g.pix());
    let gs = group_size(g);
    let table = table_for(g);
    let table = &table[..];
    let groups = g.n.div_ceil(gs);
    let (across, inner) = split_threads(groups);
    let per_group =
        |(col, dcol, dyg): &mut (Vec<T>, Vec<T>, Vec<T>), (gi, dxg): (usize, &mut [T])| -> Vec<T> {
            let i0 = gi * gs;
            let imgs = gs.min(g.n - i0);
            let cols = imgs * pix;
            // dY of the group as Cout x cols.
            let dyp: *const T = if imgs == 1 {
                dy[i0 * yimg..].as_ptr()
            } else {
                dyg.resize(g.cout * cols, T::ZERO);
                // Row by row across the threads when this is the only group.
                let gather = |(co, row): (usize, &mut [T])| {
                    for (j, d) in row.chunks_exact_mut(pix).enumerate() {
                        let src = (i0 + j) * yimg + co * pix;
                        d.copy_from_slice(&dy[src..src + pix]);
                    }
                };
                if across {
                    dyg.chunks_mut(cols).enumerate().for_each(gather);
                } else {
                    dyg.par_chunks_mut(cols).enumerate().for_each(gather);
                }
                dyg.as_ptr()
            };
            col.resize(k * cols, T::ZERO);
            im2col_group(g, table, x, i0, imgs, col, !across);
            // dW^T (K x Cout) = col (K x cols) * dY^T (cols x Cout): a
            // column-major destination, which gemm runs fastest for these layouts.
            // SAFETY: col is K x cols; dyp is Cout x cols read transposed; dwp
            // holds Cout x K stored as (1, Cout) strides, all written by the
            // GEMM (which does not read it).
            let dwp = unsafe {
                crate::ops::written(nw, |dwp| {
                    gemm_strided(
                        g.cout,
                        k,
                        cols,
                        dwp.as_mut_ptr().cast::<T>(),
                        (1, g.cout),
                        false,
                        dyp,
                        (cols, 1),
                        col.as_ptr(),
                        (1, cols),
                        inner,
                    )
                })
            };
            if !want_dx {
                return dwp;
            }
            // dcol (K x cols) = W^T (K x Cout) * dY (Cout x cols).
            dcol.resize(k * cols, T::ZERO);
            // SAFETY: w is Cout x K read transposed; dyp is Cout x cols.
            unsafe {
                gemm_strided(
                    k,
                    cols,
                    g.cout,
                    dcol.as_mut_ptr(),
                    (cols, 1),
                    false,
                    w.as_ptr(),
                    (1, k),
                    dyp,
                    (cols, 1),
                    inner,
                )
            }
            col2im_group(g, table, dcol, dxg, !across);
            dwp
        };
    let scratch = || (Vec::new(), Vec::new(), Vec::new());
    let partials = map_groups(&mut dx, gs * img, groups, across, scratch, per_group);
    if let Some(acc) = sum_partials(partials) {
        // acc is dW^T (K x Cout); write dW (Cout x K).
        transpose(&acc, k, g.cout, &mut dw);
    }
    (dx, dw)
}

/// `dst (cols x rows) = src (rows x cols)^T`, both row-major, in square
/// tiles so that neither side is read or written one cache line per value
/// (a row of dW^T of a 512-channel layer is 2 KiB apart from the next).
fn transpose<T: Copy + Send + Sync>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(cb, band)| {
            // band: dst rows cb*TILE.. (source columns), all `rows` wide.
            let c0 = cb * TILE;
            let cn = band.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let rn = TILE.min(rows - r0);
                for c in 0..cn {
                    let d = &mut band[c * rows + r0..c * rows + r0 + rn];
                    for (r, o) in d.iter_mut().enumerate() {
                        *o = src[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "pirlkit-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let _t = super::profile::time(|| "conv forward".into());
        let _s = super::profile::time(|| format!("conv forward {}", g.describe()));
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(fwd_impl(
                &g,
                contiguous(x, l1, "conv2d: x")?,
                contiguous(w, l2, "conv2d: w")?,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(fwd_impl(
                &g,
                contiguous(x, l1, "conv2d: x")?,
                contiguous(w, l2, "conv2d: w")?,
            )),
            _ => bail!("conv2d: unsupported dtypes (f32 or f64, both the same)"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want_dx = x.track_op();
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, grad_res.contiguous()?);
        let op = Conv2dBackward::new(*self, want_dx);
        let dx = x.apply_op3_no_bwd(&w, &g, &op)?;
        let dw = op.take_dw(&w)?;
        Ok((want_dx.then_some(dx), Some(dw)))
    }
}

/// Gradients of [`Conv2dOp`]: `(x, w, grad_y) -> dX`, with `dW` left in
/// the op ([`Conv2dBackward::take_dw`]). Two buffers rather than one packed
/// tensor: a gradient that is a view into a shared buffer would keep all of
/// it alive until the optimiser step.
pub(super) struct Conv2dBackward {
    op: Conv2dOp,
    /// Whether `x` needs its gradient; without it `dX` is an empty tensor
    /// (the input image of the first conv).
    want_dx: bool,
    dw: Mutex<Option<CpuStorage>>,
}

impl Conv2dBackward {
    pub(super) fn new(op: Conv2dOp, want_dx: bool) -> Self {
        Self {
            op,
            want_dx,
            dw: Mutex::new(None),
        }
    }

    /// `dW` of the last run, shaped like `w`.
    pub(super) fn take_dw(&self, w: &Tensor) -> Result<Tensor> {
        let dw = self.dw.lock().unwrap_or_else(|p| p.into_inner()).take();
        match dw {
            Some(CpuStorage::F32(v)) => Tensor::from_vec(v, w.shape(), w.device()),
            Some(CpuStorage::F64(v)) => Tensor::from_vec(v, w.shape(), w.device()),
            _ => bail!("conv2d backward: no weight gradient"),
        }
    }
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "pirlkit-conv2d-bwd"
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
        let g = Geom::new(l1.dims(), l2.dims(), self.op.stride, self.op.padding)?;
        let _t = super::profile::time(|| "conv backward".into());
        let _s = super::profile::time(|| format!("conv backward {}", g.describe()));
        if l3.dims() != [g.n, g.cout, g.ho, g.wo] {
            bail!(
                "conv2d backward: gradient shape {:?} does not match output {:?}",
                l3.dims(),
                [g.n, g.cout, g.ho, g.wo]
            )
        }
        let (dx, dw) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(dy)) => {
                let (dx, dw) = bwd_impl(
                    &g,
                    contiguous(x, l1, "conv2d: x")?,
                    contiguous(w, l2, "conv2d: w")?,
                    contiguous(dy, l3, "conv2d: grad")?,
                    self.want_dx,
                );
                (CpuStorage::F32(dx), CpuStorage::F32(dw))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(dy)) => {
                let (dx, dw) = bwd_impl(
                    &g,
                    contiguous(x, l1, "conv2d: x")?,
                    contiguous(w, l2, "conv2d: w")?,
                    contiguous(dy, l3, "conv2d: grad")?,
                    self.want_dx,
                );
                (CpuStorage::F64(dx), CpuStorage::F64(dw))
            }
            _ => bail!("conv2d backward: unsupported dtypes"),
        };
        *self.dw.lock().unwrap_or_else(|p| p.into_inner()) = Some(dw);
        let shape = if self.want_dx {
            Shape::from(l1.dims())
        } else {
            Shape::from(0)
        };
        Ok((dx, shape))
    }
}
