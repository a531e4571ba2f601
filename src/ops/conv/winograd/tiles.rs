//! The tile transforms of Winograd F(2x2, 3x3), between NCHW planes and the
//! 16 transformed matrices the GEMMs read and write: `B^T d B` of the input
//! patches, `A dY A^T` of the output-gradient blocks, and `A^T M A` back to
//! the output planes. Each runs over one channel's planes of a whole group
//! of images at once, with even and odd columns split apart so that every
//! pass is a long vector operation (compiled for AVX2 where present).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::Elem;
use super::super::groups::SendPtr;
use super::{PTS, spaced};

/// Where one group's transformed planes go: 16 matrices of `chans x tiles`
/// values, [`spaced`] apart; point `xi`, channel `c`, image `j` of the group
/// at `xi * stride + c * tiles + j * th*tw`.
#[derive(Clone, Copy)]
pub(super) struct Points {
    pub(super) chans: usize,
    pub(super) tiles: usize,
}

impl Points {
    /// Distance between points.
    pub(super) fn stride(&self) -> usize {
        spaced(self.chans * self.tiles)
    }
    pub(super) fn len(&self) -> usize {
        PTS * self.stride()
    }
    pub(super) fn at(&self, xi: usize, c: usize) -> usize {
        xi * self.stride() + c * self.tiles
    }
}

/// Which transform of the tiles of a plane: `B^T d B` of the 4x4 input
/// patches (forward, and `dY` for the input gradient), or `A dY A^T` of the
/// 2x2 output-gradient blocks (weight gradient).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tr {
    Input,
    OutGrad,
}

/// The transform `tr` of the `imgs x chans` planes of `src` (`h x w` each)
/// into `dst` laid out as `pts`, split by channels across the threads when
/// `par`. A channel's planes of all the group's images are one contiguous
/// run of tiles in each of the 16 points, so the vector operations run over
/// all of them at once (at 6x6 a plane has only 9 tiles).
#[allow(clippy::too_many_arguments)]
pub(super) fn transform<T: Elem>(
    tr: Tr,
    src: &[T],
    imgs: usize,
    (h, w): (usize, usize),
    dst: &mut [T],
    pts: Points,
    par: bool,
) {
    // The tile layout of a small plane, once for all channels (empty for
    // wider planes, which split rows instead).
    let table = match tr {
        _ if w > NARROW_W => Vec::new(),
        Tr::Input => tile_table(h, w, 4, 1),
        Tr::OutGrad => tile_table(h, w, 2, 0),
    };
    let table = &table[..];
    let dp = SendPtr(dst.as_mut_ptr());
    let task = |c: usize, buf: &mut Vec<T>| {
        let dp = dp;
        let plane = |j: usize| &src[(j * pts.chans + c) * h * w..(j * pts.chans + c + 1) * h * w];
        // SAFETY: channel c's rows of every point belong to this task
        // only; `chan_*` write imgs*th*tw values at each of the 16 offsets.
        let out = |xi: usize| unsafe { dp.0.add(pts.at(xi, c)) };
        crate::ops::wide(
            #[inline(always)]
            || unsafe {
                match tr {
                    Tr::Input => chan_input(plane, imgs, (h, w), table, buf, out),
                    Tr::OutGrad => chan_outgrad(plane, imgs, (h, w), table, buf, out),
                }
            },
        );
    };
    if par {
        (0..pts.chans)
            .into_par_iter()
            .for_each_init(Vec::new, |buf, c| task(c, buf));
    } else {
        let mut buf = Vec::new();
        (0..pts.chans).for_each(|c| task(c, &mut buf));
    }
}

/// One input row's even and odd columns: `ev[t] = row[2t]`, `od[t] =
/// row[2t+1]` (zero past the row), `t < ev.len()`.
#[inline(always)]
fn split_row<T: Elem>(row: &[T], ev: &mut [T], od: &mut [T]) {
    let pairs = row.len() / 2;
    for ((p, e), o) in row
        .chunks_exact(2)
        .zip(&mut ev[..pairs])
        .zip(&mut od[..pairs])
    {
        *e = p[0];
        *o = p[1];
    }
    if row.len() % 2 == 1 {
        ev[pairs] = row[2 * pairs];
        od[pairs] = T::ZERO;
    }
}

/// Planes at most this wide move their values between the planes and the
/// tile layout through a table per plane shape (a gather or scatter per
/// value) rather than by row splits and few-value copies, whose calls cost
/// more than the copying on 5x5 planes (the 16-channel stage of PIRL's 20 px
/// patches). The same values land in the same places.
const NARROW_W: usize = 8;

/// The tile layout of a small plane as a table: vector `v = 2q + odd` (`q <
/// rows`), tile `ti*tw + tj` of an image reads pixel `(2ti + q - above) * w +
/// 2tj + odd`, or `usize::MAX` (zero) outside the plane; `2 * rows * th*tw`
/// entries. [`chan_input`]: the 4 rows from the one above each tile
/// (`above = 1`); [`chan_outgrad`]: each block's own 2 rows (`above = 0`).
fn tile_table(h: usize, w: usize, rows: usize, above: usize) -> Vec<usize> {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let mut t = Vec::with_capacity(2 * rows * th * tw);
    for q in 0..rows {
        for odd in 0..2 {
            for ti in 0..th {
                for tj in 0..tw {
                    let (r, col) = ((2 * ti + q).wrapping_sub(above), 2 * tj + odd);
                    t.push(if r < h && col < w {
                        r * w + col
                    } else {
                        usize::MAX
                    });
                }
            }
        }
    }
    t
}

/// `dst[i] = f(a[i], b[i])` over `dst`'s length.
#[inline(always)]
fn map2<T: Elem>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    let n = dst.len();
    for ((d, &p), &q) in dst.iter_mut().zip(&a[..n]).zip(&b[..n]) {
        *d = f(p, q);
    }
}

/// `B^T d B` for each tile of the planes `plane(j)` (`h x w`, `j < imgs`)
/// of one channel: tile `(ti, tj)` of image `j` reads input rows
/// `2ti-1 ..= 2ti+2` and columns `2tj-1 ..= 2tj+2` (zero outside), and point
/// `xi` goes to `out(xi)[j*th*tw + ti*tw + tj]`.
///
/// Along one axis, `B^T (d0, d1, d2, d3) = (d0-d2, d1+d2, d2-d1, d1-d3)`.
/// Row `q` of tile row `ti` is input row `2ti+q-1`; those rows, split into
/// even and odd columns (`ev[t]` = column `2t`, `od[t]` = column `2t+1`),
/// are laid out like the tiles (`rows[q]`, one value per tile), so the pass
/// down the columns is four vector operations over all tiles. Along the
/// rows, tile `tj` reads columns `2tj-1 .. 2tj+2`: `od[tj-1], ev[tj],
/// od[tj], ev[tj+1]`, the same vectors shifted by one, with the first and
/// last tile of each row corrected for the zero outside the plane.
///
/// # Safety
/// `out(xi)` must be valid for `imgs*th*tw` writes.
#[inline(always)]
unsafe fn chan_input<'a, T: Elem>(
    plane: impl Fn(usize) -> &'a [T],
    imgs: usize,
    (h, w): (usize, usize),
    table: &[usize],
    buf: &mut Vec<T>,
    out: impl Fn(usize) -> *mut T,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let (n, nt) = (th * tw, imgs * th * tw);
    // 8 vectors (rows q = 0..4, even / odd columns), then 8 more (their
    // transform down the columns), each with one spare value at both ends.
    let len = nt + 2;
    buf.resize(16 * len, T::ZERO);
    let (rows, cols) = buf.split_at_mut(8 * len);
    let at = |q: usize, odd: usize, i: usize| (2 * q + odd) * len + 1 + i;
    if w <= NARROW_W {
        // Small planes: each of the 8 vectors' values of one image through
        // a table (the same values as the row splits below, without a call
        // and a few-value copy per row).
        for j in 0..imgs {
            let x = plane(j);
            for (v, idx) in table.chunks_exact(n).enumerate() {
                let o = v * len + 1 + j * n;
                for (d, &i) in rows[o..o + n].iter_mut().zip(idx) {
                    *d = x.get(i).copied().unwrap_or(T::ZERO);
                }
            }
        }
    }
    for j in 0..imgs {
        if w <= NARROW_W {
            break;
        }
        let x = plane(j);
        for ti in 0..th {
            let t0 = j * n + ti * tw;
            for q in 0..4 {
                // Input row 2ti+q-1, zero outside the plane.
                let r = (2 * ti + q).wrapping_sub(1);
                if r >= h {
                    rows[at(q, 0, t0)..at(q, 0, t0) + tw].fill(T::ZERO);
                    rows[at(q, 1, t0)..at(q, 1, t0) + tw].fill(T::ZERO);
                } else if q >= 2 && ti + 1 < th {
                    // Rows q = 2, 3 of tile row ti are rows 0, 1 of ti+1:
                    // split there and copied back below.
                } else {
                    let (e, o) = rows.split_at_mut(at(q, 1, t0));
                    split_row(
                        &x[r * w..(r + 1) * w],
                        &mut e[at(q, 0, t0)..at(q, 0, t0) + tw],
                        &mut o[..tw],
                    );
                }
            }
            if ti > 0 {
                // Rows 0, 1 of this tile row are rows 2, 3 of the last.
                let p0 = t0 - tw;
                for (q, odd) in [(2, 0), (2, 1), (3, 0), (3, 1)] {
                    rows.copy_within(at(q - 2, odd, t0)..at(q - 2, odd, t0) + tw, at(q, odd, p0));
                }
            }
        }
    }
    // Down the columns, for the even and the odd columns.
    for odd in 0..2 {
        let r = |q: usize| &rows[at(q, odd, 0)..at(q, odd, 0) + nt];
        let c = |a: usize| (2 * a + odd) * len + 1..(2 * a + odd) * len + 1 + nt;
        map2(&mut cols[c(0)], r(0), r(2), |p, q| p - q);
        map2(&mut cols[c(1)], r(1), r(2), |p, q| p + q);
        map2(&mut cols[c(2)], r(2), r(1), |p, q| p - q);
        map2(&mut cols[c(3)], r(1), r(3), |p, q| p - q);
    }
    // Along the rows: (od[t-1] - od[t], ev[t] + od[t], od[t] - ev[t],
    // ev[t] - ev[t+1]).
    for a in 0..4 {
        let ev = &cols[2 * a * len..(2 * a + 1) * len];
        let od = &cols[(2 * a + 1) * len..(2 * a + 2) * len];
        // SAFETY: out(xi) spans imgs*th*tw values (caller).
        let dst = |b: usize| unsafe { std::slice::from_raw_parts_mut(out(a * 4 + b), nt) };
        let (d0, d3) = (dst(0), dst(3));
        map2(d0, od, &od[1..], |p, q| p - q);
        map2(dst(1), &ev[1..], &od[1..], |p, q| p + q);
        map2(dst(2), &od[1..], &ev[1..], |p, q| p - q);
        map2(d3, &ev[1..], &ev[2..], |p, q| p - q);
        // The first tile of a row has zero left of it, the last zero right
        // of it (column 2tw is past the plane).
        for s in (0..nt).step_by(tw) {
            d0[s] = T::ZERO - od[1 + s];
            d3[s + tw - 1] = ev[s + tw];
        }
    }
}

/// `A dY A^T` for each 2x2 block of the output-gradient planes `plane(j)`
/// (`h x w`, zero outside) of one channel, point `xi` to
/// `out(xi)[j*th*tw + ti*tw + tj]`. Along one axis, `A (y0, y1) = (y0,
/// y0+y1, y0-y1, -y1)`; block `(ti, tj)` is rows `2ti, 2ti+1` and columns
/// `2tj, 2tj+1`, so with those rows split into even and odd columns and laid
/// out like the tiles, both passes are vector operations over all tiles.
///
/// # Safety
/// `out(xi)` must be valid for `imgs*th*tw` writes.
#[inline(always)]
unsafe fn chan_outgrad<'a, T: Elem>(
    plane: impl Fn(usize) -> &'a [T],
    imgs: usize,
    (h, w): (usize, usize),
    table: &[usize],
    buf: &mut Vec<T>,
    out: impl Fn(usize) -> *mut T,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let (n, nt) = (th * tw, imgs * th * tw);
    buf.resize(8 * nt, T::ZERO);
    // Row 0 / 1 of each block, even / odd columns; then sums and differences.
    let (rows, sd) = buf.split_at_mut(4 * nt);
    let at = |q: usize, odd: usize, i: usize| (2 * q + odd) * nt + i;
    if w <= NARROW_W {
        // Small planes: through a table, as in `chan_input`.
        for j in 0..imgs {
            let y = plane(j);
            for (v, idx) in table.chunks_exact(n).enumerate() {
                let o = v * nt + j * n;
                for (d, &i) in rows[o..o + n].iter_mut().zip(idx) {
                    *d = y.get(i).copied().unwrap_or(T::ZERO);
                }
            }
        }
    }
    for j in 0..imgs {
        if w <= NARROW_W {
            break;
        }
        let y = plane(j);
        for ti in 0..th {
            let t0 = j * n + ti * tw;
            for q in 0..2 {
                let r = 2 * ti + q;
                let (e, o) = rows.split_at_mut(at(q, 1, t0));
                let (e, o) = (&mut e[at(q, 0, t0)..at(q, 0, t0) + tw], &mut o[..tw]);
                if r < h {
                    split_row(&y[r * w..(r + 1) * w], e, o);
                } else {
                    e.fill(T::ZERO);
                    o.fill(T::ZERO);
                }
            }
        }
    }
    let r = |q: usize, odd: usize| &rows[at(q, odd, 0)..at(q, odd, 0) + nt];
    // Along the rows: (ev, ev+od, ev-od, -od), for rows 0 and 1.
    for q in 0..2 {
        let (s, d) = sd[2 * q * nt..(2 * q + 2) * nt].split_at_mut(nt);
        map2(s, r(q, 0), r(q, 1), |p, q| p + q);
        map2(d, r(q, 0), r(q, 1), |p, q| p - q);
    }
    // Down the columns, rows e and o: (e, e+o, e-o, -o).
    for b in 0..4 {
        let (he, ho, neg) = match b {
            0 => (r(0, 0), r(1, 0), false),
            1 => (&sd[..nt], &sd[2 * nt..3 * nt], false),
            2 => (&sd[nt..2 * nt], &sd[3 * nt..], false),
            _ => (r(0, 1), r(1, 1), true),
        };
        // SAFETY: out(xi) spans imgs*th*tw values (caller).
        let dst = |a: usize| unsafe { std::slice::from_raw_parts_mut(out(a * 4 + b), nt) };
        if neg {
            map2(dst(0), he, he, |p, _| T::ZERO - p);
            map2(dst(1), he, ho, |p, q| T::ZERO - p - q);
            map2(dst(2), ho, he, |p, q| p - q);
            dst(3).copy_from_slice(ho);
        } else {
            dst(0).copy_from_slice(he);
            map2(dst(1), he, ho, |p, q| p + q);
            map2(dst(2), he, ho, |p, q| p - q);
            map2(dst(3), ho, ho, |p, _| T::ZERO - p);
        }
    }
}

/// `A^T M A` of each tile of the `imgs x chans` planes laid out as `pts`,
/// written into `dst` (`imgs x chans x h x w`), by channels across the
/// threads when `par`. Along one axis, `A^T (m0, m1, m2, m3) = (m0+m1+m2,
/// m1-m2-m3)`.
pub(super) fn inverse<T: Elem>(
    m: &[T],
    pts: Points,
    (h, w): (usize, usize),
    dst: &mut [MaybeUninit<T>],
    par: bool,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let (hw, n, nt) = (h * w, th * tw, pts.tiles);
    let imgs = nt / n;
    let dp = SendPtr(dst.as_mut_ptr());
    // Pixel (r, s) of a plane is output (r % 2, s % 2) of tile (r/2, s/2).
    let table: Vec<(usize, usize)> = if w <= NARROW_W {
        (0..h)
            .flat_map(|r| (0..w).map(move |s| (2 * (r % 2) + s % 2, (r / 2) * tw + s / 2)))
            .collect()
    } else {
        Vec::new()
    };
    let table = &table[..];
    let task = |buf: &mut Vec<T>, c: usize| {
        let dp = dp;
        buf.resize(4 * nt, T::ZERO);
        crate::ops::wide(
            #[inline(always)]
            || {
                let v: [&[T]; PTS] =
                    std::array::from_fn(|xi| &m[pts.at(xi, c)..pts.at(xi, c) + nt]);
                let (y00, rest) = buf.split_at_mut(nt);
                let (y01, rest) = rest.split_at_mut(nt);
                let (y10, y11) = rest.split_at_mut(nt);
                for t in 0..nt {
                    // Down the tile's columns (a), then along its rows (b).
                    let s0: [T; 4] = std::array::from_fn(|b| v[b][t] + v[4 + b][t] + v[8 + b][t]);
                    let s1: [T; 4] =
                        std::array::from_fn(|b| v[4 + b][t] - v[8 + b][t] - v[12 + b][t]);
                    y00[t] = s0[0] + s0[1] + s0[2];
                    y01[t] = s0[1] - s0[2] - s0[3];
                    y10[t] = s1[0] + s1[1] + s1[2];
                    y11[t] = s1[1] - s1[2] - s1[3];
                }
                let outs: [&[T]; 4] = [y00, y01, y10, y11];
                for j in 0..imgs {
                    // SAFETY: plane (j, c) belongs to this task only.
                    let y = unsafe {
                        std::slice::from_raw_parts_mut(dp.0.add((j * pts.chans + c) * hw), hw)
                    };
                    if w <= NARROW_W {
                        // Small planes: pixel by pixel through a table.
                        for (d, &(k, t)) in y.iter_mut().zip(table) {
                            d.write(outs[k][j * n + t]);
                        }
                        continue;
                    }
                    for ti in 0..th {
                        let s = j * n + ti * tw..j * n + ti * tw + tw;
                        let r0 = 2 * ti;
                        interleave(
                            &mut y[r0 * w..(r0 + 1) * w],
                            &y00[s.clone()],
                            &y01[s.clone()],
                        );
                        if r0 + 1 < h {
                            interleave(
                                &mut y[(r0 + 1) * w..(r0 + 2) * w],
                                &y10[s.clone()],
                                &y11[s],
                            );
                        }
                    }
                }
            },
        )
    };
    debug_assert_eq!(dst.len(), imgs * pts.chans * hw);
    if par {
        (0..pts.chans).into_par_iter().for_each_init(Vec::new, task);
    } else {
        let mut buf = Vec::new();
        (0..pts.chans).for_each(|c| task(&mut buf, c));
    }
}

/// `row[2t] = a[t]`, `row[2t+1] = b[t]`, as far as the row goes.
#[inline(always)]
fn interleave<T: Elem>(row: &mut [MaybeUninit<T>], a: &[T], b: &[T]) {
    let pairs = row.len() / 2;
    for ((d, &p), &q) in row.chunks_exact_mut(2).zip(&a[..pairs]).zip(&b[..pairs]) {
        d[0].write(p);
        d[1].write(q);
    }
    if row.len() % 2 == 1 {
        row[2 * pairs].write(a[pairs]);
    }
}
