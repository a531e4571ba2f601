//! Stride-1 3x3 convs with padding 1 by Winograd's minimal filtering,
//! F(2x2, 3x3): each 2x2 block of outputs (a tile) costs 16 multiplies per
//! (input, output) channel pair instead of 36, so the GEMMs do 2.25x fewer
//! multiply-adds than im2col's (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! Per tile `Y = A^T [(G g G^T) . (B^T d B)] A` (`.` elementwise, `d` the
//! 4x4 input patch around the tile, `g` the 3x3 kernel), with
//! ```text
//! B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1  1  1  0]
//!       [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [ 0    0    1 ]
//! ```
//! The 16 points of the transformed tile are independent, so the sum over
//! input channels is one GEMM per point: `M_xi (Cout x tiles) = U_xi (Cout
//! x Cin) * V_xi (Cin x tiles)`. The backward reuses the same algebra:
//! - the input gradient is the same-size conv of `dY` with the kernels
//!   rotated by 180 degrees and their channels swapped, whose transformed
//!   kernels are the forward's with their points permuted, read
//!   transposed (`FLIP`);
//! - the weight gradient, differentiating `Y` above with respect to `g`, is
//!   `dW = G^T [sum over tiles of (A dY A^T) . (B^T d B)] G`: per point one
//!   GEMM `dY_xi (Cout x tiles) * V_xi^T`, summed over tiles before the one
//!   inverse transform per kernel.
//!
//! The transforms only add, subtract and halve. Measured against an f64
//! conv (4 images of unit normals, He-scaled kernels), the largest error
//! relative to the largest output was 2.9e-7 at 64 channels on 24x24 and
//! 9.5e-7 at 512 channels on 6x6, against 6.8e-7 and 5.2e-7 for candle's
//! own f32 conv.
//!
//! The tile transforms (submodule `tiles`) run over a channel's planes of a
//! whole group of images at once (even and odd columns split apart so that
//! every pass is a long vector operation, compiled for AVX2 where the CPU
//! has it): 0.2-0.9 ns
//! per transformed value from 24x24 to 6x6 planes on the 2-core machine
//! this was measured on, about a fifth of the conv's time at 96 px.
//!
//! Images are processed in equal groups of at most about [`GROUP_TILES`]
//! tiles (a function of the shapes only): across the threads, each group
//! with its own scratch, or, with fewer groups than threads, one group at a
//! time with its transforms split by channels and its 16 GEMMs across the
//! threads. Weight-gradient partials are summed in group order, so results
//! are bit-identical whatever the number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::groups::SendPtr;

mod tiles;
use super::{Elem, Geom, for_groups, gemm_strided, map_groups, split_threads, sum_partials};
use tiles::{Points, Tr, inverse, transform};

/// Points of a transformed tile (4x4).
const PTS: usize = 16;

/// Distance between the 16 matrices of a transformed buffer holding `n`
/// values each: `n` rounded up to a multiple of 16, plus 16, so that the
/// 16 streams a tile reads or writes start in different cache sets (at
/// 64 channels x 288 tiles, `n` is 18 x 4 KiB and the 16 streams would
/// evict each other from the same sets of the 8-way L1).
fn spaced(n: usize) -> usize {
    n.next_multiple_of(16) + 16
}

/// Tiles per group of images (the GEMMs' column count). A group's scratch
/// is `16 * (Cin + Cout) * tiles` values: 1.2 MiB in f32 at 64 channels and
/// 256 tiles.
const GROUP_TILES: usize = 256;

/// Smallest plane (pixels) taking this path. Below, at 3x3, the four tiles
/// cover 16 outputs of which 9 are in the plane (64 multiplies per channel
/// pair against im2col's 81), and at 2x2 one tile (16, as many as the dense
/// path): on ResNet-18's 512-channel stage, where a batch of 32 has 32-128
/// tiles, transforming the 512x512 kernels and packing them for 16 narrow
/// GEMMs cost more than that saved (2x2: forward 13.7 against 11.9 ms,
/// backward 29.8 against 26.3; 3x3: a wash).
const MIN_HW: usize = 16;

/// Whether `g` takes this path (a function of the shapes only).
pub(super) fn winograd(g: &Geom) -> bool {
    g.same() && g.kh == 3 && g.kw == 3 && g.p == 1 && !g.degenerate() && g.hw() >= MIN_HW
}

/// Tile rows, tile columns.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// Images per group: the largest divisor of the batch that keeps a group
/// within about [`GROUP_TILES`] tiles, so that all groups are the same size
/// (5 groups of 7, 7, 7, 7, 4 images would leave one of two threads idle
/// for a fifth of the time).
fn group_size(g: &Geom) -> usize {
    let (th, tw) = tiles(g);
    let most = (GROUP_TILES / (th * tw)).max(1);
    (1..=most.min(g.n))
        .rev()
        .find(|&d| g.n.is_multiple_of(d))
        .unwrap_or(1)
}

/// `U_xi = (G g G^T)_xi` for every kernel, as 16 matrices `Cout x Cin`
/// (`[xi][co][ci]`) from `w (Cout x Cin x 3 x 3)`. The input gradient reads
/// the same matrices (see [`FLIP`]).
fn filter_transform<T: Elem>(g: &Geom, w: &[T]) -> Vec<T> {
    let (rows, cols) = (g.cout, g.cin);
    let (n, plane) = (rows * cols, spaced(rows * cols));
    let fill = |u: &mut [MaybeUninit<T>]| {
        // The gaps between the 16 matrices, read by nothing, zeroed.
        for xi in 0..PTS {
            for v in &mut u[xi * plane + n..(xi + 1) * plane] {
                v.write(T::ZERO);
            }
        }
        let up = SendPtr(u.as_mut_ptr());
        (0..rows).into_par_iter().for_each(|r| {
            let up = up;
            for c in 0..cols {
                let kk = &w[(r * cols + c) * 9..(r * cols + c + 1) * 9];
                // G along the kernel's columns, then along its rows.
                let mut t = [T::ZERO; 12]; // 4 x 3
                for j in 0..3 {
                    let g4 = g_col(kk[j], kk[3 + j], kk[6 + j]);
                    for (a, v) in g4.into_iter().enumerate() {
                        t[a * 3 + j] = v;
                    }
                }
                for a in 0..4 {
                    let g4 = g_col(t[a * 3], t[a * 3 + 1], t[a * 3 + 2]);
                    for (b, v) in g4.into_iter().enumerate() {
                        // SAFETY: (r, c) is this task's own row; the index
                        // is inside the 16 spaced rows x cols matrices.
                        unsafe { (*up.0.add((a * 4 + b) * plane + r * cols + c)).write(v) };
                    }
                }
            }
        });
    };
    // SAFETY: every (xi, r, c) and the gaps are written.
    unsafe { crate::ops::written(PTS * plane, fill) }
}

/// The input gradient's kernels, each rotated by 180 degrees with its
/// channels swapped, need no transform of their own: `G` of a reversed
/// column is `G`'s output reversed in the order `(3, 1, 2, 0)`, to the bit
/// (`g0 + g2` and `g2 + g0` are the same sum), so point `xi = 4a + b` of a
/// rotated kernel is point `FLIP[xi] = 4 P[a] + P[b]` of the kernel itself,
/// `P = (3, 1, 2, 0)`, and its `Cin x Cout` matrix is that point's `Cout x
/// Cin` one read transposed.
const FLIP: [usize; PTS] = {
    const P: [usize; 4] = [3, 1, 2, 0];
    let mut f = [0; PTS];
    let mut xi = 0;
    while xi < PTS {
        f[xi] = 4 * P[xi / 4] + P[xi % 4];
        xi += 1;
    }
    f
};

/// The offsets of 16 matrices `stride` apart, in point order.
fn in_order(stride: usize) -> [usize; PTS] {
    std::array::from_fn(|xi| xi * stride)
}

/// `G (g0, g1, g2)`: `(g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2)`.
#[inline(always)]
fn g_col<T: Elem>(g0: T, g1: T, g2: T) -> [T; 4] {
    let s = g0 + g2;
    [g0, (s + g1) * T::HALF, (s - g1) * T::HALF, g2]
}

/// `G^T (x0, x1, x2, x3)`: `(x0 + (x1+x2)/2, (x1-x2)/2, (x1+x2)/2 + x3)`.
#[inline(always)]
fn gt_col<T: Elem>(x: [T; 4]) -> [T; 3] {
    let s = (x[1] + x[2]) * T::HALF;
    [x[0] + s, (x[1] - x[2]) * T::HALF, s + x[3]]
}

/// `dW (Cout x Cin x 3 x 3) = G^T X G` of each kernel's summed `X`
/// (`[xi][Cout][Cin]`).
fn filter_inverse<T: Elem>(g: &Geom, x: &[T]) -> Vec<T> {
    let plane = spaced(g.cout * g.cin);
    let fill = |dw: &mut [MaybeUninit<T>]| {
        dw.par_chunks_mut(g.cin * 9)
            .enumerate()
            .for_each(|(co, row)| {
                for (ci, k) in row.chunks_exact_mut(9).enumerate() {
                    let at = |xi: usize| x[xi * plane + co * g.cin + ci];
                    let mut t = [T::ZERO; 12]; // 3 x 4
                    for b in 0..4 {
                        let v = gt_col([at(b), at(4 + b), at(8 + b), at(12 + b)]);
                        for (i, v) in v.into_iter().enumerate() {
                            t[i * 4 + b] = v;
                        }
                    }
                    for i in 0..3 {
                        let v = gt_col([t[i * 4], t[i * 4 + 1], t[i * 4 + 2], t[i * 4 + 3]]);
                        for (d, v) in k[i * 3..i * 3 + 3].iter_mut().zip(v) {
                            d.write(v);
                        }
                    }
                }
            });
    };
    // SAFETY: every kernel's 9 values are written.
    unsafe { crate::ops::written(g.w_len(), fill) }
}

/// The 16 GEMMs `dst_xi (m x n) = lhs_xi (m x k) * rhs_xi (k x n)`, where
/// `lhs_xi` starts at offset `lo[xi]`, `rhs_xi` at `xi * stride`, each with
/// the given (row, column) strides, and `dst_xi` (row-major) at
/// `xi * dst.len() / 16`; across the threads when `par` (each GEMM on one
/// thread, so the
/// result does not depend on the thread count).
#[allow(clippy::too_many_arguments)]
fn gemms<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<T>],
    lhs: &[T],
    (lo, lrs, lcs): ([usize; PTS], usize, usize),
    rhs: &[T],
    (rs, rrs, rcs): (usize, usize, usize),
    par: bool,
) {
    let ds = dst.len() / PTS;
    assert!(ds >= m * n, "winograd: GEMM destination too small");
    let one = |(xi, d): (usize, &mut [MaybeUninit<T>])| {
        // SAFETY: operand xi lies inside lhs / rhs (callers size them as
        // 16 strided matrices); d holds the m x n row-major result, which
        // gemm writes without reading.
        unsafe {
            gemm_strided(
                m,
                n,
                k,
                d.as_mut_ptr().cast::<T>(),
                (n, 1),
                false,
                lhs[lo[xi]..].as_ptr(),
                (lrs, lcs),
                rhs[xi * rs..].as_ptr(),
                (rrs, rcs),
                1,
            )
        }
    };
    if par {
        dst.par_chunks_mut(ds).enumerate().for_each(one);
    } else {
        dst.chunks_mut(ds).enumerate().for_each(one);
    }
}

/// `v` as slots to overwrite (a `T` is a valid `MaybeUninit<T>`).
fn slots<T>(v: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same layout; writing a T into a slot leaves a valid T.
    unsafe { &mut *(v as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// The forward: `y (N x Cout x H x W)`.
pub(super) fn wino_fwd<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let u = filter_transform(g, w);
    // SAFETY: the inverse transform writes every output pixel.
    unsafe { crate::ops::written(g.y_len(), |y| conv_groups(g, x, &u, false, y)) }
}

/// `out = conv(src, U)` in groups, both `g.h x g.w` planes; `u` is
/// [`filter_transform`]'s `16 x Cout x Cin`. The forward (`src` has `Cin`
/// channels, `out` `Cout`), or with `flip` the input gradient (`src` is
/// `dY`, `out` `dX`: the kernels rotated, read through [`FLIP`]).
fn conv_groups<T: Elem>(g: &Geom, src: &[T], u: &[T], flip: bool, out: &mut [MaybeUninit<T>]) {
    let (cin, cout) = if flip {
        (g.cout, g.cin)
    } else {
        (g.cin, g.cout)
    };
    let us = spaced(g.cout * g.cin);
    // Where the GEMMs read point xi's cout x cin matrix, and its (row,
    // column) strides: the conv's own, or with flip point FLIP[xi]'s
    // Cout x Cin matrix read as its transpose.
    let lhs = if flip {
        (FLIP.map(|p| p * us), 1, g.cin)
    } else {
        (in_order(us), g.cin, 1)
    };
    let (th, tw) = tiles(g);
    let (hw, tp) = (g.hw(), th * tw);
    let gs = group_size(g);
    let (across, _) = split_threads(g.n.div_ceil(gs));
    let per_group = |(v, m): &mut (Vec<T>, Vec<T>), (gi, og): (usize, &mut [MaybeUninit<T>])| {
        let imgs = og.len() / (cout * hw);
        let tiles = imgs * tp;
        let i0 = gi * gs;
        let (pin, pout) = (Points { chans: cin, tiles }, Points { chans: cout, tiles });
        v.resize(pin.len(), T::ZERO);
        let xs = &src[i0 * cin * hw..(i0 + imgs) * cin * hw];
        transform(Tr::Input, xs, imgs, (g.h, g.w), v, pin, !across);
        m.resize(pout.len(), T::ZERO);
        gemms(
            (cout, tiles, cin),
            slots(m),
            u,
            lhs,
            v,
            (pin.stride(), tiles, 1),
            !across,
        );
        inverse(m, pout, (g.h, g.w), og, !across);
    };
    for_groups(
        out,
        gs * cout * hw,
        across,
        || (Vec::new(), Vec::new()),
        per_group,
    );
}

/// Both gradients: `dX` (empty unless `want_dx`) and `dW`.
pub(super) fn wino_bwd<T: Elem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    dy: &[T],
    want_dx: bool,
) -> (Vec<T>, Vec<T>) {
    let (th, tw) = tiles(g);
    let (hw, tp) = (g.hw(), th * tw);
    let gs = group_size(g);
    let groups = g.n.div_ceil(gs);
    let (across, _) = split_threads(groups);
    let mut dx = Vec::new();
    if want_dx {
        // The input gradient: a same-size conv of dY with the rotated,
        // channel-swapped kernels.
        let u = filter_transform(g, w);
        // SAFETY: the inverse transform writes every input pixel.
        dx = unsafe { crate::ops::written(g.x_len(), |d| conv_groups(g, dy, &u, true, d)) };
    }
    let per_group = |(v, e): &mut (Vec<T>, Vec<T>), (gi, _): (usize, &mut [T])| -> Vec<T> {
        let i0 = gi * gs;
        let imgs = gs.min(g.n - i0);
        let tiles = imgs * tp;
        let (pin, pout) = (
            Points {
                chans: g.cin,
                tiles,
            },
            Points {
                chans: g.cout,
                tiles,
            },
        );
        v.resize(pin.len(), T::ZERO);
        let xs = &x[i0 * g.cin * hw..(i0 + imgs) * g.cin * hw];
        transform(Tr::Input, xs, imgs, (g.h, g.w), v, pin, !across);
        e.resize(pout.len(), T::ZERO);
        let ds = &dy[i0 * g.cout * hw..(i0 + imgs) * g.cout * hw];
        transform(Tr::OutGrad, ds, imgs, (g.h, g.w), e, pout, !across);
        // X_xi (Cout x Cin) = E_xi (Cout x tiles) * V_xi^T (tiles x Cin).
        let (n, sp) = (g.cout * g.cin, spaced(g.cout * g.cin));
        let fill = |part: &mut [MaybeUninit<T>]| {
            // The gaps between the 16 matrices (summed, never read).
            for xi in 0..PTS {
                part[xi * sp + n..(xi + 1) * sp].fill(MaybeUninit::new(T::ZERO));
            }
            gemms(
                (g.cout, g.cin, tiles),
                part,
                e,
                (in_order(pout.stride()), tiles, 1),
                v,
                (pin.stride(), 1, tiles),
                !across,
            );
        };
        // SAFETY: the 16 GEMMs write their Cout x Cin matrices, the gaps
        // are zeroed.
        unsafe { crate::ops::written(PTS * sp, fill) }
    };
    let scratch = || (Vec::new(), Vec::new());
    let partials = map_groups(&mut [], 0, groups, across, scratch, per_group);
    let dw = match sum_partials(partials) {
        Some(acc) => filter_inverse(g, &acc),
        None => vec![T::ZERO; g.w_len()],
    };
    (dx, dw)
}
