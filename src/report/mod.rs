//! Reports: `summary.csv` (polars) and `summary.md`, one row per arm; the
//! protocol report ([`protocol`]); SVG charts ([`svg`]) and the same charts
//! as PNG ([`png`]).

pub mod png;
pub mod protocol;
pub mod svg;

use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// One evaluated arm.
#[derive(Debug, Clone, Serialize)]
pub struct ArmRow {
    /// e.g. `pirl-linear-probe`, `random-init-linear-probe`.
    pub arm: String,
    pub init: String,
    pub protocol: String,
    pub test_auc: f64,
    pub val_auc: f64,
    pub alpha: f64,
    pub n_test: usize,
    pub n_test_pos: usize,
    pub pretrain_epochs: usize,
    pub pretrain_wall_s: f64,
}

/// The rows as a polars DataFrame.
pub fn summary_frame(rows: &[ArmRow]) -> Result<DataFrame> {
    let col_s = |f: fn(&ArmRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let df = df!(
        "arm" => col_s(|r| r.arm.clone()),
        "init" => col_s(|r| r.init.clone()),
        "protocol" => col_s(|r| r.protocol.clone()),
        "test_auc" => rows.iter().map(|r| r.test_auc).collect::<Vec<_>>(),
        "val_auc" => rows.iter().map(|r| r.val_auc).collect::<Vec<_>>(),
        "alpha" => rows.iter().map(|r| r.alpha).collect::<Vec<_>>(),
        "n_test" => rows.iter().map(|r| r.n_test as u64).collect::<Vec<_>>(),
        "n_test_pos" => rows.iter().map(|r| r.n_test_pos as u64).collect::<Vec<_>>(),
        "pretrain_epochs" => rows.iter().map(|r| r.pretrain_epochs as u64).collect::<Vec<_>>(),
        "pretrain_wall_s" => rows.iter().map(|r| r.pretrain_wall_s).collect::<Vec<_>>(),
    )
    .map_err(|e| Error::Report(e.to_string()))?;
    Ok(df)
}

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

/// Writes `summary.csv` and `summary.md` into `dir` (each atomically).
/// `context` is Markdown placed above the table (data, settings, machine).
pub fn write_summary(dir: &Path, rows: &[ArmRow], context: &str) -> Result<DataFrame> {
    let mut df = summary_frame(rows)?;
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv)
        .finish(&mut df)
        .map_err(|e| Error::Report(e.to_string()))?;
    write_atomic(&dir.join("summary.csv"), &csv)?;
    let md = format!("# pirlkit summary\n\n{context}\n\n{}", markdown_table(&df));
    write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    Ok(df)
}
