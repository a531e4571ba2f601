//! Line charts with markers and error bars (ROC, loss, reliability, label
//! efficiency), laid out once and drawn on any [`Canvas`].
//!
//! The legend never covers data: it goes in the first corner of the plot
//! area (upper right, lower right, upper left, lower left) that no curve,
//! marker, error bar or reference line passes through, and below the plot
//! (the plot shrinks to make room) when every corner is taken. Tick labels
//! on an axis share one number of decimals.

use crate::report::canvas::{
    AXIS, Align, Canvas, GRID, REFERENCE, Rgb, Stroke, TextStyle, WHITE, text_width,
};

/// The chart size in units (SVG user units; PNG pixels are twice this).
pub const SIZE: (f64, f64) = (480.0, 400.0);
/// Left, right, top and bottom margins around the plot area, in units.
pub const MARGINS: (f64, f64, f64, f64) = (68.0, 20.0, 36.0, 50.0);

const TITLE: f64 = 14.0;
const TICK: f64 = 11.0;
const LABEL: f64 = 12.0;
const LEGEND: f64 = 11.0;
const LEGEND_ROW: f64 = 16.0;
const LEGEND_SAMPLE: f64 = 24.0;
const PAD: f64 = 6.0;

/// An axis: its title, range, scale and ticks.
#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub range: (f64, f64),
    /// Logarithmic scale (the range must be positive).
    pub log: bool,
    /// Tick positions; empty: round steps over the range (decades on a log
    /// axis).
    pub ticks: Vec<f64>,
    /// Tick labels as percentages (the value times 100).
    pub percent: bool,
}

impl Axis {
    pub fn linear(label: &str, range: (f64, f64)) -> Axis {
        Axis {
            label: label.into(),
            range,
            log: false,
            ticks: Vec::new(),
            percent: false,
        }
    }
}

/// One curve: a polyline (optionally with markers and per-point vertical
/// intervals).
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend text; empty: not in the legend.
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Per point, the interval `(lo, hi)` drawn as an error bar; empty for
    /// none.
    pub intervals: Vec<(f64, f64)>,
    pub color: Rgb,
    pub dashed: bool,
    pub markers: bool,
    /// Horizontal offset in units, so that error bars of curves at the same
    /// x do not overlap.
    pub dodge: f64,
    /// Points only (a scatter plot): no line, small dots.
    pub scatter: bool,
}

impl Curve {
    /// A plain solid line.
    pub fn line(label: &str, points: Vec<(f64, f64)>, color: Rgb) -> Curve {
        Curve {
            label: label.into(),
            points,
            intervals: Vec::new(),
            color,
            dashed: false,
            markers: false,
            dodge: 0.0,
            scatter: false,
        }
    }

    /// A scatter of points.
    pub fn scatter(label: &str, points: Vec<(f64, f64)>, color: Rgb) -> Curve {
        Curve {
            scatter: true,
            ..Curve::line(label, points, color)
        }
    }
}

/// A chart: axes, curves and reference lines.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub curves: Vec<Curve>,
    /// The dashed line from the lower left to the upper right corner.
    pub diagonal: bool,
    /// Dashed horizontal reference lines at these y values.
    pub hlines: Vec<f64>,
    pub size: (f64, f64),
}

/// A rectangle in units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    fn contains(&self, (x, y): (f64, f64), margin: f64) -> bool {
        x >= self.x - margin
            && x <= self.x + self.w + margin
            && y >= self.y - margin
            && y <= self.y + self.h + margin
    }
}

/// Where the parts of a chart go.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub plot: Rect,
    /// The legend box, and how many columns it has.
    pub legend: Option<(Rect, usize)>,
    /// The legend lies below the plot area (no corner was free).
    pub legend_outside: bool,
}

/// Maps data to units inside a plot rectangle.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    plot: Rect,
    x: (f64, f64, bool),
    y: (f64, f64, bool),
}

fn usable(r: (f64, f64), log: bool) -> (f64, f64) {
    let ok = r.0.is_finite() && r.1.is_finite() && r.1 > r.0 && (!log || r.0 > 0.0);
    if ok {
        r
    } else if log {
        (0.1, 1.0)
    } else {
        (0.0, 1.0)
    }
}

impl Scale {
    pub fn new(plot: Rect, x: &Axis, y: &Axis) -> Scale {
        let (x0, x1) = usable(x.range, x.log);
        let (y0, y1) = usable(y.range, y.log);
        Scale {
            plot,
            x: (x0, x1, x.log),
            y: (y0, y1, y.log),
        }
    }
    fn t((lo, hi, log): (f64, f64, bool), v: f64) -> f64 {
        if log {
            (v.max(f64::MIN_POSITIVE).ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (v - lo) / (hi - lo)
        }
    }
    /// Unit coordinates of a data point (clamped to the plot area).
    pub fn map(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let tx = Self::t(self.x, x).clamp(0.0, 1.0);
        let ty = Self::t(self.y, y).clamp(0.0, 1.0);
        (
            self.plot.x + tx * self.plot.w,
            self.plot.y + (1.0 - ty) * self.plot.h,
        )
    }
}

/// Round tick positions over `range` (about `target` of them): steps of 1,
/// 2 or 5 times a power of ten.
pub fn nice_ticks(range: (f64, f64), target: usize) -> Vec<f64> {
    let (lo, hi) = usable(range, false);
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * mag);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// The decades inside a positive range, or its ends if it holds none.
fn decade_ticks((lo, hi): (f64, f64)) -> Vec<f64> {
    let (a, b) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    let t: Vec<f64> = (a..=b).map(|k| 10f64.powi(k)).collect();
    if t.len() >= 2 { t } else { vec![lo, hi] }
}

/// The decimals that print every value of `v` exactly (at most 3).
fn common_decimals(v: &[f64]) -> usize {
    v.iter()
        .map(|&x| {
            (0..=3)
                .find(|&d| {
                    let p = 10f64.powi(d as i32);
                    ((x * p).round() / p - x).abs() <= 1e-9 * x.abs().max(1.0)
                })
                .unwrap_or(3)
        })
        .max()
        .unwrap_or(0)
}

/// An axis's ticks and their labels, all printed with the same decimals.
pub fn ticks(axis: &Axis) -> Vec<(f64, String)> {
    let r = usable(axis.range, axis.log);
    let t = if !axis.ticks.is_empty() {
        axis.ticks.clone()
    } else if axis.log {
        decade_ticks(r)
    } else {
        nice_ticks(r, 5)
    };
    let t: Vec<f64> = t
        .into_iter()
        .filter(|v| v.is_finite() && *v >= r.0 - 1e-12 && *v <= r.1 + 1e-12)
        .collect();
    let shown: Vec<f64> = t
        .iter()
        .map(|v| if axis.percent { v * 100.0 } else { *v })
        .collect();
    let d = common_decimals(&shown);
    t.into_iter()
        .zip(shown)
        .map(|(v, s)| {
            let s = format!("{s:.d$}");
            (v, if s == "-0" { "0".into() } else { s })
        })
        .collect()
}

/// Points along every curve, error bar and reference line (in units), for
/// finding a free corner for the legend.
fn obstacles(chart: &Chart, s: &Scale) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut seg = |a: (f64, f64), b: (f64, f64)| {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let n = (len / 2.0).ceil().max(1.0) as usize;
        for k in 0..=n {
            let t = k as f64 / n as f64;
            out.push((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
        }
    };
    let (x0, x1, _) = s.x;
    let (y0, y1, _) = s.y;
    if chart.diagonal {
        seg(s.map((x0, y0)), s.map((x1, y1)));
    }
    for &h in &chart.hlines {
        seg(s.map((x0, h)), s.map((x1, h)));
    }
    for c in &chart.curves {
        let pts: Vec<(f64, f64)> = finite(&c.points)
            .iter()
            .map(|&p| {
                let (x, y) = s.map(p);
                (x + c.dodge, y)
            })
            .collect();
        for w in pts.windows(2) {
            seg(w[0], w[1]);
        }
        if let [p] = pts[..] {
            seg(p, p);
        }
        for (p, &(lo, hi)) in c.points.iter().zip(&c.intervals) {
            if p.0.is_finite() && lo.is_finite() && hi.is_finite() {
                let (a, b) = (s.map((p.0, lo)), s.map((p.0, hi)));
                seg((a.0 + c.dodge, a.1), (b.0 + c.dodge, b.1));
            }
        }
    }
    out
}

fn finite(p: &[(f64, f64)]) -> Vec<(f64, f64)> {
    p.iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect()
}

/// The legend entries' width (one column) and the legend's size with
/// `cols` columns.
fn legend_size(labels: &[&str], cols: usize) -> (f64, f64, f64) {
    let text = labels
        .iter()
        .map(|l| text_width(l, LEGEND))
        .fold(0.0, f64::max);
    let item = LEGEND_SAMPLE + PAD + text + 2.0 * PAD;
    let rows = labels.len().div_ceil(cols.max(1));
    (
        item,
        PAD + item * cols as f64,
        PAD + rows as f64 * LEGEND_ROW + 2.0,
    )
}

/// Lays the chart out: the plot area and the legend's place.
pub fn layout(chart: &Chart) -> Layout {
    let (w, h) = chart.size;
    let (l, r, t, b) = MARGINS;
    let mut plot = Rect {
        x: l,
        y: t,
        w: w - l - r,
        h: h - t - b,
    };
    let labels: Vec<&str> = chart
        .curves
        .iter()
        .filter(|c| !c.label.is_empty())
        .map(|c| c.label.as_str())
        .collect();
    if labels.is_empty() {
        return Layout {
            plot,
            legend: None,
            legend_outside: false,
        };
    }
    let (_, lw, lh) = legend_size(&labels, 1);
    let scale = Scale::new(plot, &chart.x, &chart.y);
    let obs = obstacles(chart, &scale);
    let inset = 8.0;
    let corners = [
        (plot.x + plot.w - inset - lw, plot.y + inset),
        (plot.x + plot.w - inset - lw, plot.y + plot.h - inset - lh),
        (plot.x + inset, plot.y + inset),
        (plot.x + inset, plot.y + plot.h - inset - lh),
    ];
    let fits = lw + 2.0 * inset <= plot.w && lh + 2.0 * inset <= plot.h;
    if fits {
        for (x, y) in corners {
            let bx = Rect { x, y, w: lw, h: lh };
            if !obs.iter().any(|&p| bx.contains(p, 5.0)) {
                return Layout {
                    plot,
                    legend: Some((bx, 1)),
                    legend_outside: false,
                };
            }
        }
    }
    // Below the plot: as many columns as fit, the plot shrinks.
    let (item, _, _) = legend_size(&labels, 1);
    let cols = ((w - 2.0 * PAD) / item)
        .floor()
        .clamp(1.0, labels.len() as f64) as usize;
    let (_, lw, lh) = legend_size(&labels, cols);
    plot.h -= lh + PAD;
    let bx = Rect {
        x: ((w - lw) / 2.0).max(0.0),
        y: h - lh - PAD,
        w: lw,
        h: lh,
    };
    Layout {
        plot,
        legend: Some((bx, cols)),
        legend_outside: true,
    }
}

/// Draws `chart` on `c`.
pub fn draw(chart: &Chart, c: &mut impl Canvas) {
    let (w, h) = chart.size;
    let lay = layout(chart);
    let p = lay.plot;
    let s = Scale::new(p, &chart.x, &chart.y);
    c.rect(0.0, 0.0, w, h, Some(WHITE), None);
    c.text(
        (w / 2.0, 18.0),
        &chart.title,
        TextStyle::new(TITLE, Align::Middle),
    );
    for (v, label) in ticks(&chart.x) {
        let (x, _) = s.map((v, s.y.0));
        c.polyline(&[(x, p.y), (x, p.y + p.h)], Stroke::solid(GRID, 1.0));
        c.text(
            (x, p.y + p.h + 12.0),
            &label,
            TextStyle::new(TICK, Align::Middle),
        );
    }
    for (v, label) in ticks(&chart.y) {
        let (_, y) = s.map((s.x.0, v));
        c.polyline(&[(p.x, y), (p.x + p.w, y)], Stroke::solid(GRID, 1.0));
        c.text((p.x - 6.0, y), &label, TextStyle::new(TICK, Align::End));
    }
    c.rect(p.x, p.y, p.w, p.h, None, Some(AXIS));
    c.text(
        (p.x + p.w / 2.0, p.y + p.h + 32.0),
        &chart.x.label,
        TextStyle::new(LABEL, Align::Middle),
    );
    c.text(
        (16.0, p.y + p.h / 2.0),
        &chart.y.label,
        TextStyle {
            vertical: true,
            ..TextStyle::new(LABEL, Align::Middle)
        },
    );
    let (x0, x1, _) = s.x;
    let (y0, y1, _) = s.y;
    let reference = Stroke::dashed(REFERENCE, 1.5);
    if chart.diagonal {
        c.polyline(&[s.map((x0, y0)), s.map((x1, y1))], reference);
    }
    for &v in chart.hlines.iter().filter(|v| **v > y0 && **v < y1) {
        c.polyline(&[s.map((x0, v)), s.map((x1, v))], reference);
    }
    for cu in &chart.curves {
        draw_curve(cu, &s, c);
    }
    if let Some((bx, cols)) = lay.legend {
        draw_legend(chart, bx, cols, c);
    }
}

fn draw_curve(cu: &Curve, s: &Scale, c: &mut impl Canvas) {
    let at = |p: (f64, f64)| {
        let (x, y) = s.map(p);
        (x + cu.dodge, y)
    };
    let pts: Vec<(f64, f64)> = finite(&cu.points).into_iter().map(at).collect();
    let stroke = if cu.dashed {
        Stroke::dashed(cu.color, 2.0)
    } else {
        Stroke::solid(cu.color, 2.0)
    };
    if cu.scatter {
        for &q in &pts {
            c.dot(q, 2.2, cu.color);
        }
        return;
    }
    if pts.len() >= 2 {
        c.polyline(&pts, stroke);
    }
    for (p, &(lo, hi)) in cu.points.iter().zip(&cu.intervals) {
        if !(p.0.is_finite() && lo.is_finite() && hi.is_finite()) {
            continue;
        }
        let (a, b) = (at((p.0, lo)), at((p.0, hi)));
        let bar = Stroke::solid(cu.color, 1.5);
        c.polyline(&[a, b], bar);
        c.polyline(&[(a.0 - 3.0, a.1), (a.0 + 3.0, a.1)], bar);
        c.polyline(&[(b.0 - 3.0, b.1), (b.0 + 3.0, b.1)], bar);
    }
    if cu.markers || pts.len() == 1 {
        for &q in &pts {
            c.dot(q, 3.5, cu.color);
        }
    }
}

fn draw_legend(chart: &Chart, bx: Rect, cols: usize, c: &mut impl Canvas) {
    let labeled: Vec<&Curve> = chart
        .curves
        .iter()
        .filter(|c| !c.label.is_empty())
        .collect();
    let labels: Vec<&str> = labeled.iter().map(|c| c.label.as_str()).collect();
    let (item, _, _) = legend_size(&labels, cols);
    c.rect(bx.x, bx.y, bx.w, bx.h, Some(WHITE), Some(REFERENCE));
    for (i, cu) in labeled.iter().enumerate() {
        let (col, row) = (i % cols, i / cols);
        let x = bx.x + PAD + col as f64 * item;
        let y = bx.y + PAD + row as f64 * LEGEND_ROW + LEGEND_ROW / 2.0 - 2.0;
        let stroke = if cu.dashed {
            Stroke::dashed(cu.color, 2.0)
        } else {
            Stroke::solid(cu.color, 2.0)
        };
        if !cu.scatter {
            c.polyline(&[(x, y), (x + LEGEND_SAMPLE, y)], stroke);
        }
        if cu.markers || cu.scatter {
            c.dot((x + LEGEND_SAMPLE / 2.0, y), 3.5, cu.color);
        }
        c.text(
            (x + LEGEND_SAMPLE + PAD, y),
            &cu.label,
            TextStyle::new(LEGEND, Align::Start),
        );
    }
}
