//! Convs on small planes (`H*W <= kh*kw`, see `Geom::dense`) as one dense
//! matrix `D (Cout*Ho*Wo x Cin*H*W)`: the forward is `x * D^T` and the input
//! gradient `dy * D`, straight on NCHW (no im2col, no padding taps); the
//! weight gradient is `dy^T * x` folded back onto the taps.

use rayon::prelude::*;

use super::im2col::im2col_table;
use super::{Elem, Geom, gemm_split};

/// Largest dense conv matrix (values) for [`Geom::dense`]: 64 MiB in f32.
pub(super) const DENSE_MAX: usize = 1 << 24;

/// The kernel tap joining output pixel `po` to input pixel `pi`, if any:
/// `taps[po * H*W + pi]`, `usize::MAX` where none (the inverse of
/// [`im2col_table`]).
fn tap_table(g: &Geom) -> Vec<usize> {
    let (pix, pi_n) = (g.pix(), g.hw());
    let mut t = vec![usize::MAX; pix * pi_n];
    for (tap, row) in im2col_table(g).chunks(pix).enumerate() {
        for (po, &pi) in row.iter().enumerate() {
            if pi != u32::MAX {
                t[po * pi_n + pi as usize] = tap;
            }
        }
    }
    t
}

/// The dense matrix `D (Cout*P x Cin*Pi)` of the conv, row-major:
/// `D[co*P + po][ci*Pi + pi] = w[co][ci][tap]` where a tap joins po to pi,
/// zero elsewhere; written row by row in one pass.
fn dense_matrix<T: Elem>(g: &Geom, w: &[T], table: &[usize]) -> Vec<T> {
    let (po_n, pi_n, taps) = (g.pix(), g.hw(), g.kh * g.kw);
    let row = g.cin * pi_n;
    let mut d = vec![T::ZERO; g.cout * po_n * row];
    d.par_chunks_mut(row).enumerate().for_each(|(r, dr)| {
        let (co, po) = (r / po_n, r % po_n);
        let tp = &table[po * pi_n..(po + 1) * pi_n];
        for (ci, dc) in dr.chunks_mut(pi_n).enumerate() {
            let wc = &w[(co * g.cin + ci) * taps..(co * g.cin + ci + 1) * taps];
            for (o, &t) in dc.iter_mut().zip(tp) {
                if t != usize::MAX {
                    *o = wc[t];
                }
            }
        }
    });
    d
}

/// Batches from which the forward builds the dense matrix: below, writing
/// and packing it costs more than im2col's padding taps save (measured on
/// ResNet-18's 2x2 stage: 32 images slower, 64 faster).
pub(super) const DENSE_FWD_MIN_BATCH: usize = 64;

/// `y (N x Cout*P) = x (N x Cin*Pi) * D^T`, NCHW in and out.
pub(super) fn dense_fwd<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let d = dense_matrix(g, w, &tap_table(g));
    let (m, n, k) = (g.n, g.cout * g.pix(), g.cin * g.hw());
    // SAFETY: x is m x k, d is n x k (read transposed), y is m x n, all
    // written by the GEMMs (not read).
    unsafe {
        crate::ops::written(g.y_len(), |y| {
            gemm_split(
                m,
                n,
                k,
                y.as_mut_ptr().cast::<T>(),
                (n, 1),
                x.as_ptr(),
                (k, 1),
                d.as_ptr(),
                (1, k),
            )
        })
    }
}

/// `dX = dY * D` (`N x Cin*Pi`, skipped unless `want_dx`) and
/// `dD = dY^T * X`, folded into `dW` by summing, for each tap, the entries
/// it feeds (in the order of output pixel, then input pixel).
pub(super) fn dense_bwd<T: Elem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    dy: &[T],
    want_dx: bool,
) -> (Vec<T>, Vec<T>) {
    let (nx, nw) = (if want_dx { g.x_len() } else { 0 }, g.w_len());
    let (po_n, pi_n, taps) = (g.pix(), g.hw(), g.kh * g.kw);
    let (rows, row) = (g.cout * po_n, g.cin * pi_n);
    let table = tap_table(g);
    let mut dw = vec![T::ZERO; nw];
    let dx = if want_dx {
        let d = dense_matrix(g, w, &table);
        // SAFETY: dy is N x rows, d is rows x row, dx is N x row, all
        // written by the GEMMs (not read).
        unsafe {
            crate::ops::written(nx, |dx| {
                gemm_split(
                    g.n,
                    row,
                    rows,
                    dx.as_mut_ptr().cast::<T>(),
                    (row, 1),
                    dy.as_ptr(),
                    (rows, 1),
                    d.as_ptr(),
                    (row, 1),
                )
            })
        }
    } else {
        Vec::new()
    };
    // SAFETY: dy^T is rows x N, x is N x row, dd is rows x row, all written
    // by the GEMMs (not read).
    let dd = unsafe {
        crate::ops::written(rows * row, |dd| {
            gemm_split(
                rows,
                row,
                g.n,
                dd.as_mut_ptr().cast::<T>(),
                (row, 1),
                dy.as_ptr(),
                (1, rows),
                x.as_ptr(),
                (row, 1),
            )
        })
    };
    dw.par_chunks_mut(g.cin * taps)
        .enumerate()
        .for_each(|(co, dwc)| {
            for po in 0..po_n {
                let dr = &dd[(co * po_n + po) * row..(co * po_n + po + 1) * row];
                let tp = &table[po * pi_n..(po + 1) * pi_n];
                for (ci, dc) in dr.chunks(pi_n).enumerate() {
                    let wc = &mut dwc[ci * taps..(ci + 1) * taps];
                    for (&v, &t) in dc.iter().zip(tp) {
                        if t != usize::MAX {
                            wc[t] += v;
                        }
                    }
                }
            }
        });
    (dx, dw)
}
