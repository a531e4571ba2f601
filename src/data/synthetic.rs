//! A built-in default data set: procedural dermoscopy-like images (skin tone,
//! a lesion with an irregular border, colour variegation, asymmetry, size,
//! hair, vignetting) whose label follows the ABCD rule of dermoscopy:
//! TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D, melanoma when TDS > 5.45, with a
//! little label noise. Written as real PNG files plus a `manifest.csv`, so
//! it goes through the same decoding path as any user's data.

use std::path::Path;

use rand::Rng;

use super::{DataError, Result, io_err};

/// The ABCD features of one synthetic lesion.
#[derive(Debug, Clone, Copy)]
pub struct Abcd {
    /// Asymmetry score 0..=2 (axes of asymmetry).
    pub a: f64,
    /// Border score 0..=8 (abrupt border segments).
    pub b: f64,
    /// Colour count 1..=6.
    pub c: f64,
    /// Differential structures 1..=5.
    pub d: f64,
}

impl Abcd {
    pub fn tds(&self) -> f64 {
        1.3 * self.a + 0.1 * self.b + 0.5 * self.c + 0.5 * self.d
    }
}

const LESION_COLOURS: [[f32; 3]; 6] = [
    [0.62, 0.45, 0.32], // light brown
    [0.40, 0.26, 0.17], // dark brown
    [0.12, 0.09, 0.08], // black
    [0.45, 0.50, 0.62], // blue-grey
    [0.70, 0.30, 0.28], // red
    [0.85, 0.82, 0.78], // white (regression)
];

fn smooth_noise<R: Rng>(rng: &mut R, harmonics: usize, amp: f64) -> Vec<(f64, f64, f64)> {
    (1..=harmonics)
        .map(|k| {
            (
                k as f64,
                rng.random_range(0.0..std::f64::consts::TAU),
                amp * rng.random::<f64>() / k as f64,
            )
        })
        .collect()
}

fn eval_noise(n: &[(f64, f64, f64)], t: f64) -> f64 {
    n.iter().map(|(k, ph, a)| a * (k * t + ph).sin()).sum()
}

/// One image (`size x size` RGB bytes) and its ABCD features.
pub fn render<R: Rng>(size: usize, rng: &mut R) -> (Vec<u8>, Abcd) {
    let s = size as f64;
    let a_score = rng.random_range(0..=2) as f64;
    let irregular = rng.random::<f64>();
    let n_col = rng.random_range(1..=5usize);
    let d_score = rng.random_range(1..=5) as f64;
    let b_score = (irregular * 8.0).round();
    let skin = {
        let t = rng.random::<f32>();
        [0.95 - 0.35 * t, 0.78 - 0.35 * t, 0.68 - 0.33 * t]
    };
    let radius = s * rng.random_range(0.16..0.30) * (1.0 + 0.12 * d_score / 5.0);
    let (cx, cy) = (
        s / 2.0 + rng.random_range(-0.08..0.08) * s,
        s / 2.0 + rng.random_range(-0.08..0.08) * s,
    );
    let elong = 1.0 + 0.25 * a_score * rng.random_range(0.5..1.0);
    let rot = rng.random_range(0.0..std::f64::consts::PI);
    let border = smooth_noise(
        rng,
        2 + (irregular * 10.0) as usize,
        0.05 + 0.35 * irregular,
    );
    let mut cols: Vec<usize> = (0..6).collect();
    crate::rng::shuffle(&mut cols, rng);
    cols.truncate(n_col);
    // Colour blobs, pushed off-centre when asymmetric.
    let blobs: Vec<(f64, f64, f64, usize)> = (0..n_col * 2)
        .map(|i| {
            let ang = rng.random_range(0.0..std::f64::consts::TAU);
            let dist = rng.random_range(0.0..0.6) * radius * (0.4 + 0.3 * a_score);
            (
                cx + dist * ang.cos(),
                cy + dist * ang.sin(),
                radius * rng.random_range(0.25..0.6),
                cols[i % n_col],
            )
        })
        .collect();
    let dots: Vec<(f64, f64)> = (0..(d_score as usize * 6))
        .map(|_| {
            let ang = rng.random_range(0.0..std::f64::consts::TAU);
            let dist = rng.random_range(0.0..1.0) * radius;
            (cx + dist * ang.cos(), cy + dist * ang.sin())
        })
        .collect();
    let hairs: Vec<(f64, f64, f64, f64)> = (0..rng.random_range(0..6))
        .map(|_| {
            (
                rng.random_range(0.0..s),
                rng.random_range(0.0..s),
                rng.random_range(0.0..std::f64::consts::PI),
                rng.random_range(0.02..0.08),
            )
        })
        .collect();
    let mut out = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let mut c = skin;
            let (dx, dy) = (fx - cx, fy - cy);
            let (rx, ry) = (
                dx * rot.cos() + dy * rot.sin(),
                -dx * rot.sin() + dy * rot.cos(),
            );
            let r = (rx * rx / (elong * elong) + ry * ry).sqrt();
            let th = ry.atan2(rx);
            let edge = radius * (1.0 + eval_noise(&border, th));
            if r < edge {
                let mut lc = LESION_COLOURS[cols[0]];
                for &(bx, by, br, ci) in &blobs {
                    let d2 = ((fx - bx).powi(2) + (fy - by).powi(2)) / (br * br);
                    let w = (-d2).exp() as f32;
                    for k in 0..3 {
                        lc[k] = lc[k] * (1.0 - w) + LESION_COLOURS[ci][k] * w;
                    }
                }
                for &(px, py) in &dots {
                    if (fx - px).powi(2) + (fy - py).powi(2) < (s / 90.0).max(0.8).powi(2) {
                        lc = [0.1, 0.07, 0.06];
                    }
                }
                // Soft border: blend over the outer 8 % of the radius.
                let t = ((edge - r) / (0.08 * radius)).clamp(0.0, 1.0) as f32;
                for k in 0..3 {
                    c[k] = c[k] * (1.0 - t) + lc[k] * t;
                }
            }
            for &(hx, hy, ha, hw) in &hairs {
                let d = ((fx - hx) * ha.sin() - (fy - hy) * ha.cos()).abs();
                let wiggle =
                    (((fx - hx) * ha.cos() + (fy - hy) * ha.sin()) / s * 9.0).sin() * s * 0.02;
                if (d - wiggle).abs() < hw * s * 0.1 {
                    c = [0.15, 0.12, 0.1];
                }
            }
            let v = 1.0
                - 0.45 * (((fx - s / 2.0).powi(2) + (fy - s / 2.0).powi(2)) / (s * s / 2.0)) as f32;
            for k in 0..3 {
                let noise = rng.random_range(-0.02f32..0.02);
                out[(y * size + x) * 3 + k] =
                    ((c[k] * v + noise).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    (
        out,
        Abcd {
            a: a_score,
            b: b_score,
            c: n_col as f64,
            d: d_score,
        },
    )
}

/// Writes `n` images (`size` px) and `manifest.csv` (path,label,split) into
/// `dir`: 60 % train, 20 % val, 20 % test. Returns the number of positives.
/// Idempotent: an existing complete set is left as it is.
pub fn generate(dir: &Path, n: usize, size: usize, seed: u64) -> Result<usize> {
    let manifest = dir.join("manifest.csv");
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest).map_err(io_err(&manifest))?;
        return Ok(text
            .lines()
            .skip(1)
            .filter(|l| l.split(',').nth(1) == Some("1"))
            .count());
    }
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).map_err(io_err(&img_dir))?;
    use rayon::prelude::*;
    let rows: Vec<Result<(String, u8)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = crate::rng::stream(seed, "synthetic", i as u64, 0);
            let (px, abcd) = render(size, &mut rng);
            let mut label = (abcd.tds() > 5.45) as u8;
            if rng.random_bool(0.05) {
                label = 1 - label;
            }
            let name = format!("images/synth_{i:05}.png");
            let path = dir.join(&name);
            let img = image::RgbImage::from_raw(size as u32, size as u32, px).expect("buffer size");
            let tmp = dir.join(format!("images/.synth_{i:05}.png.tmp"));
            img.save_with_format(&tmp, image::ImageFormat::Png)
                .map_err(|e| DataError::Image {
                    path: tmp.clone(),
                    msg: e.to_string(),
                })?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            Ok((name, label))
        })
        .collect();
    let mut csv = String::from("path,label,split\n");
    let mut pos = 0;
    for (i, r) in rows.into_iter().enumerate() {
        let (name, label) = r?;
        pos += label as usize;
        let split = match i % 5 {
            0..=2 => "train",
            3 => "val",
            _ => "test",
        };
        csv.push_str(&format!("{name},{label},{split}\n"));
    }
    let tmp = dir.join(".manifest.csv.tmp");
    std::fs::write(&tmp, csv).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &manifest).map_err(io_err(&manifest))?;
    Ok(pos)
}
