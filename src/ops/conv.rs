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
//! The first of these that applies replaces im2col (see [`Path`]):
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
use std::sync::Mutex;

mod dense;
mod groups;
mod im2col;
mod taps;
mod winograd;

use super::contiguous;
use dense::{DENSE_FWD_MIN_BATCH, DENSE_MAX, dense_bwd, dense_fwd};
use groups::{
    col2im_group, for_groups, group_size, im2col_group, map_groups, split_threads, sum_partials,
};
use im2col::table_for;
use taps::{per_tap, taps_bwd, taps_fwd};
use winograd::{wino_bwd, wino_fwd, winograd};

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

/// All sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    s: usize,
    p: usize,
}

impl Geom {
    fn new(xd: &[usize], wd: &[usize], s: usize, p: usize) -> Result<Self> {
        let &[n, cin, h, w] = xd else {
            bail!("conv2d: x must be (N, Cin, H, W), got {xd:?}")
        };
        let &[cout, cin_w, kh, kw] = wd else {
            bail!("conv2d: w must be (Cout, Cin, kh, kw), got {wd:?}")
        };
        if cin != cin_w {
            bail!("conv2d: x has {cin} channels but w expects {cin_w}")
        }
        if s == 0 {
            bail!("conv2d: stride must be >= 1")
        }
        if kh == 0 || kw == 0 {
            bail!("conv2d: empty kernel {kh}x{kw}")
        }
        if h + 2 * p < kh || w + 2 * p < kw {
            bail!(
                "conv2d: kernel {kh}x{kw} larger than padded input {}x{}",
                h + 2 * p,
                w + 2 * p
            )
        }
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (w + 2 * p - kw) / s + 1;
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            ho,
            wo,
            s,
            p,
        })
    }

    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// For profiles: `N x Cin x HxW -> Cout, kh x kw / s`.
    fn describe(&self) -> String {
        format!(
            "{}x{}x{}x{} -> {}, {}x{}/{}",
            self.n, self.cin, self.h, self.w, self.cout, self.kh, self.kw, self.s
        )
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn pix(&self) -> usize {
        self.ho * self.wo
    }
    fn x_len(&self) -> usize {
        self.n * self.cin * self.hw()
    }
    fn w_len(&self) -> usize {
        self.cout * self.k()
    }
    fn y_len(&self) -> usize {
        self.n * self.cout * self.pix()
    }
    /// 1x1, stride 1, no padding: the input plane is the col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }
    /// Small planes: the conv as one dense `(Cout*Ho*Wo) x (Cin*H*W)` matrix
    /// does fewer multiply-adds than im2col (`H*W <= kh*kw`: at 2x2 pixels a
    /// 3x3 kernel with padding 1 has 4 of its 9 taps inside the plane, at 1x1
    /// one), needs no im2col at all (NCHW already is `N x (Cin*H*W)`), and
    /// its matrix stays small (at most [`DENSE_MAX`] values).
    fn dense(&self) -> bool {
        !self.pointwise()
            && self.hw() <= self.kh * self.kw
            && self.cout * self.pix() * self.cin * self.hw() <= DENSE_MAX
    }
    /// Whether the dense matrix (`Cout*Ho*Wo x Cin*H*W`) is small next to
    /// the batch's input (`N x Cin*H*W`): at most 4 times its values. Then
    /// the dense path beats one GEMM per tap on a small plane (PIRL's 576
    /// patches at 2x2, 128 channels: forward 6.6-7.5 against 10.4-10.7 ms,
    /// backward 9.9-12.3 against 20.7-21.1); with few images and many
    /// channels the matrix is 16 to 64 times the input and the per-tap
    /// GEMMs win (64 images at 256 channels: forward 5.7-5.9 against
    /// 11.0-12.5 ms, backward about even).
    fn dense_pays(&self) -> bool {
        self.cout * self.pix() <= 4 * self.n
    }
    /// Stride 1 and an output plane the size of the input (a `2p+1` square
    /// kernel): each tap reads the input plane shifted by a constant.
    fn same(&self) -> bool {
        self.s == 1 && self.ho == self.h && self.wo == self.w && !self.pointwise()
    }
    /// Nothing to compute (some size is zero); outputs are all zeros.
    fn degenerate(&self) -> bool {
        self.n == 0 || self.cout == 0 || self.cin == 0 || self.h == 0 || self.w == 0
    }

    /// Half-open range of output columns `ox` whose input column
    /// `ox*s + kx - p` lies inside `[0, w)`.
    #[inline]
    fn ox_range(&self, kx: usize) -> (usize, usize) {
        super::tap_outputs(kx, self.p, self.s, self.w, self.wo)
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside.
    #[inline]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = oy * self.s + ky;
        (iy >= self.p && iy - self.p < self.h).then(|| iy - self.p)
    }
}

/// Which kernel computes a conv, the first that applies (a function of the
/// shapes only, so results do not depend on the thread count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Stride-1 3x3 convs with padding 1 on planes of 16 pixels and more.
    Winograd,
    /// Other stride-1 "same" convs on planes of 4 to 36 pixels, unless the
    /// dense path applies and pays ([`Geom::dense_pays`]).
    Taps,
    /// Other planes of at most `kh*kw` pixels (the forward only from
    /// [`DENSE_FWD_MIN_BATCH`] images; im2col below).
    Dense,
    Im2col,
}

impl Path {
    fn of(g: &Geom) -> Self {
        if g.degenerate() {
            Self::Im2col
        } else if winograd(g) {
            Self::Winograd
        } else if per_tap(g) && !(g.dense() && g.dense_pays()) {
            Self::Taps
        } else if g.dense() {
            Self::Dense
        } else {
            Self::Im2col
        }
    }
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

fn fwd_impl<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    match Path::of(g) {
        Path::Winograd => return wino_fwd(g, x, w),
        Path::Taps => return taps_fwd(g, x, w),
        Path::Dense if g.n >= DENSE_FWD_MIN_BATCH => return dense_fwd(g, x, w),
        _ => {}
    }
    let mut y = vec![T::ZERO; g.y_len()];
    if g.degenerate() {
        return y;
    }
    let (k, pix, img, yimg) = (g.k(), g.pix(), g.cin * g.hw(), g.cout * g.pix());
    let gs = group_size(g);
    let table = table_for(g);
    let table = &table[..];
    let groups = g.n.div_ceil(gs);
    let (across, inner) = split_threads(groups);
    let per_group = |(col, tmp): &mut (Vec<T>, Vec<T>), (gi, yg): (usize, &mut [T])| {
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
        let dst: &mut [T] = if imgs == 1 {
            yg
        } else {
            tmp.resize(g.cout * cols, T::ZERO);
            tmp
        };
        // SAFETY: w is Cout x K, colp is K x cols, dst is Cout x cols.
        unsafe {
            gemm_strided(
                g.cout,
                cols,
                k,
                dst.as_mut_ptr(),
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
        let scatter = |(j, yj): (usize, &mut [T])| {
            for (co, d) in yj.chunks_exact_mut(pix).enumerate() {
                d.copy_from_slice(&tmp[co * cols + j * pix..co * cols + (j + 1) * pix]);
            }
        };
        if across {
            yg.chunks_mut(yimg).enumerate().for_each(scatter);
        } else {
            yg.par_chunks_mut(yimg).enumerate().for_each(scatter);
        }
    };
    let scratch = || (Vec::new(), Vec::new());
    for_groups(&mut y, gs * yimg, across, scratch, per_group);
    y
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
            let mut dwp = vec![T::ZERO; nw];
            // SAFETY: col is K x cols; dyp is Cout x cols read transposed; dwp
            // holds Cout x K stored as (1, Cout) strides.
            unsafe {
                gemm_strided(
                    g.cout,
                    k,
                    cols,
                    dwp.as_mut_ptr(),
                    (1, g.cout),
                    false,
                    dyp,
                    (cols, 1),
                    col.as_ptr(),
                    (1, cols),
                    inner,
                )
            }
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
