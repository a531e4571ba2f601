//! Where the fine-tuned models look: per fine-tuning arm and init (the
//! largest label fraction, the first seed) a figure of the test images
//! Grad-CAM explained ([`crate::eval::gradcam`]): a column per image (the
//! surest true positives, then the missed melanomas), its view as the model
//! saw it, then the map of each stage overlaid, upsampled bilinearly and
//! scaled to its own maximum; a colour bar under it. Drawn once on a
//! [`Canvas`] (SVG and PNG).

use crate::error::{Error, Result};
use crate::eval::gradcam::{CaseKind, Heatmap};
use crate::protocol::{ArmKind, ArmResult};
use crate::report::canvas::{AXIS, Align, Canvas, PALETTE, Rgb, TextStyle, WHITE};
use crate::report::format::{fmt_pct, init_name};

/// A panel's side, in units.
const PANEL: f64 = 96.0;
const GAP: f64 = 8.0;
/// Room for the row labels.
const LEFT: f64 = 92.0;
const TOP: f64 = 34.0;
const HEADER_ROW: f64 = 12.0;
const HEADER_ROWS: f64 = 4.0;
/// How much of the overlay's colour goes over the image.
const ALPHA: f32 = 0.45;

/// One explained image: its header and its panels.
#[derive(Debug, Clone)]
pub struct Column {
    pub kind: CaseKind,
    pub id: String,
    pub label: u8,
    /// The run's score (a logit).
    pub score: f64,
    pub image: image::RgbImage,
    /// Per stage row: the image with the map overlaid, or `None` where the
    /// map is zero everywhere.
    pub overlays: Vec<Option<image::RgbImage>>,
}

/// The Grad-CAM figure of one run.
#[derive(Debug, Clone)]
pub struct CamFigure {
    pub title: String,
    /// The view size (px) the model saw.
    pub view: usize,
    /// Per stage row: (stage, cells high, cells wide).
    pub stages: Vec<(usize, usize, usize)>,
    pub columns: Vec<Column>,
    /// The run's ensemble size (`finetune.ensemble`; 1 = one model). An
    /// ensemble's images are picked and scored by its mean logit, its maps
    /// are its first member's.
    pub ensemble: usize,
}

/// The colour of a map value in [0, 1]: blue, cyan, yellow, red.
pub fn colormap(v: f32) -> Rgb {
    const STOPS: [(f32, [f32; 3]); 4] = [
        (0.0, [0.0, 0.0, 255.0]),
        (1.0 / 3.0, [0.0, 255.0, 255.0]),
        (2.0 / 3.0, [255.0, 255.0, 0.0]),
        (1.0, [255.0, 0.0, 0.0]),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let k = STOPS
        .windows(2)
        .position(|w| v <= w[1].0)
        .unwrap_or(STOPS.len() - 2);
    let ((a, ca), (b, cb)) = (STOPS[k], STOPS[k + 1]);
    let t = (v - a) / (b - a);
    let c = |i: usize| (ca[i] + (cb[i] - ca[i]) * t).round() as u8;
    (c(0), c(1), c(2))
}

/// `img` with `map` (upsampled to it, scaled to its maximum) overlaid in
/// [`colormap`] colours at [`ALPHA`]; `None` when the map is zero
/// everywhere.
pub fn overlay(img: &image::RgbImage, map: &Heatmap) -> Option<image::RgbImage> {
    let max = map.max();
    if max <= 0.0 || !max.is_finite() {
        return None;
    }
    let (w, h) = img.dimensions();
    let up = map.upsample(h as usize, w as usize);
    let mut out = img.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (r, g, b) = colormap(up[y as usize * w as usize + x as usize] / max);
        for (ch, c) in p.0.iter_mut().zip([r, g, b]) {
            *ch = (f32::from(*ch) * (1.0 - ALPHA) + f32::from(c) * ALPHA).round() as u8;
        }
    }
    Some(out)
}

/// One figure per fine-tuning arm and init that carries Grad-CAM: of its
/// runs, the largest fraction and then the smallest seed. Each entry is
/// (file stem, figure).
///
/// # Errors
/// A case whose image does not decode or whose maps disagree with the
/// run's other cases, named by run and image.
pub fn figures(results: &[ArmResult]) -> Result<Vec<(String, CamFigure)>> {
    let mut picked: Vec<&ArmResult> = Vec::new();
    for r in results
        .iter()
        .filter(|r| r.kind == ArmKind::Finetune && r.gradcam.is_some())
    {
        match picked
            .iter_mut()
            .find(|p| p.arm == r.arm && p.init == r.init)
        {
            Some(p) => {
                if r.fraction > p.fraction || (r.fraction == p.fraction && r.seed < p.seed) {
                    *p = r;
                }
            }
            None => picked.push(r),
        }
    }
    picked
        .into_iter()
        .filter_map(|r| {
            let g = r.gradcam.as_ref()?;
            (!g.cases.is_empty()).then_some((r, g))
        })
        .map(|(r, g)| {
            let who = format!("run {} / {} / {} / seed {}", r.arm, r.init, r.fraction, r.seed);
            let stages: Vec<(usize, usize, usize)> =
                g.cases[0].maps.iter().map(|m| (m.stage, m.h, m.w)).collect();
            let mut columns = Vec::new();
            for c in &g.cases {
                let shape: Vec<(usize, usize, usize)> =
                    c.maps.iter().map(|m| (m.stage, m.h, m.w)).collect();
                if shape != stages || c.maps.iter().any(|m| m.values.len() != m.h * m.w) {
                    return Err(Error::Report(format!(
                        "{who}: Grad-CAM maps of image {} are {shape:?}, the run's first image's {stages:?}",
                        c.id
                    )));
                }
                let image = c
                    .image()
                    .map_err(|e| Error::Report(format!("{who}: {e}")))?;
                columns.push(Column {
                    kind: c.kind,
                    id: c.id.clone(),
                    label: c.label,
                    score: c.score,
                    overlays: c.maps.iter().map(|m| overlay(&image, m)).collect(),
                    image,
                });
            }
            let stem = crate::report::format::file_stem(&format!("gradcam_{}_{}", r.arm, r.init));
            let ensemble = r.members.len().max(1);
            let fig = CamFigure {
                title: format!(
                    "Grad-CAM: {}, {}, {} % labels, seed {}{}",
                    r.arm,
                    init_name(&r.init),
                    fmt_pct(r.fraction),
                    r.seed,
                    if ensemble > 1 {
                        format!(" (ensemble of {ensemble}: the maps of its first member)")
                    } else {
                        String::new()
                    }
                ),
                ensemble,
                view: g.view,
                stages,
                columns,
            };
            Ok((stem, fig))
        })
        .collect()
}

/// The figure's size in units.
pub fn size(f: &CamFigure) -> (f64, f64) {
    let w = LEFT + f.columns.len() as f64 * (PANEL + GAP) + GAP;
    let h = panels_top() + (1 + f.stages.len()) as f64 * (PANEL + GAP) + 48.0;
    (w.max(480.0), h)
}

fn panels_top() -> f64 {
    TOP + HEADER_ROWS * HEADER_ROW + 6.0
}

fn stage_name(stage: usize) -> String {
    match stage {
        4 => "layer4 (last)".into(),
        s => format!("layer{s}"),
    }
}

/// Draws `f` on `c`.
pub fn draw(f: &CamFigure, c: &mut impl Canvas) {
    let (w, h) = size(f);
    c.rect(0.0, 0.0, w, h, Some(WHITE), None);
    c.text(
        (w / 2.0, 18.0),
        &f.title,
        TextStyle::new(14.0, Align::Middle),
    );
    let top = panels_top();
    let row_y = |r: usize| top + r as f64 * (PANEL + GAP);
    // Row labels.
    let label = |c: &mut dyn FnMut((f64, f64), &str), r: usize, lines: &[String]| {
        let mid = row_y(r) + PANEL / 2.0;
        let y0 = mid - (lines.len() as f64 - 1.0) * 7.0;
        for (k, l) in lines.iter().enumerate() {
            c((LEFT - 8.0, y0 + k as f64 * 14.0), l);
        }
    };
    {
        let mut put = |at: (f64, f64), s: &str| c.text(at, s, TextStyle::new(11.0, Align::End));
        label(&mut put, 0, &["image".into(), "(model's view)".into()]);
        for (k, &(stage, sh, sw)) in f.stages.iter().enumerate() {
            label(
                &mut put,
                k + 1,
                &[stage_name(stage), format!("{sh}x{sw} cells")],
            );
        }
    }
    for (i, col) in f.columns.iter().enumerate() {
        let x = LEFT + GAP + i as f64 * (PANEL + GAP);
        let cx = x + PANEL / 2.0;
        let (kind, color) = match col.kind {
            CaseKind::TruePositive => ("true positive", PALETTE[2]),
            CaseKind::Missed => ("missed", PALETTE[1]),
        };
        let line = |k: f64| TOP + HEADER_ROW * (k + 0.5);
        c.text(
            (cx, line(0.0)),
            kind,
            TextStyle {
                color,
                ..TextStyle::new(11.0, Align::Middle)
            },
        );
        c.text((cx, line(1.0)), &col.id, TextStyle::new(9.0, Align::Middle));
        let p = 1.0 / (1.0 + (-col.score).exp());
        let what = if col.label == 1 { "melanoma" } else { "other" };
        c.text(
            (cx, line(2.0)),
            &format!("{what}, p {p:.3}"),
            TextStyle::new(9.0, Align::Middle),
        );
        c.text(
            (cx, line(3.0)),
            &format!("logit {:.2}", col.score),
            TextStyle::new(9.0, Align::Middle),
        );
        c.image(x, row_y(0), PANEL, PANEL, &col.image);
        c.rect(x, row_y(0), PANEL, PANEL, None, Some(AXIS));
        for (k, o) in col.overlays.iter().enumerate() {
            let y = row_y(k + 1);
            match o {
                Some(img) => c.image(x, y, PANEL, PANEL, img),
                None => {
                    c.image(x, y, PANEL, PANEL, &col.image);
                    c.rect(
                        x + 18.0,
                        y + PANEL / 2.0 - 9.0,
                        PANEL - 36.0,
                        18.0,
                        Some(WHITE),
                        None,
                    );
                    c.text(
                        (cx, y + PANEL / 2.0),
                        "map all zero",
                        TextStyle::new(9.0, Align::Middle),
                    );
                }
            }
            c.rect(x, y, PANEL, PANEL, None, Some(AXIS));
        }
    }
    // The colour bar.
    let y = row_y(1 + f.stages.len()) + 4.0;
    let (x0, bw) = (LEFT + GAP, 200.0);
    let steps = 50;
    for k in 0..steps {
        let v = (k as f32 + 0.5) / steps as f32;
        let blend = |ch: u8| (128.0 * (1.0 - ALPHA) + f32::from(ch) * ALPHA).round() as u8;
        let (r, g, b) = colormap(v);
        c.rect(
            x0 + k as f64 * bw / steps as f64,
            y,
            bw / steps as f64 + 0.5,
            10.0,
            Some((blend(r), blend(g), blend(b))),
            None,
        );
    }
    c.rect(x0, y, bw, 10.0, None, Some(AXIS));
    let small = |a| TextStyle::new(10.0, a);
    c.text((x0, y + 20.0), "0", small(Align::Middle));
    c.text((x0 + bw, y + 20.0), "1", small(Align::Middle));
    c.text(
        (x0, y + 34.0),
        &format!(
            "Grad-CAM / its maximum in the panel, at {:.0} % over the image",
            ALPHA * 100.0
        ),
        small(Align::Start),
    );
}
