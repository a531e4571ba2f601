//! Reports: the protocol report ([`protocol`]: tables via polars, charts,
//! report.html and report.md), its provenance ([`manifest`]), SVG charts
//! ([`svg`]) and the same charts as PNG ([`png`]).

pub mod canvas;
pub mod chart;
pub mod forest;
pub mod manifest;
pub mod png;
pub mod protocol;
pub mod svg;

use polars::prelude::*;

fn cell(s: &Column, i: usize) -> String {
    match s.get(i) {
        Ok(AnyValue::Float64(v)) => format!("{v:.4}"),
        Ok(AnyValue::String(v)) => v.to_string(),
        Ok(AnyValue::StringOwned(v)) => v.to_string(),
        Ok(v) => v.to_string(),
        Err(_) => String::new(),
    }
}

/// A GitHub-flavoured Markdown table of the frame.
pub fn markdown_table(df: &DataFrame) -> String {
    let cols = df.columns();
    let mut s = String::new();
    s.push_str(&format!(
        "| {} |\n",
        cols.iter()
            .map(|c| c.name().to_string())
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
