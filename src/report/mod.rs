//! Reports: the protocol report ([`protocol`]: the headline comparisons and
//! figures, calibration, subgroups, external test sets, every run's tables
//! via polars, report.html and report.md), its provenance ([`manifest`]),
//! and charts ([`chart`], [`forest`]) drawn once on a [`canvas`] as SVG
//! ([`svg`]) and PNG ([`png`]).

pub mod calibration;
pub mod canvas;
pub mod chart;
pub mod embedding;
pub mod figures;
pub mod forest;
pub mod format;
pub mod gradcam;
pub mod headline;
pub mod inputs;
pub mod manifest;
pub mod page;
pub mod png;
pub mod protocol;
pub mod run_stats;
pub mod seeds;
pub mod sets;
pub mod subgroups;
pub mod svg;
pub mod tables;

use polars::prelude::*;

use crate::report::format::{DASH, format_p, md_cell};

/// Whether a column holds p-values (printed with [`format_p`]).
fn is_p(name: &str) -> bool {
    name == "p" || name.ends_with("_p")
}

fn cell(s: &Column, i: usize) -> String {
    let float = |v: f64| {
        if !v.is_finite() {
            DASH.to_string()
        } else if is_p(s.name()) {
            format_p(v)
        } else {
            format!("{v:.3}")
        }
    };
    match s.get(i) {
        Ok(AnyValue::Float64(v)) => float(v),
        Ok(AnyValue::Float32(v)) => float(v as f64),
        Ok(AnyValue::Null) => DASH.into(),
        Ok(AnyValue::String(v)) => md_cell(v),
        Ok(AnyValue::StringOwned(v)) => md_cell(&v),
        Ok(v) => md_cell(&v.to_string()),
        Err(_) => DASH.into(),
    }
}

/// A GitHub-flavoured Markdown table of the frame: floats with three
/// decimals, p-values (columns `p`, `*_p`) as [`format_p`] prints them, and
/// "–" for missing or non-finite values.
pub fn markdown_table(df: &DataFrame) -> String {
    let cols = df.columns();
    let mut s = String::new();
    s.push_str(&format!(
        "| {} |\n",
        cols.iter()
            .map(|c| md_cell(c.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    s.push_str(&format!("|{}\n", "---|".repeat(cols.len())));
    for i in 0..df.height() {
        s.push_str(&format!(
            "| {} |\n",
            cols.iter()
                .map(|c| cell(c, i))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    s
}
