//! Per-channel sums of BatchNorm's kernels, in f64 lanes and in an order
//! fixed by the shapes alone (never by the threads): the forward's mean and
//! variance ([`channel_stats`]) and the backward's sums of `dy` and
//! `dy * x_hat` ([`narrow_sums`] for planes under [`NARROW_HW`] values,
//! [`plane_sums`] for the others), over the element types [`Float`].

use rayon::prelude::*;

/// Element types of the kernels: arithmetic in the element type, sums in f64.
pub(super) trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    fn f(self) -> f64;
    fn from_f(v: f64) -> Self;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self as f64
    }
    fn from_f(v: f64) -> Self {
        v as f32
    }
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self
    }
    fn from_f(v: f64) -> Self {
        v
    }
}

/// Lanes of the f64 sums: independent accumulators, so the adds pipeline
/// (one f64 accumulator waits on every add) and vectorise; combined in a
/// fixed order, so the result does not depend on anything but the data.
const LANES: usize = 8;

/// `acc[l] += f(a[i], b[i], c[i])` for `i = l (mod LANES)`, over three
/// equal-length slices.
#[inline(always)]
fn lane_sum<T: Copy, const K: usize>(
    a: &[T],
    b: &[T],
    c: &[T],
    acc: &mut [[f64; LANES]; K],
    f: impl Fn(T, T, T) -> [f64; K],
) {
    let (ac, bc, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ar, br, cr) = (ac.remainder(), bc.remainder(), cc.remainder());
    for ((a8, b8), c8) in ac.zip(bc).zip(cc) {
        let (a8, b8, c8): (&[T; LANES], &[T; LANES], &[T; LANES]) = (
            a8.try_into().expect("lane chunk"),
            b8.try_into().expect("lane chunk"),
            c8.try_into().expect("lane chunk"),
        );
        for l in 0..LANES {
            let v = f(a8[l], b8[l], c8[l]);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    for (l, ((&av, &bv), &cv)) in ar.iter().zip(br).zip(cr).enumerate() {
        let v = f(av, bv, cv);
        for k in 0..K {
            acc[k][l] += v[k];
        }
    }
}

fn lanes_total(acc: &[f64; LANES]) -> f64 {
    acc.iter().sum()
}

/// Planes smaller than this are summed channel-parallel ([`narrow_sums`]):
/// lanes inside a block of 1-15 values are mostly empty.
pub(super) const NARROW_HW: usize = 2 * LANES;

/// Per channel `ch`, `K` sums of `f(ch, a[i], b[i])` over its elements, for
/// planes under [`NARROW_HW`] values: a task per 16 channels walks the
/// images in order, pixel by pixel, adding each of its channels' values to
/// that channel's own accumulators, held in locals (16 independent chains
/// that overlap, where a single channel's adds would wait on each other, and
/// no store and reload per add). The order per channel is fixed: image by
/// image, pixel by pixel.
pub(super) fn narrow_sums<T: Float, const K: usize>(
    a: &[T],
    b: &[T],
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, T, T) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    const CH: usize = 16;
    let mut out = vec![[0f64; K]; c];
    out.par_chunks_mut(CH).enumerate().for_each(|(t, acc)| {
        let c0 = t * CH;
        let nc = acc.len();
        crate::ops::wide(
            #[inline(always)]
            || {
                let mut loc = [[0f64; K]; CH];
                for img in 0..n {
                    let base = (img * c + c0) * hw;
                    let (ab, bb) = (&a[base..base + nc * hw], &b[base..base + nc * hw]);
                    for i in 0..hw {
                        if nc == CH {
                            for (j, l) in loc.iter_mut().enumerate() {
                                // SAFETY: j < CH = nc and i < hw, so the
                                // index is below nc * hw, the slices' length.
                                let (av, bv) = unsafe {
                                    (*ab.get_unchecked(j * hw + i), *bb.get_unchecked(j * hw + i))
                                };
                                let v = f(c0 + j, av, bv);
                                for k in 0..K {
                                    l[k] += v[k];
                                }
                            }
                        } else {
                            for (j, l) in loc.iter_mut().enumerate().take(nc) {
                                let v = f(c0 + j, ab[j * hw + i], bb[j * hw + i]);
                                for k in 0..K {
                                    l[k] += v[k];
                                }
                            }
                        }
                    }
                }
                acc.copy_from_slice(&loc[..nc]);
            },
        )
    });
    out
}

/// Channels per task of [`plane_sums`]: a task reads, per image, one
/// contiguous run of this many planes.
const PLANE_BLOCK: usize = 4;

/// Per channel `ch`, `K` sums of `per(ch)(a[i], b[i])` over its `n`
/// planes of `hw` values (at least [`NARROW_HW`]), each plane summed by
/// [`lane_sum`] in image order. A task takes [`PLANE_BLOCK`] channels and
/// walks the images, so that it streams one contiguous run of planes per
/// image, where a task per channel jumps `c * hw` values after every
/// plane. Each channel's sums are added
/// in the same order whatever the blocks, so the bits do not depend on them.
pub(super) fn plane_sums<T: Float, const K: usize, G: Fn(T, T, T) -> [f64; K]>(
    a: &[T],
    b: &[T],
    (n, c, hw): (usize, usize, usize),
    per: impl Fn(usize) -> G + Sync,
) -> Vec<[f64; K]> {
    let mut out = vec![[[0f64; LANES]; K]; c];
    out.par_chunks_mut(PLANE_BLOCK)
        .enumerate()
        .for_each(|(t, acc)| {
            crate::ops::wide(
                #[inline(always)]
                || {
                    let c0 = t * PLANE_BLOCK;
                    for img in 0..n {
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let r = (img * c + c0 + j) * hw..(img * c + c0 + j + 1) * hw;
                            let (ab, bb) = (&a[r.clone()], &b[r]);
                            // Sums and the function in locals for the
                            // plane's loop (through the references they
                            // would be reloaded every value).
                            let mut loc = *acc;
                            lane_sum(ab, bb, bb, &mut loc, per(c0 + j));
                            *acc = loc;
                        }
                    }
                },
            )
        });
    out.iter().map(|acc| acc.map(|l| lanes_total(&l))).collect()
}

/// Per-channel mean and biased variance of `x` (`n` blocks of `hw` per
/// channel): a pass for the mean, then one for the squared deviations.
pub(super) fn channel_stats<T: Float>(
    x: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    if hw < NARROW_HW {
        let mean: Vec<f64> = narrow_sums(x, x, (n, c, hw), |_, v, _| [v.f()])
            .iter()
            .map(|s| s[0] / m)
            .collect();
        let var = narrow_sums(x, x, (n, c, hw), |ch, v, _| {
            let d = v.f() - mean[ch];
            [d * d]
        })
        .iter()
        .map(|s| s[0] / m)
        .collect();
        return (mean, var);
    }
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            crate::ops::wide(
                #[inline(always)]
                || {
                    let blocks = (0..n).map(|b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
                    let mut s = [[0f64; LANES]];
                    for blk in blocks.clone() {
                        lane_sum(blk, blk, blk, &mut s, |v, _, _| [v.f()]);
                    }
                    let mean = lanes_total(&s[0]) / m;
                    let mut q = [[0f64; LANES]];
                    for blk in blocks {
                        lane_sum(blk, blk, blk, &mut q, |v, _, _| {
                            let d = v.f() - mean;
                            [d * d]
                        });
                    }
                    (mean, lanes_total(&q[0]) / m)
                },
            )
        })
        .collect();
    per.into_iter().unzip()
}
