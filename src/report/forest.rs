//! Forest plots: one row per comparison, its estimate as a square and its
//! 95 % interval as a whisker, a dashed line at no difference, the row's
//! name on the left and its numbers (estimate, interval, p) on the right;
//! rows in groups under a heading (one group per test set).

use crate::report::canvas::{
    AXIS, Align, BLACK, Canvas, GRID, REFERENCE, Rgb, Stroke, TextStyle, WHITE, text_width,
};
use crate::report::chart::{Axis, Rect, Scale, nice_ticks, ticks};

/// One comparison.
#[derive(Debug, Clone)]
pub struct ForestRow {
    pub label: String,
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    /// Printed right of the plot (estimate, interval, p).
    pub note: String,
    pub color: Rgb,
}

/// Rows under one heading.
#[derive(Debug, Clone)]
pub struct ForestGroup {
    pub title: String,
    pub rows: Vec<ForestRow>,
}

#[derive(Debug, Clone)]
pub struct Forest {
    pub title: String,
    pub xlabel: String,
    pub groups: Vec<ForestGroup>,
}

const WIDTH: f64 = 720.0;
const ROW: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const TEXT: f64 = 11.0;

/// The plot's size in units.
pub fn size(f: &Forest) -> (f64, f64) {
    let rows: usize = f.groups.iter().map(|g| g.rows.len() + 1).sum();
    (WIDTH, TOP + rows.max(1) as f64 * ROW + BOTTOM)
}

fn finite(r: &ForestRow) -> bool {
    r.estimate.is_finite() && r.lo.is_finite() && r.hi.is_finite()
}

/// The x axis: every interval and 0, padded, widened to round ticks.
fn x_axis(f: &Forest) -> Axis {
    let rows = f.groups.iter().flat_map(|g| &g.rows).filter(|r| finite(r));
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for r in rows {
        lo = lo.min(r.lo).min(r.estimate);
        hi = hi.max(r.hi).max(r.estimate);
    }
    if hi - lo < 1e-6 {
        (lo, hi) = (lo - 0.05, hi + 0.05);
    }
    let pad = (hi - lo) * 0.06;
    let t = nice_ticks((lo - pad, hi + pad), 5);
    let step = if t.len() >= 2 { t[1] - t[0] } else { 0.05 };
    let a = ((lo - pad) / step).floor() * step;
    let b = ((hi + pad) / step).ceil() * step;
    Axis::linear(&f.xlabel, (a, b))
}

/// Draws the forest plot on `c` (size from [`size`]).
pub fn draw(f: &Forest, c: &mut impl Canvas) {
    let (w, h) = size(f);
    let rows = f.groups.iter().flat_map(|g| &g.rows);
    let label_w = rows
        .clone()
        .map(|r| text_width(&r.label, TEXT))
        .fold(80.0, f64::max)
        .min(240.0)
        + 24.0;
    let note_w = rows
        .map(|r| text_width(&r.note, TEXT))
        .fold(60.0, f64::max)
        .min(280.0)
        + 16.0;
    let plot = Rect {
        x: label_w,
        y: TOP,
        w: (w - label_w - note_w).max(120.0),
        h: h - TOP - BOTTOM,
    };
    let x = x_axis(f);
    let s = Scale::new(plot, &x, &Axis::linear("", (0.0, 1.0)));
    c.rect(0.0, 0.0, w, h, Some(WHITE), None);
    c.text(
        (w / 2.0, 18.0),
        &f.title,
        TextStyle::new(14.0, Align::Middle),
    );
    for (v, label) in ticks(&x) {
        let (px, _) = s.map((v, 0.0));
        c.polyline(
            &[(px, plot.y), (px, plot.y + plot.h)],
            Stroke::solid(GRID, 1.0),
        );
        c.text(
            (px, plot.y + plot.h + 12.0),
            &label,
            TextStyle::new(TEXT, Align::Middle),
        );
    }
    c.rect(plot.x, plot.y, plot.w, plot.h, None, Some(AXIS));
    let (zx, _) = s.map((0.0, 0.0));
    c.polyline(
        &[(zx, plot.y), (zx, plot.y + plot.h)],
        Stroke::dashed(REFERENCE, 1.5),
    );
    c.text(
        (plot.x + plot.w / 2.0, plot.y + plot.h + 32.0),
        &f.xlabel,
        TextStyle::new(12.0, Align::Middle),
    );
    let mut y = TOP + ROW / 2.0;
    for g in &f.groups {
        c.text(
            (8.0, y),
            &g.title,
            TextStyle {
                color: BLACK,
                ..TextStyle::new(12.0, Align::Start)
            },
        );
        y += ROW;
        for r in &g.rows {
            c.text((16.0, y), &r.label, TextStyle::new(TEXT, Align::Start));
            c.text(
                (plot.x + plot.w + 8.0, y),
                &r.note,
                TextStyle::new(TEXT, Align::Start),
            );
            if finite(r) {
                let (a, _) = s.map((r.lo, 0.0));
                let (b, _) = s.map((r.hi, 0.0));
                let (e, _) = s.map((r.estimate, 0.0));
                let st = Stroke::solid(r.color, 2.0);
                c.polyline(&[(a, y), (b, y)], st);
                c.polyline(&[(a, y - 4.0), (a, y + 4.0)], st);
                c.polyline(&[(b, y - 4.0), (b, y + 4.0)], st);
                c.rect(e - 4.0, y - 4.0, 8.0, 8.0, Some(r.color), None);
            }
            y += ROW;
        }
    }
}
