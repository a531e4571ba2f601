//! Stride-1 "same" convs on small planes as one GEMM per kernel tap over
//! the output pixels that tap reaches, so no multiply-add is spent on the
//! padding: a 3x3 kernel with padding 1 reaches 49 of the 81 (pixel, tap)
//! pairs that im2col multiplies at a 3x3 plane, 16 of 36 at 2x2 (where the
//! dense path does the same 16 but through a matrix four times the size of
//! the weights). ResNet-18's last stage at 64 and 96 px. On larger planes
//! 3x3 kernels take the Winograd path (16 multiplies per 4 outputs); this
//! one also serves other "same" kernels (5x5, 7x7) on 4-36 pixels.
//!
//! Tap `t = (ky, kx)` reads input pixel `(oy + ky - p, ox + kx - p)` for the
//! output pixels of a rectangle `R_t`. Per group of images and per tap:
//! - `B_t (Cin x imgs*|R_t|)`: the input pixels it reads, gathered;
//! - forward: `Y_t = W_t * B_t` (`W_t = w[:, :, ky, kx]`, from a tap-major copy of
//!   the weights), added into the output pixels of `R_t`;
//! - backward: `dW_t = dY_t * B_t^T` written into the tap's weights, and
//!   `dB_t = W_t^T * dY_t` added into the input pixels it read.
//!
//! Every output (input-gradient) value receives its taps in tap order, and
//! the weight-gradient partials of the groups are summed in group order, so
//! the result does not depend on the number of threads.

use rayon::prelude::*;

use super::{Elem, Geom, gemm_strided, group_size, sum_partials};

/// Planes (pixels) taking the per-tap path. Above, the padding taps im2col
/// spends are a small share (16 % at 8x8, 8 % at 16x16). Below 4 pixels the
/// dense path. With the weights copied tap-major first (each tap's GEMM
/// packs a contiguous matrix, not one value in nine of the whole tensor),
/// ResNet-18's 512-channel stage (medians of 4 alternating runs against
/// im2col / dense, batch 32, 2 threads): at 3x3 forward 26.4 against 32.1
/// ms, backward 56.2 against 72.8; at 2x2 forward 12.1 against 14.7,
/// backward 26.8 against 35.0. Without that copy, the 3x3 backward had
/// been slower than im2col's (108-120 ms against 73-87).
const TAPS_HW: std::ops::RangeInclusive<usize> = 4..=36;

/// Whether `g` takes the per-tap path (a function of the shapes only, so
/// the result does not depend on the thread count).
pub(super) fn per_tap(g: &Geom) -> bool {
    g.same() && TAPS_HW.contains(&g.hw()) && !g.degenerate()
}

/// Output rectangle `(oy0, oy1, ox0, ox1)` (half-open) reached by tap
/// `(ky, kx)`, and the shift `(dy, dx)` from output to input pixel.
fn rect(g: &Geom, ky: usize, kx: usize) -> ((usize, usize, usize, usize), (isize, isize)) {
    let (oy0, oy1) = crate::ops::tap_outputs(ky, g.p, 1, g.h, g.h);
    let (ox0, ox1) = crate::ops::tap_outputs(kx, g.p, 1, g.w, g.w);
    let shift = (ky as isize - g.p as isize, kx as isize - g.p as isize);
    ((oy0, oy1, ox0, ox1), shift)
}

/// The taps with a non-empty rectangle: `(tap index, rectangle, shift)`.
type Tap = (usize, (usize, usize, usize, usize), (isize, isize));

fn taps(g: &Geom) -> Vec<Tap> {
    let mut out = Vec::new();
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let (r, d) = rect(g, ky, kx);
            if r.1 > r.0 && r.3 > r.2 {
                out.push((ky * g.kw + kx, r, d));
            }
        }
    }
    out
}

/// The output pixels of a tap's rectangle (row-major) and the input pixels
/// they read.
fn pixels(g: &Geom, &(_, (oy0, oy1, ox0, ox1), (dy, dx)): &Tap) -> (Vec<usize>, Vec<usize>) {
    let mut v = Vec::with_capacity((oy1 - oy0) * (ox1 - ox0));
    for oy in oy0..oy1 {
        for ox in ox0..ox1 {
            let iy = (oy as isize + dy) as usize;
            let ix = (ox as isize + dx) as usize;
            v.push((oy * g.w + ox, iy * g.w + ix));
        }
    }
    v.into_iter().unzip()
}

/// `rows x (imgs*P)` gathered from `src` (`imgs` images of `rows` planes of
/// `hw`): `out[r][j*P + q] = src[j][r][idx[q]]`.
fn gather<T: Elem>(src: &[T], rows: usize, hw: usize, idx: &[usize], out: &mut Vec<T>) {
    let p = idx.len();
    let imgs = src.len() / (rows * hw);
    out.resize(rows * imgs * p, T::ZERO);
    let row = |(r, o): (usize, &mut [T])| {
        for (j, oj) in o.chunks_exact_mut(p).enumerate() {
            let plane = &src[(j * rows + r) * hw..(j * rows + r + 1) * hw];
            for (d, &i) in oj.iter_mut().zip(idx) {
                *d = plane[i];
            }
        }
    };
    out.chunks_mut(imgs * p).enumerate().for_each(row);
}

/// The kernels tap by tap: `wt[t][co][ci] = w[co][ci][t]`, so that each
/// tap's GEMM reads (packs) a contiguous matrix instead of one value in
/// every `kh*kw`, spread over the whole weight tensor.
fn tap_major<T: Elem>(g: &Geom, w: &[T]) -> Vec<T> {
    let nt = g.kh * g.kw;
    let fill = |wt: &mut [std::mem::MaybeUninit<T>]| {
        let wp = super::groups::SendPtr(wt.as_mut_ptr());
        // By output channel: its kernels (Cin*T values) are read once, while
        // they are in cache, into its row of every tap.
        w.par_chunks(g.cin * nt).enumerate().for_each(|(co, src)| {
            let wp = wp;
            for t in 0..nt {
                // SAFETY: row (t, co) of wt, Cin slots, written by this task
                // only.
                let d = unsafe {
                    std::slice::from_raw_parts_mut(wp.0.add((t * g.cout + co) * g.cin), g.cin)
                };
                for (v, k) in d.iter_mut().zip(src.chunks_exact(nt)) {
                    v.write(k[t]);
                }
            }
        });
    };
    // SAFETY: the rows (t, co) for all t < T, co < Cout cover wt, each
    // written in full.
    unsafe { crate::ops::written(g.w_len(), fill) }
}

/// `dw[co][ci][t] = dwt[t][co][ci]`, the inverse of [`tap_major`].
fn from_tap_major<T: Elem>(g: &Geom, dwt: &[T]) -> Vec<T> {
    let nt = g.kh * g.kw;
    let fill = |dw: &mut [std::mem::MaybeUninit<T>]| {
        dw.par_chunks_mut(g.cin * nt)
            .enumerate()
            .for_each(|(co, d)| {
                for t in 0..nt {
                    let src = &dwt[(t * g.cout + co) * g.cin..(t * g.cout + co + 1) * g.cin];
                    for (ci, &v) in src.iter().enumerate() {
                        d[ci * nt + t].write(v);
                    }
                }
            });
    };
    // SAFETY: every (co, ci, t) is written.
    unsafe { crate::ops::written(g.w_len(), fill) }
}

/// Adds each tap's `rows x (imgs*P)` result into `dst` (`imgs` images of
/// `rows` planes of `hw`), the inverse of [`gather`]:
/// `dst[j][r][idx[q]] += m[r][j*P + q]`. Per image (across the threads),
/// the taps in tap order, so every value receives them in tap order.
fn scatter_taps<T: Elem>(per_tap: &[(Vec<T>, &[usize])], rows: usize, hw: usize, dst: &mut [T]) {
    let imgs = dst.len() / (rows * hw).max(1);
    dst.par_chunks_mut(rows * hw)
        .enumerate()
        .for_each(|(j, d)| {
            for (m, idx) in per_tap {
                let p = idx.len();
                for (r, plane) in d.chunks_exact_mut(hw).enumerate() {
                    let src = &m[r * imgs * p + j * p..r * imgs * p + (j + 1) * p];
                    for (&v, &i) in src.iter().zip(idx.iter()) {
                        plane[i] += v;
                    }
                }
            }
        });
}

/// Per group of images (one after the other), the taps' gathers and GEMMs
/// run across the threads, a tap per task, each GEMM on one thread; their
/// results are then added in tap order. On these small planes a group is
/// often the whole batch (64 images at 2x2 are one group of 256 columns),
/// and a tap's GEMM (128 x 128 x 64-256 there) is too small for gemm's
/// own threads, so one core did all the work; and splitting by groups left
/// the two threads unequal (64 images at 3x3: groups of 57 and 7). Each
/// tap's GEMM, and the order in which a value receives the taps, are the
/// same as with one thread, so the result is unchanged.
pub(super) fn taps_fwd<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; g.y_len()];
    let hw = g.hw();
    let (img, yimg) = (g.cin * hw, g.cout * hw);
    let gs = group_size(g);
    let taps = taps(g);
    let pix: Vec<(Vec<usize>, Vec<usize>)> = taps.iter().map(|t| pixels(g, t)).collect();
    let wt = tap_major(g, w);
    let wt = &wt[..];
    for (gi, yg) in y.chunks_mut(gs * yimg).enumerate() {
        let imgs = yg.len() / yimg;
        let xg = &x[gi * gs * img..(gi * gs + imgs) * img];
        let per_tap: Vec<(Vec<T>, &[usize])> = taps
            .par_iter()
            .zip(&pix)
            .map(|(&(t, _, _), (outs, ins))| {
                let cols = imgs * outs.len();
                let mut b = Vec::new();
                gather(xg, g.cin, hw, ins, &mut b);
                // SAFETY: wt's tap t is Cout x Cin; b is Cin x cols; yt is
                // Cout x cols, all written by the GEMM (not read).
                let yt = unsafe {
                    crate::ops::written(g.cout * cols, |yt| {
                        gemm_strided(
                            g.cout,
                            cols,
                            g.cin,
                            yt.as_mut_ptr().cast::<T>(),
                            (cols, 1),
                            false,
                            wt[t * g.cout * g.cin..].as_ptr(),
                            (g.cin, 1),
                            b.as_ptr(),
                            (cols, 1),
                            1,
                        )
                    })
                };
                (yt, &outs[..])
            })
            .collect();
        scatter_taps(&per_tap, g.cout, hw, yg);
    }
    y
}

pub(super) fn taps_bwd<T: Elem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    dy: &[T],
    want_dx: bool,
) -> (Vec<T>, Vec<T>) {
    let (hw, nt) = (g.hw(), g.kh * g.kw);
    let (img, yimg) = (g.cin * hw, g.cout * hw);
    let (nx, nw) = (if want_dx { g.x_len() } else { 0 }, g.w_len());
    let mut dx = vec![T::ZERO; nx];
    let gs = group_size(g);
    let groups = g.n.div_ceil(gs);
    let taps = taps(g);
    let pix: Vec<(Vec<usize>, Vec<usize>)> = taps.iter().map(|t| pixels(g, t)).collect();
    let wt = if want_dx { tap_major(g, w) } else { Vec::new() };
    let wt = &wt[..];
    let cc = g.cout * g.cin;
    let per_group = |(gi, dxg): (usize, &mut [T])| -> Vec<T> {
        let i0 = gi * gs;
        let imgs = gs.min(g.n - i0);
        let xg = &x[i0 * img..(i0 + imgs) * img];
        let dyg = &dy[i0 * yimg..(i0 + imgs) * yimg];
        let fill = |dwp: &mut [std::mem::MaybeUninit<T>]| {
            // Taps that reach no pixel have a zero gradient.
            for t in 0..nt {
                if !taps.iter().any(|&(u, _, _)| u == t) {
                    dwp[t * cc..(t + 1) * cc].fill(std::mem::MaybeUninit::new(T::ZERO));
                }
            }
            let dwp = super::groups::SendPtr(dwp.as_mut_ptr().cast::<T>());
            let per_tap: Vec<(Vec<T>, &[usize])> = taps
                .par_iter()
                .zip(&pix)
                .map(|(&(t, _, _), (outs, ins))| {
                    let dwp = dwp;
                    let cols = imgs * outs.len();
                    let (mut b, mut dyt) = (Vec::new(), Vec::new());
                    gather(xg, g.cin, hw, ins, &mut b);
                    gather(dyg, g.cout, hw, outs, &mut dyt);
                    // dW_t (Cout x Cin) = dY_t * B_t^T, into the tap's block
                    // of the tap-major partial.
                    // SAFETY: dyt is Cout x cols; b is Cin x cols read
                    // transposed; the tap's block of dwp (Cout x Cin) is
                    // written by this task only, not read.
                    unsafe {
                        gemm_strided(
                            g.cout,
                            g.cin,
                            cols,
                            dwp.0.add(t * cc),
                            (g.cin, 1),
                            false,
                            dyt.as_ptr(),
                            (cols, 1),
                            b.as_ptr(),
                            (1, cols),
                            1,
                        )
                    }
                    if !want_dx {
                        return (Vec::new(), &ins[..]);
                    }
                    // dB_t (Cin x cols) = W_t^T * dY_t.
                    // SAFETY: wt's tap t read as Cin x Cout (transposed);
                    // dyt is Cout x cols; db is Cin x cols, all written by
                    // the GEMM (not read).
                    let db = unsafe {
                        crate::ops::written(g.cin * cols, |db| {
                            gemm_strided(
                                g.cin,
                                cols,
                                g.cout,
                                db.as_mut_ptr().cast::<T>(),
                                (cols, 1),
                                false,
                                wt[t * g.cout * g.cin..].as_ptr(),
                                (1, g.cin),
                                dyt.as_ptr(),
                                (cols, 1),
                                1,
                            )
                        })
                    };
                    (db, &ins[..])
                })
                .collect();
            if want_dx {
                scatter_taps(&per_tap, g.cin, hw, dxg);
            }
        };
        // SAFETY: every tap's block is zeroed above or written by its dW
        // GEMM.
        unsafe { crate::ops::written(nw, fill) }
    };
    let partials: Vec<Vec<T>> = if dx.is_empty() {
        (0..groups).map(|gi| per_group((gi, &mut []))).collect()
    } else {
        dx.chunks_mut(gs * img).enumerate().map(per_group).collect()
    };
    let dw = match sum_partials(partials) {
        Some(dwt) => from_tap_major(g, &dwt),
        None => vec![T::ZERO; nw],
    };
    (dx, dw)
}
