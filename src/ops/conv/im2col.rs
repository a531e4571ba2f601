//! im2col and col2im of one image into / out of a group's column matrix
//! (`K` rows, `Ho*Wo` columns per image): for stride-1 "same" convs as one
//! shifted copy of the plane per (channel, tap); otherwise by output-row
//! copies, or through a per-tap index table where output rows are narrow.

use super::{Elem, Geom};

/// Output rows narrower than this take the table-driven im2col / col2im:
/// per kernel tap, the input pixel of every output pixel, so an image's
/// columns are one gather per (channel, tap) instead of a short copy (and
/// its call) per output row. Measured (`bench --profile`, ResNet-18 on 2
/// cores): the 7x7 and 4x4 planes of 28 px patches and the 3x3 of 96 px
/// images run their convs 1.2-1.9x faster this way; at 12x12 rows are
/// already as fast.
const TABLE_BELOW_WO: usize = 8;

/// `table[tap * Ho*Wo + p]`: the index in the input plane that tap reads for
/// output pixel `p`, or `u32::MAX` in the padding.
pub(super) fn im2col_table(g: &Geom) -> Vec<u32> {
    let pix = g.pix();
    let mut t = vec![u32::MAX; g.kh * g.kw * pix];
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &mut t[(ky * g.kw + kx) * pix..(ky * g.kw + kx + 1) * pix];
            for oy in 0..g.ho {
                let Some(iy) = g.in_row(oy, ky) else { continue };
                for ox in 0..g.wo {
                    let ix = ox * g.s + kx;
                    if ix >= g.p && ix - g.p < g.w {
                        row[oy * g.wo + ox] = (iy * g.w + ix - g.p) as u32;
                    }
                }
            }
        }
    }
    t
}

/// [`im2col`] through [`im2col_table`].
fn im2col_tab<T: Elem>(g: &Geom, table: &[u32], x: &[T], col: &mut [T], stride: usize, off: usize) {
    let (pix, hw, taps) = (g.pix(), g.hw(), g.kh * g.kw);
    for (ci, plane) in x.chunks(hw).enumerate().take(g.cin) {
        for (t, idx) in table.chunks(pix).enumerate() {
            let r = (ci * taps + t) * stride + off;
            for (d, &i) in col[r..r + pix].iter_mut().zip(idx) {
                *d = plane.get(i as usize).copied().unwrap_or(T::ZERO);
            }
        }
    }
}

/// [`col2im_add`] through [`im2col_table`].
fn col2im_tab<T: Elem>(
    g: &Geom,
    table: &[u32],
    col: &[T],
    stride: usize,
    off: usize,
    dx: &mut [T],
) {
    let (pix, hw, taps) = (g.pix(), g.hw(), g.kh * g.kw);
    for (ci, plane) in dx.chunks_mut(hw).enumerate().take(g.cin) {
        for (t, idx) in table.chunks(pix).enumerate() {
            let r = (ci * taps + t) * stride + off;
            for (&v, &i) in col[r..r + pix].iter().zip(idx) {
                if let Some(d) = plane.get_mut(i as usize) {
                    *d += v;
                }
            }
        }
    }
}

/// im2col of one image (see [`im2col_rows`]), by shifted planes, by rows or
/// through `table` (from [`im2col_table`] when `g.wo < TABLE_BELOW_WO`, else
/// empty). `x` may hold a run of the image's channels, and `col` then starts
/// at the first of their rows.
pub(super) fn im2col<T: Elem>(
    g: &Geom,
    table: &[u32],
    x: &[T],
    col: &mut [T],
    stride: usize,
    off: usize,
) {
    if g.same() {
        im2col_same(g, x, col, stride, off)
    } else if table.is_empty() {
        im2col_rows(g, x, col, stride, off)
    } else {
        im2col_tab(g, table, x, col, stride, off)
    }
}

/// col2im of one image (see [`col2im_rows`]), by shifted planes, by rows
/// or through `table`. `col` is scratch: the shifted path zeroes the values
/// of taps that fall in the padding before it adds.
pub(super) fn col2im_add<T: Elem>(
    g: &Geom,
    table: &[u32],
    col: &mut [T],
    stride: usize,
    off: usize,
    dx: &mut [T],
) {
    if g.same() {
        col2im_same(g, col, stride, off, dx)
    } else if table.is_empty() {
        col2im_rows(g, col, stride, off, dx)
    } else {
        col2im_tab(g, table, col, stride, off, dx)
    }
}

/// The im2col table for `g`, or none where rows are copied.
pub(super) fn table_for(g: &Geom) -> Vec<u32> {
    if g.wo < TABLE_BELOW_WO && !g.pointwise() && !g.same() {
        im2col_table(g)
    } else {
        Vec::new()
    }
}

/// im2col of one image `x` (`Cin*H*W`) into columns `off..off + Ho*Wo` of
/// `col` (`K` rows of `stride` values each, row-major).
fn im2col_rows<T: Elem>(g: &Geom, x: &[T], col: &mut [T], stride: usize, off: usize) {
    let (pix, hw) = (g.pix(), g.hw());
    // Strided convs read every s-th input column: each input row is split
    // into its s phases once (columns q, q+s, q+2s, ... side by side), so
    // that every output row's values are one contiguous copy instead of a
    // strided gather per value. The same values land in the same places.
    let mut phased = if g.s > 1 && !g.pointwise() {
        vec![T::ZERO; hw]
    } else {
        Vec::new()
    };
    for ci in 0..x.len() / hw {
        let plane = &x[ci * hw..(ci + 1) * hw];
        if !phased.is_empty() {
            split_phases(plane, g.w, g.s, &mut phased);
        }
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = ((ci * g.kh + ky) * g.kw + kx) * stride + off;
                let row = &mut col[row..row + pix];
                if g.pointwise() {
                    row.copy_from_slice(plane);
                    continue;
                }
                let (lo, hi) = g.ox_range(kx);
                for oy in 0..g.ho {
                    let r = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let Some(iy) = g.in_row(oy, ky) else {
                        r.fill(T::ZERO);
                        continue;
                    };
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    r[..lo].fill(T::ZERO);
                    r[hi..].fill(T::ZERO);
                    if lo == hi {
                        continue;
                    }
                    let ix0 = lo * g.s + kx - g.p;
                    if g.s == 1 {
                        r[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        // Input column ix0 + j*s is entry ix0/s + j of
                        // phase ix0 % s of the split row.
                        let q0 = iy * g.w + phase_start(g.w, g.s, ix0 % g.s) + ix0 / g.s;
                        r[lo..hi].copy_from_slice(&phased[q0..q0 + (hi - lo)]);
                    }
                }
            }
        }
    }
}

/// Where phase `q` (input columns `q, q+s, ...`) starts in a row split by
/// [`split_phases`]: after the `ceil((w - q') / s)` columns of each phase
/// `q' < q`.
#[inline]
fn phase_start(w: usize, s: usize, q: usize) -> usize {
    (0..q).map(|p| (w - p.min(w)).div_ceil(s)).sum()
}

/// Each row of `plane` (`w` values) rewritten as its `s` phases side by
/// side: columns `0, s, 2s, ...`, then `1, 1+s, ...`, and so on.
fn split_phases<T: Elem>(plane: &[T], w: usize, s: usize, out: &mut [T]) {
    for (src, dst) in plane.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        let mut o = 0;
        for q in 0..s.min(w) {
            for &v in src[q..].iter().step_by(s) {
                dst[o] = v;
                o += 1;
            }
        }
    }
}

/// col2im: accumulates columns `off..off + Ho*Wo` of `col` (`K` rows of
/// `stride` values) into one image `dx` (`Cin*H*W`).
fn col2im_rows<T: Elem>(g: &Geom, col: &[T], stride: usize, off: usize, dx: &mut [T]) {
    let (pix, hw) = (g.pix(), g.hw());
    for ci in 0..dx.len() / hw {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = ((ci * g.kh + ky) * g.kw + kx) * stride + off;
                let row = &col[row..row + pix];
                if g.pointwise() {
                    for (d, &v) in plane.iter_mut().zip(row) {
                        *d += v;
                    }
                    continue;
                }
                let (lo, hi) = g.ox_range(kx);
                if lo == hi {
                    continue;
                }
                for oy in 0..g.ho {
                    let Some(iy) = g.in_row(oy, ky) else { continue };
                    let r = &row[oy * g.wo + lo..oy * g.wo + hi];
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let ix0 = lo * g.s + kx - g.p;
                    if g.s == 1 {
                        for (d, &v) in dst[ix0..ix0 + r.len()].iter_mut().zip(r) {
                            *d += v;
                        }
                    } else {
                        for (j, &v) in r.iter().enumerate() {
                            dst[ix0 + j * g.s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The shifted plane of tap `(ky, kx)` of a "same" conv ([`Geom::same`]):
/// output pixel `q` reads input pixel `q + d`, `d = (ky-p)*W + (kx-p)`, for
/// `q` in the returned half-open range `[q0, q1)`, except in the `|kx-p|`
/// columns at the left (`kx < p`) or right edge of each row, which wrap
/// into the neighbouring row and read the padding instead.
#[inline]
fn same_span(g: &Geom, ky: usize, kx: usize) -> (usize, usize, isize) {
    let (w, hw) = (g.w as isize, g.hw() as isize);
    let (dy, dx) = (ky as isize - g.p as isize, kx as isize - g.p as isize);
    let d = dy * w + dx;
    // Output rows whose input row is inside, then clipped to the plane.
    let q0 = ((-dy).max(0) * w).max(-d).clamp(0, hw);
    let q1 = ((g.h as isize - dy.max(0)) * w).min(hw - d).clamp(q0, hw);
    (q0 as usize, q1 as usize, d)
}

/// The wrapped edge columns of tap `kx` of a "same" conv: `(first, count)`.
#[inline]
fn same_edge(g: &Geom, kx: usize) -> (usize, usize) {
    if kx < g.p {
        (0, (g.p - kx).min(g.w))
    } else {
        let n = (kx - g.p).min(g.w);
        (g.w - n, n)
    }
}

/// im2col of a stride-1 "same" conv: per (channel, tap) one copy of the
/// shifted plane, then zeroes over the rows and edge columns in the padding.
/// A row copy per output row (16 values at a 16x16 plane) cost more in
/// calls than in copying.
fn im2col_same<T: Elem>(g: &Geom, x: &[T], col: &mut [T], stride: usize, off: usize) {
    let (pix, hw, w) = (g.pix(), g.hw(), g.w);
    for ci in 0..x.len() / hw {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = ((ci * g.kh + ky) * g.kw + kx) * stride + off;
                let row = &mut col[r..r + pix];
                let (q0, q1, d) = same_span(g, ky, kx);
                row[..q0].fill(T::ZERO);
                row[q1..].fill(T::ZERO);
                if q1 > q0 {
                    let s0 = (q0 as isize + d) as usize;
                    row[q0..q1].copy_from_slice(&plane[s0..s0 + (q1 - q0)]);
                }
                let (e0, en) = same_edge(g, kx);
                for r in row.chunks_exact_mut(w) {
                    r[e0..e0 + en].fill(T::ZERO);
                }
            }
        }
    }
}

/// col2im of a stride-1 "same" conv: per (channel, tap) the values of the
/// wrapped edge columns are zeroed in `col` (they belong to the padding),
/// then the shifted plane is added in one pass. Each input pixel receives
/// the same values in the same order as [`col2im_rows`] gives it, plus
/// exact zeros.
fn col2im_same<T: Elem>(g: &Geom, col: &mut [T], stride: usize, off: usize, dx: &mut [T]) {
    let (pix, hw, w) = (g.pix(), g.hw(), g.w);
    for ci in 0..dx.len() / hw {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = ((ci * g.kh + ky) * g.kw + kx) * stride + off;
                let row = &mut col[r..r + pix];
                let (q0, q1, d) = same_span(g, ky, kx);
                let (e0, en) = same_edge(g, kx);
                for r in row.chunks_exact_mut(w) {
                    r[e0..e0 + en].fill(T::ZERO);
                }
                if q1 == q0 {
                    continue;
                }
                let s0 = (q0 as isize + d) as usize;
                for (o, &v) in plane[s0..s0 + (q1 - q0)].iter_mut().zip(&row[q0..q1]) {
                    *o += v;
                }
            }
        }
    }
}
