//! The protocol report: per-run rows, the paired PIRL-vs-random tests, the
//! summary across seeds (CSV, Parquet and Markdown via polars), ROC and loss
//! curves (SVG and PNG), one self-contained `report.html` (inline SVG),
//! `report.md` (linking the PNGs), and `manifest.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::roc;
use crate::eval::stats::{self, AucCi, PairedTest};
use crate::io::write_atomic;
use crate::protocol::ArmResult;
use crate::report::markdown_table;
use crate::report::png;
use crate::report::svg::{Series, line_chart};
use crate::runner::ReportInputs;

/// The statistics of one run on the test split.
#[derive(Debug, Clone, Serialize)]
pub struct RowStats {
    pub delong: AucCi,
    pub bootstrap: AucCi,
    pub sens_at_spec90: f64,
    pub sens_at_spec95: f64,
    pub spec_at_sens90: f64,
    pub spec_at_sens95: f64,
    /// Youden threshold picked on validation, applied to test.
    pub youden: roc::OperatingPoint,
    pub pauc_tpr80: f64,
}

pub fn row_stats(
    r: &ArmResult,
    val_labels: &[u8],
    test_labels: &[u8],
    resamples: usize,
) -> Result<RowStats> {
    let s = &r.test_scores;
    let thr = roc::youden_threshold(&r.val_scores, val_labels)?;
    Ok(RowStats {
        delong: stats::delong_ci(s, test_labels)?,
        bootstrap: stats::bootstrap_ci(s, test_labels, resamples, r.seed)?,
        sens_at_spec90: roc::sensitivity_at_specificity(s, test_labels, 0.90)?.sensitivity,
        sens_at_spec95: roc::sensitivity_at_specificity(s, test_labels, 0.95)?.sensitivity,
        spec_at_sens90: roc::specificity_at_sensitivity(s, test_labels, 0.90)?.specificity,
        spec_at_sens95: roc::specificity_at_sensitivity(s, test_labels, 0.95)?.specificity,
        youden: roc::at_threshold(s, test_labels, thr),
        pauc_tpr80: roc::partial_auc_above_tpr(s, test_labels, 0.8)?,
    })
}

/// A pretrained init (PIRL, or weights from a file) vs. random init on the
/// same test images, for one arm, fraction and seed.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub arm: String,
    /// The init compared with `random`.
    pub init: String,
    pub fraction: f64,
    pub seed: u64,
    pub delong: PairedTest,
    pub boot_diff: (f64, f64, f64),
}

fn df_err(e: PolarsError) -> Error {
    Error::Report(e.to_string())
}

/// Writes `{stem}.csv`, `{stem}.parquet` and `{stem}.md`; returns the Markdown.
fn write_frame(dir: &Path, stem: &str, df: &mut DataFrame) -> Result<String> {
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv).finish(df).map_err(df_err)?;
    write_atomic(&dir.join(format!("{stem}.csv")), &csv)?;
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet)
        .finish(df)
        .map_err(df_err)?;
    write_atomic(&dir.join(format!("{stem}.parquet")), &parquet)?;
    let md = markdown_table(df);
    write_atomic(&dir.join(format!("{stem}.md")), md.as_bytes())?;
    Ok(md)
}

/// Writes every report file into `dir`; returns the headline: one line per
/// comparison of a pretrained init with random init (per arm and fraction).
pub fn write(dir: &Path, results: &[ArmResult], ctx: &ReportInputs) -> Result<Vec<String>> {
    let (val_labels, test_labels, resamples) =
        (&ctx.val_labels[..], &ctx.test_labels[..], ctx.resamples);
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let stats: Vec<RowStats> = results
        .iter()
        .map(|r| row_stats(r, val_labels, test_labels, resamples))
        .collect::<Result<_>>()?;

    // Per-run rows.
    let f = |g: fn(&ArmResult, &RowStats) -> f64| {
        results
            .iter()
            .zip(&stats)
            .map(|(r, s)| g(r, s))
            .collect::<Vec<f64>>()
    };
    let mut rows = df!(
        "arm" => results.iter().map(|r| r.arm.clone()).collect::<Vec<_>>(),
        "init" => results.iter().map(|r| r.init.clone()).collect::<Vec<_>>(),
        "fraction" => results.iter().map(|r| r.fraction).collect::<Vec<_>>(),
        "seed" => results.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "n_train" => results.iter().map(|r| r.n_train as u64).collect::<Vec<_>>(),
        "n_train_pos" => results.iter().map(|r| r.n_train_pos as u64).collect::<Vec<_>>(),
        "val_auc" => f(|r, _| r.val_auc),
        "test_auc" => f(|r, _| r.test_auc),
        "delong_lo" => f(|_, s| s.delong.lo),
        "delong_hi" => f(|_, s| s.delong.hi),
        "boot_lo" => f(|_, s| s.bootstrap.lo),
        "boot_hi" => f(|_, s| s.bootstrap.hi),
        "sens_at_spec90" => f(|_, s| s.sens_at_spec90),
        "sens_at_spec95" => f(|_, s| s.sens_at_spec95),
        "spec_at_sens90" => f(|_, s| s.spec_at_sens90),
        "spec_at_sens95" => f(|_, s| s.spec_at_sens95),
        "youden_sens" => f(|_, s| s.youden.sensitivity),
        "youden_spec" => f(|_, s| s.youden.specificity),
        "youden_bacc" => f(|_, s| s.youden.balanced_accuracy),
        "pauc_tpr80" => f(|_, s| s.pauc_tpr80),
        "detail" => results.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
    )
    .map_err(df_err)?;
    write_frame(dir, "runs", &mut rows)?;
    write_test_scores(dir, results, ctx)?;

    // Paired tests.
    let mut paired = Vec::new();
    for a in results.iter().filter(|r| r.init != "random") {
        if let Some(b) = results.iter().find(|r| {
            r.init == "random" && r.arm == a.arm && r.fraction == a.fraction && r.seed == a.seed
        }) {
            paired.push(Paired {
                arm: a.arm.clone(),
                init: a.init.clone(),
                fraction: a.fraction,
                seed: a.seed,
                delong: stats::delong_paired(&a.test_scores, &b.test_scores, test_labels)?,
                boot_diff: stats::bootstrap_paired(
                    &a.test_scores,
                    &b.test_scores,
                    test_labels,
                    resamples,
                    a.seed,
                )?,
            });
        }
    }
    let pf = |g: fn(&Paired) -> f64| paired.iter().map(g).collect::<Vec<f64>>();
    let mut pdf = df!(
        "arm" => paired.iter().map(|p| p.arm.clone()).collect::<Vec<_>>(),
        "init" => paired.iter().map(|p| p.init.clone()).collect::<Vec<_>>(),
        "fraction" => pf(|p| p.fraction),
        "seed" => paired.iter().map(|p| p.seed).collect::<Vec<_>>(),
        "auc_init" => pf(|p| p.delong.auc_a),
        "auc_random" => pf(|p| p.delong.auc_b),
        "diff" => pf(|p| p.delong.diff),
        "delong_lo" => pf(|p| p.delong.lo),
        "delong_hi" => pf(|p| p.delong.hi),
        "delong_p" => pf(|p| p.delong.p),
        "boot_lo" => pf(|p| p.boot_diff.1),
        "boot_hi" => pf(|p| p.boot_diff.2),
    )
    .map_err(df_err)?;
    let paired_md = write_frame(dir, "paired", &mut pdf)?;

    // Summary across seeds.
    let mut groups: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        groups
            .entry((r.arm.clone(), r.init.clone(), format!("{:.3}", r.fraction)))
            .or_default()
            .push(i);
    }
    let mut srows: Vec<(String, String, f64, u64, f64, f64, f64, f64, f64)> = Vec::new();
    for ((arm, init, _), idx) in &groups {
        let aucs: Vec<f64> = idx.iter().map(|&i| results[i].test_auc).collect();
        let (m, sd) = stats::mean_sd(&aucs);
        let lo = idx.iter().map(|&i| stats[i].delong.lo).sum::<f64>() / idx.len() as f64;
        let hi = idx.iter().map(|&i| stats[i].delong.hi).sum::<f64>() / idx.len() as f64;
        let diffs: Vec<f64> = paired
            .iter()
            .filter(|p| {
                &p.arm == arm
                    && &p.init == init
                    && format!("{:.3}", p.fraction) == format!("{:.3}", results[idx[0]].fraction)
            })
            .map(|p| p.delong.diff)
            .collect();
        let md = if !diffs.is_empty() {
            stats::mean_sd(&diffs).0
        } else {
            f64::NAN
        };
        srows.push((
            arm.clone(),
            init.clone(),
            results[idx[0]].fraction,
            idx.len() as u64,
            m,
            sd,
            lo,
            hi,
            md,
        ));
    }
    let mut sdf = df!(
        "arm" => srows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        "init" => srows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        "fraction" => srows.iter().map(|r| r.2).collect::<Vec<_>>(),
        "seeds" => srows.iter().map(|r| r.3).collect::<Vec<_>>(),
        "test_auc_mean" => srows.iter().map(|r| r.4).collect::<Vec<_>>(),
        "test_auc_sd" => srows.iter().map(|r| r.5).collect::<Vec<_>>(),
        "delong_lo_mean" => srows.iter().map(|r| r.6).collect::<Vec<_>>(),
        "delong_hi_mean" => srows.iter().map(|r| r.7).collect::<Vec<_>>(),
        "init_minus_random_mean" => srows.iter().map(|r| r.8).collect::<Vec<_>>(),
    )
    .map_err(df_err)?;
    let summary_md = write_frame(dir, "summary", &mut sdf)?;

    // ROC curves (first seed) per arm and fraction; the loss curve. Each as
    // SVG (inlined in report.html) and PNG (linked from report.md).
    let mut svgs = Vec::new();
    let mut pngs: Vec<(String, String)> = Vec::new();
    let first_seed = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let mut keys: Vec<(String, String)> = results
        .iter()
        .map(|r| (r.arm.clone(), format!("{}", r.fraction)))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (arm, frac) in &keys {
        let mut series = Vec::new();
        for r in results
            .iter()
            .filter(|r| &r.arm == arm && &format!("{}", r.fraction) == frac && r.seed == first_seed)
        {
            let pts = roc::roc_curve(&r.test_scores, test_labels)?
                .into_iter()
                .map(|p| (p.fpr, p.tpr))
                .collect();
            series.push(Series {
                label: format!("{} (AUC {:.3})", r.init, r.test_auc),
                points: pts,
            });
        }
        let title = format!(
            "ROC: {arm}, {} % labels, seed {first_seed}",
            frac.parse::<f64>().unwrap_or(0.0) * 100.0
        );
        let (xl, yl) = ("1 - specificity", "sensitivity");
        let svg = line_chart(&title, xl, yl, &series, (0.0, 1.0), (0.0, 1.0), true);
        let stem = format!("roc_{arm}_f{frac}");
        write_atomic(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
        svgs.push((format!("{stem}.svg"), svg));
        let img = png::line_chart(&title, xl, yl, &series, (0.0, 1.0), (0.0, 1.0), true)?;
        write_atomic(&dir.join(format!("{stem}.png")), &img)?;
        pngs.push((format!("{stem}.png"), title));
    }
    if !ctx.pretrain_losses.is_empty() {
        let pts: Vec<(f64, f64)> = ctx
            .pretrain_losses
            .iter()
            .enumerate()
            .map(|(i, l)| ((i + 1) as f64, *l))
            .collect();
        let lo = ctx
            .pretrain_losses
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min);
        let hi = ctx
            .pretrain_losses
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let title = "PIRL pretraining loss";
        let series = [Series {
            label: "mean loss".into(),
            points: pts,
        }];
        let xr = (1.0, ctx.pretrain_losses.len().max(2) as f64);
        let yr = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
        let svg = line_chart(title, "epoch", "loss", &series, xr, yr, false);
        write_atomic(&dir.join("pretrain_loss.svg"), svg.as_bytes())?;
        svgs.push(("pretrain_loss.svg".into(), svg));
        let img = png::line_chart(title, "epoch", "loss", &series, xr, yr, false)?;
        write_atomic(&dir.join("pretrain_loss.png"), &img)?;
        pngs.push(("pretrain_loss.png".into(), title.into()));
    }

    // manifest.json and report.html.
    let j = serde_json::to_vec_pretty(&ctx.manifest).map_err(|e| Error::Report(e.to_string()))?;
    write_atomic(&dir.join("manifest.json"), &j)?;
    let vs = if paired.iter().all(|p| p.init == "pirl") {
        "PIRL"
    } else {
        "Pretrained init"
    };
    let head = headline(results, &stats, &paired);
    let html = html_page(ctx, &head, &summary_md, &paired_md, vs, &svgs);
    write_atomic(&dir.join("report.html"), html.as_bytes())?;
    let mut md = format!(
        "# {}\n\n{}\n\n{}\n\n## Summary (test AUC over seeds)\n\n{summary_md}\n## {vs} vs. random init (paired DeLong, bootstrap)\n\n{paired_md}",
        ctx.title,
        head.iter()
            .map(|l| format!("**{l}**"))
            .collect::<Vec<_>>()
            .join("\n\n"),
        ctx.lines
            .iter()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if !pngs.is_empty() {
        md.push_str("\n## Curves\n\n");
        for (name, title) in &pngs {
            let _ = writeln!(md, "![{}]({})\n", md_alt(title), md_url(name));
        }
    }
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(head)
}

/// `test_scores.csv`: one row per test image (id, label), one column of
/// scores per run (`arm/init/f<fraction>/s<seed>`), for re-analysis
/// elsewhere.
fn write_test_scores(dir: &Path, results: &[ArmResult], ctx: &ReportInputs) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let rerr = |e: csv::Error| Error::Report(e.to_string());
    let mut head = vec!["image_id".to_string(), "label".to_string()];
    head.extend(
        results
            .iter()
            .map(|r| format!("{}/{}/f{}/s{}", r.arm, r.init, r.fraction, r.seed)),
    );
    w.write_record(&head).map_err(rerr)?;
    for (i, (id, y)) in ctx.test_ids.iter().zip(&ctx.test_labels).enumerate() {
        let mut row = vec![id.clone(), y.to_string()];
        row.extend(results.iter().map(|r| format!("{}", r.test_scores[i])));
        w.write_record(&row).map_err(rerr)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Report(e.to_string()))?;
    write_atomic(&dir.join("test_scores.csv"), &bytes)
}

/// One line per (arm, pretrained init, fraction) that has a random-init
/// twin: test AUC with its DeLong CI (one seed) or mean ± sd (several), and
/// the paired DeLong p of each seed.
fn headline(results: &[ArmResult], stats: &[RowStats], paired: &[Paired]) -> Vec<String> {
    let mut groups: BTreeMap<(String, String, String), Vec<&Paired>> = BTreeMap::new();
    for p in paired {
        groups
            .entry((p.arm.clone(), p.init.clone(), format!("{}", p.fraction)))
            .or_default()
            .push(p);
    }
    let name = |init: &str| match init {
        "pirl" => "PIRL".to_string(),
        "random" => "random init".to_string(),
        w => w.to_string(),
    };
    let show = |init: &str, arm: &str, frac: &str| -> String {
        let idx: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.arm == arm && r.init == init && format!("{}", r.fraction) == frac)
            .map(|(i, _)| i)
            .collect();
        if idx.len() == 1 {
            let s = &stats[idx[0]];
            format!(
                "{:.3} [{:.3}, {:.3}]",
                results[idx[0]].test_auc, s.delong.lo, s.delong.hi
            )
        } else {
            let a: Vec<f64> = idx.iter().map(|&i| results[i].test_auc).collect();
            let (m, sd) = stats::mean_sd(&a);
            format!("{m:.3} ± {sd:.3} ({} seeds)", a.len())
        }
    };
    groups
        .iter()
        .map(|((arm, init, frac), ps)| {
            let p: Vec<String> = ps.iter().map(|p| format_p(p.delong.p)).collect();
            format!(
                "{arm}, {} % labels: {} {} vs random init {}, paired DeLong p = {}",
                frac.parse::<f64>().unwrap_or(0.0) * 100.0,
                name(init),
                show(init, arm, frac),
                show("random", arm, frac),
                p.join(", ")
            )
        })
        .collect()
}

/// A p-value with two significant digits, or "< 0.0001".
pub fn format_p(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".into()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.3}")
    }
}

/// Image alt text: no brackets or line breaks that would end the link early.
fn md_alt(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '[' | ']' | '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// A relative file name as a Markdown link target (percent-encoded).
fn md_url(name: &str) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Markdown table -> HTML table.
fn md_to_html_table(md: &str) -> String {
    let mut s = String::from("<table>");
    for (i, line) in md.lines().enumerate() {
        if i == 1 || line.trim().is_empty() {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        s.push_str("<tr>");
        for cell in line.trim().trim_matches('|').split('|') {
            let _ = write!(s, "<{tag}>{}</{tag}>", esc(cell.trim()));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn html_page(
    ctx: &ReportInputs,
    head: &[String],
    summary_md: &str,
    paired_md: &str,
    vs: &str,
    svgs: &[(String, String)],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}</style></head><body><h1>{t}</h1>",
        t = esc(&ctx.title)
    );
    s.push_str("<div class=\"headline\">");
    for l in head {
        let _ = write!(s, "<p><b>{}</b></p>", esc(l));
    }
    s.push_str("</div><ul>");
    for l in &ctx.lines {
        let _ = write!(s, "<li>{}</li>", esc(l));
    }
    let _ = write!(
        s,
        "</ul><h2>Summary: test AUC over seeds</h2>{}",
        md_to_html_table(summary_md)
    );
    let _ = write!(
        s,
        "<h2>{} vs. random init (paired DeLong test, paired bootstrap)</h2>{}",
        esc(vs),
        md_to_html_table(paired_md)
    );
    s.push_str("<h2>Curves</h2><div class=\"plots\">");
    for (name, svg) in svgs {
        let _ = write!(s, "<figure id=\"{}\">{svg}</figure>", esc(name));
    }
    let _ = write!(
        s,
        "</div><h2>Settings</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&ctx.manifest).unwrap_or_default())
    );
    s
}
