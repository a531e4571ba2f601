//! Grad-CAM (Selvaraju et al., 2017): where in an image a classifier's
//! logit comes from. At a stage's output `A` (channels `c`, cells `h, w`)
//! the map is `ReLU(Σ_c α_c A_c)` with `α_c = mean_hw(∂logit/∂A_c)`; the
//! gradient comes from candle's backward pass, which keeps the gradients of
//! variables only (candle 0.11 drops an intermediate's once it has passed
//! it on), so the map is read through a zero variable added to it
//! ([`Probe`]); the forward must record a graph (not inside
//! [`crate::ops::inference`]).
//!
//! For a fine-tuned model ([`explain`]): the most confident true positives
//! and the missed positives of the test split ([`pick_cases`]), each
//! explained at layer4 (the last stage) and layer3, stored small: the map
//! at its native resolution, the image as the model saw it (a PNG), its
//! index and score. At 64 px input layer4 is a 2x2 grid (3x3 at 96 px);
//! layer3 is twice as fine.

use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

use crate::augment;
use crate::data::RgbImage;
use crate::error::{Error, Result};
use crate::model::ResNet;

/// The stages explained, in order: layer4 (the last), then layer3.
pub const STAGES: [usize; 2] = [4, 3];

/// Cases of each kind [`pick_cases`] takes.
pub const CASES_PER_KIND: usize = 3;

/// One image's map at one stage, at the stage's resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// 3 = layer3, 4 = layer4.
    pub stage: usize,
    pub h: usize,
    pub w: usize,
    /// Row-major `h * w` values, after the ReLU (not normalised).
    pub values: Vec<f32>,
}

impl Heatmap {
    /// The largest value (0 for an all-zero map).
    pub fn max(&self) -> f32 {
        self.values.iter().copied().fold(0.0, f32::max)
    }

    /// The map resized to `out_h x out_w` by bilinear interpolation with
    /// half-pixel centres, as PyTorch's `F.interpolate(mode="bilinear",
    /// align_corners=False)`: the map's cells cover the image evenly.
    pub fn upsample(&self, out_h: usize, out_w: usize) -> Vec<f32> {
        let src = |len: usize, out: usize, o: usize| -> (usize, usize, f32) {
            let s = ((o as f64 + 0.5) * len as f64 / out as f64 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(len - 1);
            let i1 = (i0 + 1).min(len - 1);
            (i0, i1, (s - i0 as f64).min(1.0) as f32)
        };
        let mut out = vec![0f32; out_h * out_w];
        if self.h == 0 || self.w == 0 {
            return out;
        }
        for oy in 0..out_h {
            let (y0, y1, fy) = src(self.h, out_h, oy);
            for ox in 0..out_w {
                let (x0, x1, fx) = src(self.w, out_w, ox);
                let v = |y: usize, x: usize| self.values[y * self.w + x];
                let a = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
                let b = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
                out[oy * out_w + ox] = a * (1.0 - fy) + b * fy;
            }
        }
        out
    }
}

/// A map `A` on the graph with a zero variable added to it: candle's
/// backward pass keeps the gradients of variables only, so the zero's
/// gradient is how `∂logit/∂A` is read. `A + 0` is `A` (bit for bit).
#[derive(Debug, Clone)]
pub struct Probe {
    /// `A + 0`: what the forward continues from.
    pub map: Tensor,
    zero: candle_core::Var,
}

impl Probe {
    pub fn new(a: &Tensor) -> Result<Probe> {
        let zero = candle_core::Var::zeros(a.shape(), a.dtype(), a.device())?;
        Ok(Probe {
            map: (a + zero.as_tensor())?,
            zero,
        })
    }
}

/// Grad-CAM at each of a set of maps.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// Per map, `α`: the gradient's spatial mean, `(N, C)`.
    pub weights: Vec<Tensor>,
    /// Per map, `ReLU(Σ_c α_c A_c)`, `(N, H, W)`.
    pub maps: Vec<Tensor>,
}

/// Grad-CAM of each image's logit at each of the maps `probes` (which the
/// forward that computed `logits` continued from).
///
/// The gradient of the logits' sum is taken once: image `n`'s map is its
/// own logit's only if no other image's logit depends on its activations,
/// which holds with BatchNorm in evaluation mode (as [`explain`] runs it),
/// not with batch statistics.
///
/// # Shapes
/// `logits: (N,)`; each probe's map `(N, C_k, H_k, W_k)`.
///
/// # Errors
/// Inside [`crate::ops::inference`], or when the logits do not depend on a
/// map.
pub fn grad_cam(logits: &Tensor, probes: &[&Probe]) -> Result<GradCam> {
    if crate::ops::in_inference() {
        return Err(Error::Eval(
            "Grad-CAM needs the forward's graph: it cannot run inside ops::inference".into(),
        ));
    }
    let grads = logits.sum_all()?.backward()?;
    let mut out = GradCam {
        weights: Vec::new(),
        maps: Vec::new(),
    };
    for (k, p) in probes.iter().enumerate() {
        let g = grads.get(p.zero.as_tensor()).ok_or_else(|| {
            Error::Eval(format!(
                "Grad-CAM: map {k} (shape {:?}) is not on the logits' graph",
                p.map.dims()
            ))
        })?;
        let alpha = g.mean((2, 3))?.detach();
        let (n, c) = alpha.dims2()?;
        let map = p
            .map
            .detach()
            .broadcast_mul(&alpha.reshape((n, c, 1, 1))?)?
            .sum(1)?
            .relu()?;
        out.weights.push(alpha);
        out.maps.push(map);
    }
    Ok(out)
}

/// Per image, its logit and its maps at [`STAGES`], for a classifier that
/// is `head` (one logit) on the globally average-pooled layer4 of
/// `encoder`, BatchNorm in evaluation mode.
///
/// # Shapes
/// `x: (N, 3, S, S)` normalised views -> `N` entries.
pub fn classifier_cams(
    encoder: &ResNet,
    head: &candle_nn::Linear,
    x: &Tensor,
) -> Result<Vec<(f64, Vec<Heatmap>)>> {
    let mut probes: Vec<(usize, Probe)> = Vec::new();
    let maps = encoder.stage_maps(x, &mut |s, y| {
        if !STAGES.contains(&s) {
            return Ok(y);
        }
        let p = Probe::new(&y).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let m = p.map.clone();
        probes.push((s, p));
        Ok(m)
    })?;
    let pooled = maps[4].mean((2, 3))?;
    let logits = head.forward(&pooled)?.squeeze(1)?;
    let ordered: Vec<&Probe> = STAGES
        .iter()
        .filter_map(|s| probes.iter().find(|(t, _)| t == s).map(|(_, p)| p))
        .collect();
    let cam = grad_cam(&logits, &ordered)?;
    let z: Vec<f32> = logits
        .detach()
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let per_stage: Vec<Vec<Vec<Vec<f32>>>> = cam
        .maps
        .iter()
        .map(|m| m.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>())
        .collect::<candle_core::Result<_>>()?;
    Ok(z.iter()
        .enumerate()
        .map(|(i, &l)| {
            let hm = STAGES
                .iter()
                .zip(&per_stage)
                .map(|(&stage, m)| {
                    let rows = &m[i];
                    Heatmap {
                        stage,
                        h: rows.len(),
                        w: rows.first().map_or(0, Vec::len),
                        values: rows.concat(),
                    }
                })
                .collect();
            (f64::from(l), hm)
        })
        .collect())
}

/// Which kind of case an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseKind {
    /// A positive scored at or above the threshold.
    TruePositive,
    /// A positive scored below it.
    Missed,
}

/// The positives Grad-CAM looks at, as (kind, index): the `k` scoring
/// highest at or above `threshold` (most confident first), then the `k`
/// scoring lowest below it (lowest first); ties by index.
pub fn pick_cases(
    scores: &[f64],
    labels: &[u8],
    threshold: f64,
    k: usize,
) -> Vec<(CaseKind, usize)> {
    let mut pos: Vec<usize> = (0..scores.len().min(labels.len()))
        .filter(|&i| labels[i] == 1 && scores[i].is_finite())
        .collect();
    pos.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let tp = pos
        .iter()
        .filter(|&&i| scores[i] >= threshold)
        .take(k)
        .map(|&i| (CaseKind::TruePositive, i));
    let mut missed: Vec<usize> = pos
        .iter()
        .copied()
        .filter(|&i| scores[i] < threshold)
        .collect();
    missed.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    tp.chain(missed.into_iter().take(k).map(|i| (CaseKind::Missed, i)))
        .collect()
}

/// One explained test image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CamCase {
    pub kind: CaseKind,
    /// Position in the test split.
    pub index: usize,
    pub id: String,
    pub label: u8,
    /// The run's test score of the image (as scored, after test-time
    /// augmentation if the recipe has it).
    pub score: f64,
    /// The logit of the one view explained: the whole image at the view
    /// size, unflipped.
    pub view_logit: f64,
    /// That view's pixels, RGB PNG bytes in hex.
    pub image_png: String,
    /// At each of [`STAGES`], in order.
    pub maps: Vec<Heatmap>,
}

impl CamCase {
    /// The view's pixels.
    pub fn image(&self) -> Result<image::RgbImage> {
        let bytes = hex::decode(&self.image_png)
            .map_err(|e| Error::Report(format!("Grad-CAM image {}: {e}", self.id)))?;
        Ok(image::load_from_memory(&bytes)
            .map_err(|e| Error::Report(format!("Grad-CAM image {}: {e}", self.id)))?
            .to_rgb8())
    }
}

/// The Grad-CAM cases of one fine-tuned run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradCams {
    /// The operating threshold (Youden's, picked on validation): positives
    /// scored below it are missed.
    pub threshold: f64,
    /// The view size (px) the model scores and is explained at.
    pub view: usize,
    pub cases: Vec<CamCase>,
}

/// The test images of a split, as [`explain`] reads them.
pub struct TestImages<'a> {
    pub images: &'a [&'a RgbImage],
    pub ids: &'a [String],
    pub labels: &'a [u8],
    /// The run's scores, in the same order.
    pub scores: &'a [f64],
}

/// Grad-CAM of a fine-tuned classifier (`head` on the pooled layer4 of
/// `encoder`, scoring `view`-px views) on the cases of `test` that
/// [`pick_cases`] picks at `threshold`.
///
/// # Errors
/// Sizes that disagree (named), or a failing forward or backward pass.
pub fn explain(
    encoder: &ResNet,
    head: &candle_nn::Linear,
    view: usize,
    test: &TestImages,
    threshold: f64,
) -> Result<GradCams> {
    let n = test.images.len();
    if test.ids.len() != n || test.labels.len() != n || test.scores.len() != n {
        return Err(Error::Eval(format!(
            "Grad-CAM: {n} test images but {} ids, {} labels and {} scores",
            test.ids.len(),
            test.labels.len(),
            test.scores.len()
        )));
    }
    let picks = pick_cases(test.scores, test.labels, threshold, CASES_PER_KIND);
    let mut cases = Vec::new();
    if !picks.is_empty() {
        let views: Vec<augment::Chw> = picks
            .iter()
            .map(|&(_, i)| augment::tta_view(test.images[i], view, (0, false)))
            .collect();
        let x = augment::stack(views, encoder.device())?;
        let cams = classifier_cams(encoder, head, &x)?;
        for (&(kind, i), (logit, maps)) in picks.iter().zip(cams) {
            cases.push(CamCase {
                kind,
                index: i,
                id: test.ids[i].clone(),
                label: test.labels[i],
                score: test.scores[i],
                view_logit: logit,
                image_png: view_png(test.images[i], view, &test.ids[i])?,
                maps,
            });
        }
    }
    Ok(GradCams {
        threshold,
        view,
        cases,
    })
}

/// The whole image at `view` px (the model's view, before normalisation)
/// as PNG bytes in hex.
fn view_png(img: &RgbImage, view: usize, id: &str) -> Result<String> {
    let v = augment::resize_full(img, view);
    let plane = v.h * v.w;
    let mut rgb = vec![0u8; plane * 3];
    for p in 0..plane {
        for c in 0..3 {
            rgb[p * 3 + c] = (v.data[c * plane + p] * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    let im = image::RgbImage::from_raw(v.w as u32, v.h as u32, rgb)
        .ok_or_else(|| Error::Eval(format!("Grad-CAM image {id}: buffer size")))?;
    let mut png = Vec::new();
    im.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Eval(format!("Grad-CAM image {id}: {e}")))?;
    Ok(hex::encode(png))
}
