//! What a chart draws on: a [`Canvas`] of lines, rectangles, dots, text
//! and pictures in chart units (the SVG's user units; PNG pixels are a fixed multiple),
//! implemented for SVG ([`super::svg`]) and PNG ([`super::png`]), so a
//! chart's layout is written once. Text is measured with the embedded DejaVu
//! Sans subset (`assets/fonts/`), the font the PNGs draw with.

use std::sync::OnceLock;

use plotters::style::{FontDesc, FontFamily, FontStyle, register_font};

use crate::error::{Error, Result};

/// An sRGB colour.
pub type Rgb = (u8, u8, u8);

/// The curve colours, in order.
pub const PALETTE: [Rgb; 6] = [
    (0x1f, 0x77, 0xb4),
    (0xd6, 0x27, 0x28),
    (0x2c, 0xa0, 0x2c),
    (0x94, 0x67, 0xbd),
    (0xff, 0x7f, 0x0e),
    (0x8c, 0x56, 0x4b),
];

pub const BLACK: Rgb = (0, 0, 0);
pub const WHITE: Rgb = (255, 255, 255);
/// Axes and frames.
pub const AXIS: Rgb = (0x44, 0x44, 0x44);
/// Grid lines.
pub const GRID: Rgb = (0xdd, 0xdd, 0xdd);
/// Reference lines (the ROC diagonal, chance, no difference).
pub const REFERENCE: Rgb = (0x99, 0x99, 0x99);

/// The colour of palette entry `i` (wrapping).
pub fn color(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// Horizontal placement of text relative to its anchor point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Start,
    Middle,
    End,
}

/// A text item: centred vertically on its anchor point.
#[derive(Debug, Clone, Copy)]
pub struct TextStyle {
    pub size: f64,
    pub align: Align,
    /// Rotated a quarter turn anticlockwise (reads bottom to top).
    pub vertical: bool,
    pub color: Rgb,
}

impl TextStyle {
    pub fn new(size: f64, align: Align) -> TextStyle {
        TextStyle {
            size,
            align,
            vertical: false,
            color: BLACK,
        }
    }
}

/// A line's stroke.
#[derive(Debug, Clone, Copy)]
pub struct Stroke {
    pub color: Rgb,
    pub width: f64,
    /// Dash and gap length, in units; `None` for a solid line.
    pub dash: Option<(f64, f64)>,
}

impl Stroke {
    pub fn solid(color: Rgb, width: f64) -> Stroke {
        Stroke {
            color,
            width,
            dash: None,
        }
    }
    pub fn dashed(color: Rgb, width: f64) -> Stroke {
        Stroke {
            color,
            width,
            dash: Some((5.0, 3.0)),
        }
    }
}

/// The drawing operations a chart needs, in chart units, origin top left.
pub trait Canvas {
    fn polyline(&mut self, points: &[(f64, f64)], stroke: Stroke);
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Option<Rgb>, stroke: Option<Rgb>);
    fn dot(&mut self, center: (f64, f64), radius: f64, fill: Rgb);
    fn text(&mut self, at: (f64, f64), text: &str, style: TextStyle);
    /// A picture scaled (smoothly) into the box at `(x, y)`, `w` by `h`.
    fn image(&mut self, x: f64, y: f64, w: f64, h: f64, img: &image::RgbImage);
}

pub(crate) const FONT: &str = "pirlkit-dejavu-sans";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Registers the embedded font with plotters once per process.
pub(crate) fn font() -> Result<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(FONT)
    } else {
        Err(Error::Report(
            "embedded chart font could not be loaded".into(),
        ))
    }
}

/// The width of `text` at font size `size` (CSS pixels, i.e. chart units):
/// the embedded font's advances (ab_glyph's pixel size is the font's
/// ascent-to-descent height, 1.164 em for DejaVu Sans). Falls back to 0.62
/// em per character if the font cannot be read.
pub fn text_width(text: &str, size: f64) -> f64 {
    let fallback = text.chars().count() as f64 * 0.62 * size;
    if font().is_err() {
        return fallback;
    }
    FontDesc::new(FontFamily::Name(FONT), size * 1.164, FontStyle::Normal)
        .box_size(text)
        .map(|(w, _)| w as f64)
        .unwrap_or(fallback)
}

/// The dashes of a polyline: runs of `on` units drawn, `off` units skipped,
/// measured along the line.
pub fn dashes(points: &[(f64, f64)], on: f64, off: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    if on <= 0.0 || points.len() < 2 {
        return vec![points.to_vec()];
    }
    let period = on + off.max(0.0);
    let mut phase = 0.0; // distance into the current period
    let mut cur: Vec<(f64, f64)> = vec![points[0]];
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let mut t = 0.0;
        while t < len {
            let drawing = phase < on;
            let left = if drawing { on - phase } else { period - phase };
            let step = left.min(len - t);
            t += step;
            phase += step;
            let p = (x0 + (x1 - x0) * t / len, y0 + (y1 - y0) * t / len);
            if drawing {
                cur.push(p);
            }
            if drawing && phase >= on - 1e-12 {
                out.push(std::mem::take(&mut cur));
            }
            if phase >= period - 1e-12 {
                phase = 0.0;
                cur = vec![p];
            }
        }
    }
    if cur.len() >= 2 && phase < on {
        out.push(cur);
    }
    out.retain(|d| d.len() >= 2);
    out
}
