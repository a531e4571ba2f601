//! im2col and col2im of one image into / out of a group's column matrix
//! (`K` rows, `Ho*Wo` columns per image): by output-row copies, or through a
//! per-tap index table where output rows are narrow.

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

/// im2col of one image (see [`im2col_rows`]), by rows or through `table`
/// (from [`im2col_table`] when `g.wo < TABLE_BELOW_WO`, else empty).
pub(super) fn im2col<T: Elem>(
    g: &Geom,
    table: &[u32],
    x: &[T],
    col: &mut [T],
    stride: usize,
    off: usize,
) {
    if table.is_empty() {
        im2col_rows(g, x, col, stride, off)
    } else {
        im2col_tab(g, table, x, col, stride, off)
    }
}

/// col2im of one image (see [`col2im_rows`]), by rows or through `table`.
pub(super) fn col2im_add<T: Elem>(
    g: &Geom,
    table: &[u32],
    col: &[T],
    stride: usize,
    off: usize,
    dx: &mut [T],
) {
    if table.is_empty() {
        col2im_rows(g, col, stride, off, dx)
    } else {
        col2im_tab(g, table, col, stride, off, dx)
    }
}

/// The im2col table for `g`, or none where rows are copied.
pub(super) fn table_for(g: &Geom) -> Vec<u32> {
    if g.wo < TABLE_BELOW_WO && !g.pointwise() {
        im2col_table(g)
    } else {
        Vec::new()
    }
}

/// im2col of one image `x` (`Cin*H*W`) into columns `off..off + Ho*Wo` of
/// `col` (`K` rows of `stride` values each, row-major).
fn im2col_rows<T: Elem>(g: &Geom, x: &[T], col: &mut [T], stride: usize, off: usize) {
    let (pix, hw) = (g.pix(), g.hw());
    for ci in 0..g.cin {
        let plane = &x[ci * hw..(ci + 1) * hw];
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
                        for (j, d) in r[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * g.s];
                        }
                    }
                }
            }
        }
    }
}

/// col2im: accumulates columns `off..off + Ho*Wo` of `col` (`K` rows of
/// `stride` values) into one image `dx` (`Cin*H*W`).
fn col2im_rows<T: Elem>(g: &Geom, col: &[T], stride: usize, off: usize, dx: &mut [T]) {
    let (pix, hw) = (g.pix(), g.hw());
    for ci in 0..g.cin {
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
