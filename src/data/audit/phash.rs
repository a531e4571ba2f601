//! The audit's near-duplicate fingerprints: a z-scored 32x32 grey
//! thumbnail per image, its eight flips and rotations, a DCT perceptual hash
//! of each, and the early-stopping pixel comparison that confirms a pair.

use super::THUMB;
use crate::data::RgbImage;

/// The eight orientations tried, as applied to the second image of a pair.
pub(super) const TRANSFORMS: [&str; 8] = [
    "identity",
    "hflip",
    "vflip",
    "rot180",
    "transpose",
    "rot90",
    "rot270",
    "antitranspose",
];

/// RGB (any square size, even) -> THUMB x THUMB grey by box averaging, z-scored.
pub(super) fn grey_thumb(img: &RgbImage) -> Vec<f32> {
    let n = img.size;
    let f = (n / THUMB).max(1);
    let mut g = vec![0f32; THUMB * THUMB];
    for ty in 0..THUMB {
        for tx in 0..THUMB {
            let mut acc = 0f32;
            for dy in 0..f {
                for dx in 0..f {
                    let (y, x) = ((ty * f + dy).min(n - 1), (tx * f + dx).min(n - 1));
                    acc += 0.299 * img.px(y, x, 0) as f32
                        + 0.587 * img.px(y, x, 1) as f32
                        + 0.114 * img.px(y, x, 2) as f32;
                }
            }
            g[ty * THUMB + tx] = acc / (f * f) as f32;
        }
    }
    let m = g.iter().sum::<f32>() / g.len() as f32;
    let sd = (g.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / g.len() as f32).sqrt();
    let inv = if sd > 1e-3 { 1.0 / sd } else { 0.0 };
    g.iter_mut().for_each(|v| *v = (*v - m) * inv);
    g
}

/// The thumbnail under orientation `t` (see TRANSFORMS).
pub(super) fn orient(g: &[f32], t: usize) -> Vec<f32> {
    let n = THUMB - 1;
    let mut out = vec![0f32; THUMB * THUMB];
    for y in 0..THUMB {
        for x in 0..THUMB {
            let (sy, sx) = match t {
                0 => (y, x),
                1 => (y, n - x),
                2 => (n - y, x),
                3 => (n - y, n - x),
                4 => (x, y),
                5 => (n - x, y),
                6 => (x, n - y),
                _ => (n - x, n - y),
            };
            out[y * THUMB + x] = g[sy * THUMB + sx];
        }
    }
    out
}

/// cos((2x + 1) u pi / 2N) for the 8 lowest frequencies u.
pub(super) fn dct_table() -> [[f32; THUMB]; 8] {
    let mut c = [[0f32; THUMB]; 8];
    for (u, row) in c.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = ((2 * x + 1) as f32 * u as f32 * std::f32::consts::PI / (2 * THUMB) as f32).cos();
        }
    }
    c
}

/// DCT pHash: the 8x8 lowest frequencies of the thumbnail's 2-D DCT, one bit
/// per AC coefficient (63 bits): above the median of the AC coefficients.
pub(super) fn phash(g: &[f32], c: &[[f32; THUMB]; 8]) -> u64 {
    // rows: r[u][x] = sum_y c[u][y] g[y][x]
    let mut r = [[0f32; THUMB]; 8];
    for u in 0..8 {
        for y in 0..THUMB {
            let cu = c[u][y];
            for x in 0..THUMB {
                r[u][x] += cu * g[y * THUMB + x];
            }
        }
    }
    let mut coef = [0f32; 64];
    for u in 0..8 {
        for v in 0..8 {
            coef[u * 8 + v] = (0..THUMB).map(|x| r[u][x] * c[v][x]).sum();
        }
    }
    let mut ac: Vec<f32> = coef[1..].to_vec();
    ac.sort_by(f32::total_cmp);
    let med = ac[ac.len() / 2];
    let mut h = 0u64;
    for (k, &v) in coef.iter().enumerate().skip(1) {
        if v > med {
            h |= 1 << k;
        }
    }
    h
}

/// Mean absolute difference, or None as soon as it must exceed `budget`.
pub(super) fn mean_abs_diff_within(a: &[f32], b: &[f32], budget: f32) -> Option<f32> {
    if budget < 0.0 {
        return None;
    }
    let limit = budget * a.len() as f32;
    let mut sum = 0f32;
    for (ca, cb) in a.chunks(128).zip(b.chunks(128)) {
        sum += ca.iter().zip(cb).map(|(x, y)| (x - y).abs()).sum::<f32>();
        if sum > limit {
            return None;
        }
    }
    Some(sum / a.len() as f32)
}
