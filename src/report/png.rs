//! Line charts as PNG (plotters' bitmap backend, encoded with `image`), the
//! same charts as [`super::svg`]: curves with a legend, axes with ticks and
//! labels, optionally the diagonal. Text is drawn with an embedded subset of
//! DejaVu Sans (`assets/fonts/`), so no system font is needed.

use std::io::Cursor;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};
use crate::report::svg::Series;

/// Width and height of every chart, in pixels (the SVG's 480 x 400, doubled).
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 800;

/// The curve colours, in series order (the SVG's palette).
pub const COLORS: [(u8, u8, u8); 6] = [
    (0x1f, 0x77, 0xb4),
    (0xd6, 0x27, 0x28),
    (0x2c, 0xa0, 0x2c),
    (0x94, 0x67, 0xbd),
    (0xff, 0x7f, 0x0e),
    (0x8c, 0x56, 0x4b),
];

/// Where the plot area lies: left, right, top and bottom margins in pixels.
pub const MARGINS: (u32, u32, u32, u32) = (136, 40, 72, 100);
/// Blank strip left of the y axis title (the rest of the left margin holds
/// that title and the tick labels).
const LEFT_PAD: u32 = 16;

const FONT: &str = "pirlkit-dejavu-sans";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Registers the embedded font with plotters once per process.
fn font() -> Result<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(FONT)
    } else {
        Err(Error::Report(
            "embedded chart font could not be loaded".into(),
        ))
    }
}

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Report(format!("PNG chart: {e}"))
}

/// A usable axis range: finite, increasing; (0, 1) otherwise.
fn range(r: (f64, f64)) -> (f64, f64) {
    if r.0.is_finite() && r.1.is_finite() && r.1 > r.0 {
        r
    } else {
        (0.0, 1.0)
    }
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
    let font = font()?;
    let (x, y) = (range(x), range(y));
    let (l, r, t, b) = MARGINS;
    let mut buf = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        root.draw(&Text::new(
            title.to_string(),
            (WIDTH as i32 / 2, 24),
            (font, 28)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(t)
            .margin_right(r)
            .margin_left(LEFT_PAD)
            .x_label_area_size(b)
            .y_label_area_size(l - LEFT_PAD)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(6)
            .max_light_lines(0)
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .axis_style(RGBColor(0x44, 0x44, 0x44))
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| fmt_tick(*v))
            .label_style((font, 22).into_font().color(&BLACK))
            .axis_desc_style((font, 24).into_font().color(&BLACK))
            .x_desc(xlabel)
            .y_desc(ylabel)
            .draw()
            .map_err(draw_err)?;
        if diagonal {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x.0, y.0), (x.1, y.1)],
                    8,
                    8,
                    RGBColor(0x99, 0x99, 0x99).stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        for (i, se) in series.iter().enumerate() {
            let (cr, cg, cb) = COLORS[i % COLORS.len()];
            let color = RGBColor(cr, cg, cb);
            let pts: Vec<(f64, f64)> = se
                .points
                .iter()
                .copied()
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(4)))
                .map_err(draw_err)?
                .label(se.label.as_str())
                .legend(move |(lx, ly)| {
                    PathElement::new(vec![(lx, ly), (lx + 36, ly)], color.stroke_width(4))
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(if diagonal {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .margin(16)
                .legend_area_size(44)
                .label_font((font, 22).into_font().color(&BLACK))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(0x99, 0x99, 0x99))
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| Error::Report("PNG chart: buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(draw_err)?;
    Ok(png)
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
