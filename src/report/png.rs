//! Charts as PNG (plotters' bitmap backend, encoded with `image`), the same
//! charts as [`super::svg`] at twice the size: the [`Canvas`] over a plotters
//! drawing area, and the charts of [`super::chart`] and [`super::forest`]
//! through it. Text is drawn with an embedded subset of DejaVu Sans
//! (`assets/fonts/`), so no system font is needed.

use std::io::Cursor;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::report::canvas::{self, Align, Canvas, Rgb, Stroke, TextStyle, dashes, font};
use crate::report::chart::{self, Chart};
use crate::report::forest::{self, Forest};
use crate::report::gradcam::{self, CamFigure};
use crate::report::svg::{Series, line_spec};

/// PNG pixels per chart unit.
pub const SCALE: f64 = 2.0;

/// Width and height of a line chart, in pixels (the SVG's 480 x 400, doubled).
pub const WIDTH: u32 = (chart::SIZE.0 * SCALE) as u32;
pub const HEIGHT: u32 = (chart::SIZE.1 * SCALE) as u32;

/// The curve colours, in series order (the SVG's palette).
pub const COLORS: [(u8, u8, u8); 6] = canvas::PALETTE;

/// Where a line chart's plot area lies (when its legend fits inside): left,
/// right, top and bottom margins in pixels.
pub const MARGINS: (u32, u32, u32, u32) = (
    (chart::MARGINS.0 * SCALE) as u32,
    (chart::MARGINS.1 * SCALE) as u32,
    (chart::MARGINS.2 * SCALE) as u32,
    (chart::MARGINS.3 * SCALE) as u32,
);

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Report(format!("PNG chart: {e}"))
}

fn rgb((r, g, b): Rgb) -> RGBColor {
    RGBColor(r, g, b)
}

/// A [`Canvas`] over a plotters bitmap; the first drawing error is kept.
struct PngCanvas<'a, 'b> {
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    font: &'static str,
    error: Option<Error>,
}

impl PngCanvas<'_, '_> {
    fn keep<T, E: std::fmt::Display>(&mut self, r: std::result::Result<T, E>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(draw_err(e));
        }
    }
}

fn px((x, y): (f64, f64)) -> (i32, i32) {
    ((x * SCALE).round() as i32, (y * SCALE).round() as i32)
}

impl Canvas for PngCanvas<'_, '_> {
    fn polyline(&mut self, points: &[(f64, f64)], stroke: Stroke) {
        let style = rgb(stroke.color).stroke_width((stroke.width * SCALE).round().max(1.0) as u32);
        let runs = match stroke.dash {
            Some((on, off)) => dashes(points, on, off),
            None => vec![points.to_vec()],
        };
        for run in runs {
            let pts: Vec<(i32, i32)> = run.into_iter().map(px).collect();
            let r = self.area.draw(&PathElement::new(pts, style));
            self.keep(r);
        }
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Option<Rgb>, stroke: Option<Rgb>) {
        let (a, b) = (px((x, y)), px((x + w, y + h)));
        if let Some(f) = fill {
            let r = self.area.draw(&Rectangle::new([a, b], rgb(f).filled()));
            self.keep(r);
        }
        if let Some(s) = stroke {
            let r = self
                .area
                .draw(&Rectangle::new([a, b], rgb(s).stroke_width(2)));
            self.keep(r);
        }
    }

    fn dot(&mut self, center: (f64, f64), radius: f64, fill: Rgb) {
        let r = self.area.draw(&Circle::new(
            px(center),
            (radius * SCALE).round() as i32,
            rgb(fill).filled(),
        ));
        self.keep(r);
    }

    fn text(&mut self, at: (f64, f64), text: &str, st: TextStyle) {
        if text.is_empty() {
            return;
        }
        let h = match st.align {
            Align::Start => HPos::Left,
            Align::Middle => HPos::Center,
            Align::End => HPos::Right,
        };
        // ab_glyph's pixel size is the ascent-to-descent height (1.164 em):
        // the same glyph widths as the SVG's font-size.
        let mut style = (self.font, st.size * SCALE * 1.164)
            .into_font()
            .color(&rgb(st.color))
            .pos(Pos::new(h, VPos::Center));
        if st.vertical {
            style = style.transform(FontTransform::Rotate270);
        }
        let r = self.area.draw(&Text::new(text.to_string(), px(at), style));
        self.keep(r);
    }

    fn image(&mut self, x: f64, y: f64, w: f64, h: f64, img: &image::RgbImage) {
        let (x0, y0) = px((x, y));
        let (x1, y1) = px((x + w, y + h));
        let (pw, ph) = ((x1 - x0).max(1) as u32, (y1 - y0).max(1) as u32);
        let scaled = image::imageops::resize(img, pw, ph, image::imageops::FilterType::Triangle);
        for (dx, dy, p) in scaled.enumerate_pixels() {
            let r = self.area.draw_pixel(
                (x0 + dx as i32, y0 + dy as i32),
                &RGBColor(p.0[0], p.0[1], p.0[2]),
            );
            self.keep(r);
        }
    }
}

/// Draws with `f` on a white `size` (units) bitmap; the PNG bytes.
fn render(size: (f64, f64), f: impl FnOnce(&mut PngCanvas)) -> Result<Vec<u8>> {
    let font = font()?;
    let (w, h) = (
        (size.0 * SCALE).round() as u32,
        (size.1 * SCALE).round() as u32,
    );
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let mut c = PngCanvas {
            area: &area,
            font,
            error: None,
        };
        f(&mut c);
        if let Some(e) = c.error {
            return Err(e);
        }
        area.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::Report("PNG chart: buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(draw_err)?;
    Ok(png)
}

/// `c` as PNG bytes (`c.size` times [`SCALE`] pixels).
pub fn chart(c: &Chart) -> Result<Vec<u8>> {
    render(c.size, |canvas| chart::draw(c, canvas))
}

/// `f` as PNG bytes.
pub fn gradcam(f: &CamFigure) -> Result<Vec<u8>> {
    render(gradcam::size(f), |canvas| gradcam::draw(f, canvas))
}

/// `f` as PNG bytes.
pub fn forest(f: &Forest) -> Result<Vec<u8>> {
    render(forest::size(f), |canvas| forest::draw(f, canvas))
}

/// The chart of [`super::svg::line_chart`] as PNG bytes, `WIDTH` x `HEIGHT`.
pub fn line_chart(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    x: (f64, f64),
    y: (f64, f64),
    diagonal: bool,
) -> Result<Vec<u8>> {
    chart(&line_spec(title, xlabel, ylabel, series, x, y, diagonal))
}
