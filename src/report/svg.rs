//! Charts as standalone SVG (inlined in report.html): the [`Canvas`] that
//! writes SVG elements, and the charts of [`super::chart`] and
//! [`super::forest`] through it. Text is SVG `<text>` in DejaVu Sans (the
//! PNGs' font) falling back to the browser's sans-serif, so no font file is
//! needed.

use std::fmt::Write;

use crate::report::canvas::{Align, Canvas, Rgb, Stroke, TextStyle, color};
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::forest::{self, Forest};
use crate::report::gradcam::{self, CamFigure};

/// One polyline of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex((r, g, b): Rgb) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// A [`Canvas`] that appends SVG elements to a string.
pub struct SvgCanvas {
    body: String,
    size: (f64, f64),
}

impl SvgCanvas {
    pub fn new(size: (f64, f64)) -> SvgCanvas {
        SvgCanvas {
            body: String::new(),
            size,
        }
    }

    /// The finished document; `kind` goes into a `data-chart` attribute.
    pub fn finish(self, kind: &str) -> String {
        let (w, h) = self.size;
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Verdana, sans-serif" data-chart="{}">{}</svg>"#,
            esc(kind),
            self.body
        )
    }
}

impl Canvas for SvgCanvas {
    fn polyline(&mut self, points: &[(f64, f64)], stroke: Stroke) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.2},{y:.2}"))
            .collect();
        let dash = stroke
            .dash
            .map(|(a, b)| format!(r#" stroke-dasharray="{a} {b}""#))
            .unwrap_or_default();
        let _ = write!(
            self.body,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}"{dash} points="{}"/>"#,
            hex(stroke.color),
            stroke.width,
            pts.join(" ")
        );
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Option<Rgb>, stroke: Option<Rgb>) {
        let _ = write!(
            self.body,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{}" stroke="{}"/>"#,
            fill.map(hex).unwrap_or_else(|| "none".into()),
            stroke.map(hex).unwrap_or_else(|| "none".into()),
        );
    }

    fn dot(&mut self, (x, y): (f64, f64), radius: f64, fill: Rgb) {
        let _ = write!(
            self.body,
            r#"<circle cx="{x:.2}" cy="{y:.2}" r="{radius}" fill="{}"/>"#,
            hex(fill)
        );
    }

    fn text(&mut self, (x, y): (f64, f64), text: &str, st: TextStyle) {
        if text.is_empty() {
            return;
        }
        let anchor = match st.align {
            Align::Start => "start",
            Align::Middle => "middle",
            Align::End => "end",
        };
        let rot = if st.vertical {
            format!(r#" transform="rotate(-90 {x:.2} {y:.2})""#)
        } else {
            String::new()
        };
        let _ = write!(
            self.body,
            r#"<text x="{x:.2}" y="{y:.2}" font-size="{}" text-anchor="{anchor}" dominant-baseline="central" fill="{}"{rot}>{}</text>"#,
            st.size,
            hex(st.color),
            esc(text)
        );
    }
    fn image(&mut self, x: f64, y: f64, w: f64, h: f64, img: &image::RgbImage) {
        let mut png = Vec::new();
        if img
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .is_err()
        {
            // In-memory PNG encoding of a well-formed buffer does not fail;
            // should it, the box stays visibly empty.
            self.rect(x, y, w, h, None, Some((0x99, 0x99, 0x99)));
            return;
        }
        let _ = write!(
            self.body,
            r#"<image x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" preserveAspectRatio="none" href="data:image/png;base64,{}"/>"#,
            base64(&png)
        );
    }
}

/// Standard base64 with padding (RFC 4648), for data URIs.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `chart` as an SVG document.
pub fn chart(c: &Chart, kind: &str) -> String {
    let mut canvas = SvgCanvas::new(c.size);
    chart::draw(c, &mut canvas);
    canvas.finish(kind)
}

/// `f` as an SVG document.
pub fn gradcam(f: &CamFigure, kind: &str) -> String {
    let mut canvas = SvgCanvas::new(gradcam::size(f));
    gradcam::draw(f, &mut canvas);
    canvas.finish(kind)
}

/// `f` as an SVG document.
pub fn forest(f: &Forest, kind: &str) -> String {
    let mut canvas = SvgCanvas::new(forest::size(f));
    forest::draw(f, &mut canvas);
    canvas.finish(kind)
}

/// The chart of plain lines (ROC and loss curves) that [`line_chart`] and
/// [`super::png::line_chart`] draw.
pub fn line_spec(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    x: (f64, f64),
    y: (f64, f64),
    diagonal: bool,
) -> Chart {
    Chart {
        title: title.into(),
        x: Axis::linear(xlabel, x),
        y: Axis::linear(ylabel, y),
        curves: series
            .iter()
            .enumerate()
            .map(|(i, s)| Curve::line(&s.label, s.points.clone(), color(i)))
            .collect(),
        diagonal,
        hlines: Vec::new(),
        size: chart::SIZE,
    }
}

/// A line chart with axes from `x` and `y` ranges, a legend where it covers
/// no curve, and optionally the diagonal (for ROC curves).
pub fn line_chart(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    x: (f64, f64),
    y: (f64, f64),
    diagonal: bool,
) -> String {
    chart(
        &line_spec(title, xlabel, ylabel, series, x, y, diagonal),
        "line",
    )
}
