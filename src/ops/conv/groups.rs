//! How a conv's batch is split into groups of images and the groups across
//! the threads: the group size, the thread split, the group loops, the
//! ordered sum of the weight-gradient partials, and the im2col / col2im of
//! one group (by channel blocks across the threads when it is the only one).
//! Everything here depends on the shapes only, never on the thread count,
//! so results are bit-identical whatever the number of threads.

use rayon::prelude::*;

use super::im2col::{col2im_add, im2col};
use super::{Elem, Geom};

/// Images per GEMM: enough that a group has about [`GROUP_COLS`] output
/// pixels. Deep layers of a small input have a few pixels per image (2x2 at
/// the last stage of a 64 px ResNet); one GEMM per image would then re-read
/// the whole weight matrix for each image. A function of the shapes only, so
/// the summation order (and the result) does not depend on the thread count.
const GROUP_COLS: usize = 512;

pub(super) fn group_size(g: &Geom) -> usize {
    GROUP_COLS.div_ceil(g.pix().max(1)).clamp(1, g.n.max(1))
}

/// (threads across groups, threads inside each GEMM).
pub(super) fn split_threads(groups: usize) -> (bool, usize) {
    let t = rayon::current_num_threads().max(1);
    if groups >= t { (true, 1) } else { (false, t) }
}

/// Channels per task when one group's im2col / col2im is split across the
/// threads (a single group: the deep layers of small inputs, where gemm's
/// own threads run the GEMM but the copies would run on one).
fn channel_block(g: &Geom, par: bool) -> usize {
    if par {
        g.cin.div_ceil(4 * rayon::current_num_threads()).max(1)
    } else {
        g.cin.max(1)
    }
}

/// The im2col of images `i0..i0 + imgs` into `col` (`K x imgs*Ho*Wo`), in
/// channel blocks across the threads when `par`.
pub(super) fn im2col_group<T: Elem>(
    g: &Geom,
    table: &[u32],
    x: &[T],
    i0: usize,
    imgs: usize,
    col: &mut [T],
    par: bool,
) {
    let (taps, hw, pix) = (g.kh * g.kw, g.hw(), g.pix());
    let (img, cols) = (g.cin * hw, imgs * pix);
    let cb = channel_block(g, par);
    let task = |(b, colb): (usize, &mut [T])| {
        let (c0, nc) = (b * cb, colb.len() / (taps * cols));
        for j in 0..imgs {
            let xi = (i0 + j) * img;
            im2col(
                g,
                table,
                &x[xi + c0 * hw..xi + (c0 + nc) * hw],
                colb,
                cols,
                j * pix,
            );
        }
    };
    if par {
        col.par_chunks_mut(cb * taps * cols)
            .enumerate()
            .for_each(task);
    } else {
        col.chunks_mut(cb * taps * cols).enumerate().for_each(task);
    }
}

/// A pointer that may cross threads; users guarantee disjoint writes.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: only used for writes to disjoint ranges (see col2im_group).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// col2im of `dcol` (`K x imgs*Ho*Wo`, scratch) added into `dx` (the
/// group's `imgs` images), in channel blocks across the threads when `par`.
pub(super) fn col2im_group<T: Elem>(
    g: &Geom,
    table: &[u32],
    dcol: &mut [T],
    dx: &mut [T],
    par: bool,
) {
    let (taps, hw, pix) = (g.kh * g.kw, g.hw(), g.pix());
    let img = g.cin * hw;
    let imgs = dx.len() / img;
    let cols = imgs * pix;
    let cb = channel_block(g, par);
    let dxp = SendPtr(dx.as_mut_ptr());
    let task = |(b, colb): (usize, &mut [T])| {
        let dxp = dxp;
        let (c0, nc) = (b * cb, colb.len() / (taps * cols));
        for j in 0..imgs {
            // SAFETY: channel blocks are disjoint, so each task writes its
            // own channels' planes of each image; all inside dx.
            let dxn =
                unsafe { std::slice::from_raw_parts_mut(dxp.0.add(j * img + c0 * hw), nc * hw) };
            col2im_add(g, table, colb, cols, j * pix, dxn);
        }
    };
    if par {
        dcol.par_chunks_mut(cb * taps * cols)
            .enumerate()
            .for_each(task);
    } else {
        dcol.chunks_mut(cb * taps * cols).enumerate().for_each(task);
    }
}

/// Runs `f(scratch, (group, chunk))` over the `chunk`-sized chunks of `out`
/// (one per group of images): across the threads, each with its own
/// scratch, or one after the other when gemm's threads run inside.
pub(super) fn for_groups<T: Send, S>(
    out: &mut [T],
    chunk: usize,
    across: bool,
    scratch: impl Fn() -> S + Send + Sync,
    f: impl Fn(&mut S, (usize, &mut [T])) + Send + Sync,
) {
    if across {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(scratch, f);
    } else {
        let mut s = scratch();
        for item in out.chunks_mut(chunk).enumerate() {
            f(&mut s, item);
        }
    }
}

/// The weight-gradient partials `f(scratch, (group, dX chunk))` of the
/// `groups` groups, in group order; the dX chunks are `chunk` values of `dx`
/// (empty slices when there is no dX). Threads as in [`for_groups`].
pub(super) fn map_groups<T: Send, S>(
    dx: &mut [T],
    chunk: usize,
    groups: usize,
    across: bool,
    scratch: impl Fn() -> S + Send + Sync,
    f: impl Fn(&mut S, (usize, &mut [T])) -> Vec<T> + Send + Sync,
) -> Vec<Vec<T>> {
    let items: Vec<(usize, &mut [T])> = if dx.is_empty() {
        (0..groups).map(|gi| (gi, <&mut [T]>::default())).collect()
    } else {
        dx.chunks_mut(chunk).enumerate().collect()
    };
    if across {
        items.into_par_iter().map_init(scratch, f).collect()
    } else {
        let mut s = scratch();
        items.into_iter().map(|item| f(&mut s, item)).collect()
    }
}

/// The sum of the partials, group by group for every value however the
/// values are split across the threads, so it does not depend on how rayon
/// scheduled the groups. None without partials.
pub(super) fn sum_partials<T: Elem>(mut partials: Vec<Vec<T>>) -> Option<Vec<T>> {
    let (acc, rest) = partials.split_first_mut()?;
    const CHUNK: usize = 4096;
    acc.par_chunks_mut(CHUNK).enumerate().for_each(|(b, a)| {
        for p in rest.iter() {
            for (d, &v) in a.iter_mut().zip(&p[b * CHUNK..]) {
                *d += v;
            }
        }
    });
    Some(std::mem::take(acc))
}
