//! Image-branch augmentations on uint8 RGB images, producing float CHW
//! buffers: random resized crop, horizontal flip, colour jitter, grayscale,
//! and the ImageNet normalisation.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::RgbImage;

pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Test-time augmentation of the scored (validation and test) images: the
/// model's logits averaged over these views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The image as it is.
    None,
    /// The image, flipped left-right and up-down (4 views).
    Flips,
    /// All 8 rotations by 90 degrees and their mirror images.
    Dihedral,
}

/// Augmentation settings of the image branch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Smallest crop area as a fraction of the image (RandomResizedCrop); default 0.2.
    pub crop_scale_min: f64,
    /// Colour-jitter strength for brightness, contrast and saturation; default 0.4.
    pub jitter: f32,
    /// Hue jitter (fraction of a turn); default 0.1.
    pub hue: f32,
    /// Probability of applying colour jitter; default 0.8.
    pub jitter_p: f64,
    /// Probability of converting to grayscale; default 0.2.
    pub grayscale_p: f64,
    /// Horizontal flip probability; default 0.5.
    pub flip_p: f64,
    /// Vertical flip probability; default 0 (off).
    pub vflip_p: f64,
    /// Rotate by a random multiple of 90 degrees (a lesion has no up);
    /// default false.
    pub rot90: bool,
}

impl AugmentConfig {
    /// Rejects values out of range, naming the key under `prefix`.
    pub fn check(&self, prefix: &str) -> Result<(), String> {
        if !(self.crop_scale_min > 0.0 && self.crop_scale_min <= 1.0) {
            return Err(format!(
                "{prefix}.crop_scale_min must be in (0, 1], got {}",
                self.crop_scale_min
            ));
        }
        for (k, v) in [
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("flip_p", self.flip_p),
            ("vflip_p", self.vflip_p),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{prefix}.{k} must be in [0, 1], got {v}"));
            }
        }
        if !(self.jitter.is_finite()
            && (0.0..1.0).contains(&self.jitter)
            && (0.0..=0.5).contains(&self.hue))
        {
            return Err(format!(
                "{prefix}.jitter must be in [0, 1) and {prefix}.hue in [0, 0.5]"
            ));
        }
        Ok(())
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale_min: 0.2,
            jitter: 0.4,
            hue: 0.1,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            flip_p: 0.5,
            vflip_p: 0.0,
            rot90: false,
        }
    }
}

/// A float image, channel-major `(3, h, w)`, values in [0, 1] before
/// [`normalize`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chw {
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// Bilinear sample of the box `(y0, x0, bh, bw)` (pixel units, in the
/// source) onto an `out x out` grid.
pub fn crop_resize(img: &RgbImage, y0: f64, x0: f64, bh: f64, bw: f64, out: usize) -> Chw {
    let s = img.size;
    let mut data = vec![0f32; 3 * out * out];
    for oy in 0..out {
        let sy = (y0 + (oy as f64 + 0.5) * bh / out as f64 - 0.5).clamp(0.0, (s - 1) as f64);
        let y1 = sy.floor() as usize;
        let y2 = (y1 + 1).min(s - 1);
        let fy = (sy - y1 as f64) as f32;
        for ox in 0..out {
            let sx = (x0 + (ox as f64 + 0.5) * bw / out as f64 - 0.5).clamp(0.0, (s - 1) as f64);
            let x1 = sx.floor() as usize;
            let x2 = (x1 + 1).min(s - 1);
            let fx = (sx - x1 as f64) as f32;
            for c in 0..3 {
                let a = img.px(y1, x1, c) as f32 * (1.0 - fx) + img.px(y1, x2, c) as f32 * fx;
                let b = img.px(y2, x1, c) as f32 * (1.0 - fx) + img.px(y2, x2, c) as f32 * fx;
                data[(c * out + oy) * out + ox] = (a * (1.0 - fy) + b * fy) / 255.0;
            }
        }
    }
    Chw {
        h: out,
        w: out,
        data,
    }
}

/// An exact copy (no resampling) of the `p x p` window at `(y0, x0)`.
pub fn crop_exact(img: &RgbImage, y0: usize, x0: usize, p: usize) -> Chw {
    let mut data = vec![0f32; 3 * p * p];
    for c in 0..3 {
        for y in 0..p {
            for x in 0..p {
                data[(c * p + y) * p + x] = img.px(y0 + y, x0 + x, c) as f32 / 255.0;
            }
        }
    }
    Chw { h: p, w: p, data }
}

/// The whole image resized to `out x out` (the evaluation view).
pub fn resize_full(img: &RgbImage, out: usize) -> Chw {
    let s = img.size as f64;
    crop_resize(img, 0.0, 0.0, s, s, out)
}

/// RandomResizedCrop (torchvision's algorithm: 10 tries, then the centre crop).
pub fn random_resized_crop<R: Rng>(img: &RgbImage, out: usize, scale_min: f64, rng: &mut R) -> Chw {
    let s = img.size as f64;
    let area = s * s;
    for _ in 0..10 {
        let target = area * rng.random_range(scale_min..=1.0);
        let log_r = rng.random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln());
        let r = log_r.exp();
        let w = (target * r).sqrt();
        let h = (target / r).sqrt();
        if w <= s && h <= s && w >= 1.0 && h >= 1.0 {
            let y0 = rng.random_range(0.0..=(s - h));
            let x0 = rng.random_range(0.0..=(s - w));
            return crop_resize(img, y0, x0, h, w, out);
        }
    }
    crop_resize(img, 0.0, 0.0, s, s, out)
}

pub fn hflip(x: &mut Chw) {
    for row in x.data.chunks_mut(x.w) {
        row.reverse();
    }
}

pub fn vflip(x: &mut Chw) {
    let (h, w) = (x.h, x.w);
    for c in 0..3 {
        let plane = &mut x.data[c * h * w..(c + 1) * h * w];
        for y in 0..h / 2 {
            let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
            top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
        }
    }
}

fn gray(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

pub fn grayscale(x: &mut Chw) {
    let n = x.h * x.w;
    for i in 0..n {
        let v = gray(x.data[i], x.data[n + i], x.data[2 * n + i]);
        x.data[i] = v;
        x.data[n + i] = v;
        x.data[2 * n + i] = v;
    }
}

/// Brightness, contrast, saturation and hue jitter in random order
/// (torchvision's ColorJitter), clamped to [0, 1].
pub fn color_jitter<R: Rng>(x: &mut Chw, strength: f32, hue: f32, rng: &mut R) {
    let n = x.h * x.w;
    let mut order = [0usize, 1, 2, 3];
    crate::rng::shuffle(&mut order, rng);
    let f = |rng: &mut R| rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength);
    for op in order {
        match op {
            0 => {
                let b = f(rng);
                x.data
                    .iter_mut()
                    .for_each(|v| *v = (*v * b).clamp(0.0, 1.0));
            }
            1 => {
                let c = f(rng);
                let mean = (0..n)
                    .map(|i| gray(x.data[i], x.data[n + i], x.data[2 * n + i]))
                    .sum::<f32>()
                    / n as f32;
                x.data
                    .iter_mut()
                    .for_each(|v| *v = ((*v - mean) * c + mean).clamp(0.0, 1.0));
            }
            2 => {
                let s = f(rng);
                for i in 0..n {
                    let g = gray(x.data[i], x.data[n + i], x.data[2 * n + i]);
                    for c in 0..3 {
                        let v = &mut x.data[c * n + i];
                        *v = ((*v - g) * s + g).clamp(0.0, 1.0);
                    }
                }
            }
            _ => {
                if hue > 0.0 {
                    // Rotate chroma in YIQ space by the hue angle.
                    let th = rng.random_range(-hue..=hue) * std::f32::consts::TAU;
                    let (sn, cs) = th.sin_cos();
                    for i in 0..n {
                        let (r, g, b) = (x.data[i], x.data[n + i], x.data[2 * n + i]);
                        let y = 0.299 * r + 0.587 * g + 0.114 * b;
                        let ii = 0.596 * r - 0.274 * g - 0.322 * b;
                        let q = 0.211 * r - 0.523 * g + 0.312 * b;
                        let (i2, q2) = (ii * cs - q * sn, ii * sn + q * cs);
                        x.data[i] = (y + 0.956 * i2 + 0.621 * q2).clamp(0.0, 1.0);
                        x.data[n + i] = (y - 0.272 * i2 - 0.647 * q2).clamp(0.0, 1.0);
                        x.data[2 * n + i] = (y - 1.106 * i2 + 1.703 * q2).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}

/// Colour jitter with probability `jitter_p`, then grayscale with `grayscale_p`.
pub fn photometric<R: Rng>(x: &mut Chw, cfg: &AugmentConfig, rng: &mut R) {
    if rng.random_bool(cfg.jitter_p.clamp(0.0, 1.0)) {
        color_jitter(x, cfg.jitter, cfg.hue, rng);
    }
    if rng.random_bool(cfg.grayscale_p.clamp(0.0, 1.0)) {
        grayscale(x);
    }
}

/// The image-branch view v_I.
pub fn image_view<R: Rng>(img: &RgbImage, out: usize, cfg: &AugmentConfig, rng: &mut R) -> Chw {
    let mut x = random_resized_crop(img, out, cfg.crop_scale_min, rng);
    if rng.random_bool(cfg.flip_p.clamp(0.0, 1.0)) {
        hflip(&mut x);
    }
    // Drawn only when on, so configs without them keep their random streams.
    if cfg.vflip_p > 0.0 && rng.random_bool(cfg.vflip_p.min(1.0)) {
        vflip(&mut x);
    }
    if cfg.rot90 {
        let k = rng.random_range(0..4usize);
        if k > 0 {
            x = rotate90(&x, k);
        }
    }
    photometric(&mut x, cfg, rng);
    x
}

/// Stacks CHW buffers into a `(B, 3, H, W)` tensor, normalising each.
pub fn stack(
    views: Vec<Chw>,
    device: &candle_core::Device,
) -> candle_core::Result<candle_core::Tensor> {
    let (h, w) = (views[0].h, views[0].w);
    let b = views.len();
    let mut data = Vec::with_capacity(b * 3 * h * w);
    for mut v in views {
        normalize(&mut v);
        data.extend_from_slice(&v.data);
    }
    candle_core::Tensor::from_vec(data, (b, 3, h, w), device)
}

/// The views test-time augmentation averages over, as (quarter turns,
/// mirrored left-right).
pub fn tta_views(tta: Tta) -> &'static [(usize, bool)] {
    match tta {
        Tta::None => &[(0, false)],
        // Identity, left-right, up-down (= left-right of the half turn), half turn.
        Tta::Flips => &[(0, false), (0, true), (2, true), (2, false)],
        Tta::Dihedral => &[
            (0, false),
            (1, false),
            (2, false),
            (3, false),
            (0, true),
            (1, true),
            (2, true),
            (3, true),
        ],
    }
}

/// The whole image at `out` px, mirrored left-right if `mirror`, then
/// rotated by `k` quarter turns (a view of [`tta_views`]).
pub fn tta_view(img: &RgbImage, out: usize, (k, mirror): (usize, bool)) -> Chw {
    let mut v = resize_full(img, out);
    if mirror {
        hflip(&mut v);
    }
    if k > 0 { rotate90(&v, k) } else { v }
}

/// Subtracts the ImageNet mean and divides by its std, per channel.
pub fn normalize(x: &mut Chw) {
    let n = x.h * x.w;
    for c in 0..3 {
        for v in &mut x.data[c * n..(c + 1) * n] {
            *v = (*v - MEAN[c]) / STD[c];
        }
    }
}

/// Rotates by `k` quarter turns counter-clockwise (square images only).
pub fn rotate90(x: &Chw, k: usize) -> Chw {
    assert_eq!(x.h, x.w, "rotate90 needs a square image");
    let s = x.h;
    let mut out = x.clone();
    for c in 0..3 {
        for y in 0..s {
            for xx in 0..s {
                let (sy, sx) = match k % 4 {
                    0 => (y, xx),
                    1 => (xx, s - 1 - y),
                    2 => (s - 1 - y, s - 1 - xx),
                    _ => (s - 1 - xx, y),
                };
                out.data[(c * s + y) * s + xx] = x.data[(c * s + sy) * s + sx];
            }
        }
    }
    out
}
