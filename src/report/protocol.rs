//! The protocol report: what [`write`] puts in the report folder.
//!
//! - The headline ([`super::headline`], [`super::figures`]): per test set
//!   (the internal test split, then each external set) the label-efficiency
//!   figure, the forest plot of the differences pretrained − random init,
//!   and the comparison table (`headline.csv`).
//! - Calibration ([`super::calibration`]): `calibration.csv`,
//!   `reliability.csv` and a reliability diagram per arm.
//! - What the encoders learned: the frozen test features of the linear
//!   probes on two principal components and as t-SNE maps
//!   ([`super::embedding`]), and Grad-CAM of the fine-tuned models over a
//!   few test images ([`super::gradcam`]).
//! - Subgroups ([`super::subgroups`]) when the sets carry metadata:
//!   `subgroups.csv`.
//! - External sets: `external_runs.csv`, `external_duplicates.csv`.
//! - Every run: `runs.csv`, `paired.csv`, `summary.csv`, `test_scores.csv`,
//!   ROC and loss curves; `manifest.json`.
//!
//! Tables are CSV, Parquet and Markdown (polars); charts SVG (inlined in the
//! self-contained `report.html`) and PNG (linked from `report.md`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::roc;
use crate::io::write_atomic;
use crate::protocol::ArmResult;
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::forest::Forest;
use crate::report::format::fmt_pct;
use crate::report::inputs::ReportInputs;
use crate::report::page::{Figure, Page, Section, Table};
use crate::report::sets::{ExternalScores, SetAuc, TestSet, set_aucs, test_sets};
use crate::report::{calibration, canvas, figures, headline, png, subgroups, svg, tables};

pub use crate::report::format::format_p;
pub use crate::report::headline::Paired;
pub use crate::report::run_stats::{RowStats, row_stats};

/// Writes every report file into `dir` for runs scored on the internal test
/// split only; returns the headline (see [`write_with_external`]).
pub fn write(dir: &Path, results: &[ArmResult], ctx: &ReportInputs) -> Result<Vec<String>> {
    write_with_external(dir, results, ctx, |_| ExternalScores::new())
}

/// Writes every report file into `dir`; `external_scores` gives a run's
/// scores on the external sets of `ctx.external` (by set name, in each set's
/// image order; a set missing from the map: the run was not scored there).
/// Returns the headline: one line per comparison of a pretrained init with
/// random init on the internal test split (per arm and fraction).
pub fn write_with_external(
    dir: &Path,
    results: &[ArmResult],
    ctx: &ReportInputs,
    external_scores: impl Fn(&ArmResult) -> ExternalScores,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    let ext: Vec<ExternalScores> = results.iter().map(external_scores).collect();
    let sets = test_sets(results, ctx, &ext)?;
    let stats: Vec<RowStats> = results
        .iter()
        .map(|r| row_stats(r, &ctx.val_labels, &ctx.test_labels, ctx.resamples))
        .collect::<Result<_>>()?;
    let mut aucs: Vec<Vec<Option<SetAuc>>> = vec![
        stats
            .iter()
            .map(|s| {
                Some(SetAuc {
                    delong: s.delong,
                    bootstrap: s.bootstrap,
                })
            })
            .collect(),
    ];
    aucs.extend(set_aucs(&sets[1..], results, ctx.resamples)?);
    let paired = headline::paired_tests(results, &sets, ctx.resamples)?;
    let vs = if paired.iter().all(|p| p.init == "pirl") {
        "PIRL"
    } else {
        "Pretrained init"
    };
    let head = headline::lines(results, &aucs[0], &paired);

    let mut sections = vec![headline_section(
        dir, results, &sets, &aucs, &paired, vs, ctx,
    )?];
    sections.push(calibration_section(dir, results, &sets)?);
    if let Some(s) = embedding_section(dir, results, ctx)? {
        sections.push(s);
    }
    if let Some(s) = gradcam_section(dir, results)? {
        sections.push(s);
    }
    if let Some(s) = subgroup_section(dir, results, &sets)? {
        sections.push(s);
    }
    let external = external_sections(dir, results, &sets, &aucs)?;
    let mut details = detail_sections(dir, results, ctx, &stats, &paired, vs)?;
    if let Some((summary, runs)) = external {
        sections.push(summary);
        details.insert(details.len() - 1, runs);
    }
    sections.extend(details);

    let j = serde_json::to_vec_pretty(&ctx.manifest).map_err(|e| Error::Report(e.to_string()))?;
    write_atomic(&dir.join("manifest.json"), &j)?;
    let page = Page {
        title: ctx.title.clone(),
        head: head.clone(),
        sections,
        manifest: serde_json::to_string_pretty(&ctx.manifest).unwrap_or_default(),
    };
    write_atomic(
        &dir.join("report.html"),
        crate::report::page::html(&page).as_bytes(),
    )?;
    write_atomic(
        &dir.join("report.md"),
        crate::report::page::markdown(&page).as_bytes(),
    )?;
    Ok(head)
}

/// Writes `{stem}.svg` and `{stem}.png` of a chart.
fn chart_figure(dir: &Path, stem: &str, c: &Chart) -> Result<Figure> {
    let s = svg::chart(c, stem);
    write_atomic(&dir.join(format!("{stem}.svg")), s.as_bytes())?;
    write_atomic(&dir.join(format!("{stem}.png")), &png::chart(c)?)?;
    Ok(Figure {
        stem: stem.into(),
        title: c.title.clone(),
        svg: s,
    })
}

fn forest_figure(dir: &Path, stem: &str, f: &Forest) -> Result<Figure> {
    let s = svg::forest(f, stem);
    write_atomic(&dir.join(format!("{stem}.svg")), s.as_bytes())?;
    write_atomic(&dir.join(format!("{stem}.png")), &png::forest(f)?)?;
    Ok(Figure {
        stem: stem.into(),
        title: f.title.clone(),
        svg: s,
    })
}

fn set_stem(prefix: &str, set: &TestSet) -> String {
    if set.is_internal() {
        format!("{prefix}_test")
    } else {
        format!(
            "{prefix}_ext_{}",
            crate::report::format::file_stem(&set.name)
        )
    }
}

fn headline_section(
    dir: &Path,
    results: &[ArmResult],
    sets: &[TestSet],
    aucs: &[Vec<Option<SetAuc>>],
    paired: &[Paired],
    vs: &str,
    ctx: &ReportInputs,
) -> Result<Section> {
    let rows = headline::rows(results, sets, aucs, paired);
    tables::write_frame(dir, "headline", &mut tables::headline(&rows, sets)?)?;
    let mut figs = Vec::new();
    for (set, a) in sets.iter().zip(aucs) {
        let c = figures::label_efficiency(results, set, a);
        figs.push(chart_figure(dir, &set_stem("label_efficiency", set), &c)?);
    }
    let forest = figures::forest(&rows, sets, vs);
    if !forest.groups.is_empty() {
        figs.push(forest_figure(dir, "forest", &forest)?);
    }
    let sizes: Vec<String> = sets
        .iter()
        .map(|s| {
            format!(
                "{} {} images ({} positives)",
                s.display(),
                s.labels.len(),
                s.positives()
            )
        })
        .collect();
    Ok(Section {
        id: "headline".into(),
        title: format!("{vs} vs. random init"),
        paragraphs: vec![format!("Test sets: {}.", sizes.join("; "))],
        tables: vec![Table {
            title: String::new(),
            md: tables::headline_display(&rows, sets)?,
            notes: vec![format!(
                "One seed: AUC [DeLong 95 % CI]; difference [paired DeLong 95 % CI] and the paired DeLong p. Several seeds: AUC mean ± sd over seeds; difference: mean of the per-seed differences [95 % CI = mean ± t(0.975, k−1)·sd/√k over the k seeds: the variation between training runs on these test images], p from the one-sample t-test of the per-seed differences; each seed's DeLong test is in paired.csv. An arm that gives the same run under every seed (the probe and k-NN on all the labels) is shown as that one run: its DeLong intervals and paired p. The label-efficiency bars are the same intervals. Stratified bootstrap intervals ({} resamples, seeded by the run's seed) are in runs.csv, paired.csv and external_runs.csv. –: does not apply.",
                ctx.resamples
            )],
        }],
        figures: figs,
        collapsed: false,
        figures_first: true,
    })
}

fn calibration_section(dir: &Path, results: &[ArmResult], sets: &[TestSet]) -> Result<Section> {
    let cal = calibration::calibrations(results, sets)?;
    tables::write_frame(
        dir,
        "calibration",
        &mut calibration::table(results, sets, &cal)?,
    )?;
    tables::write_frame(
        dir,
        "reliability",
        &mut calibration::bins_table(results, sets, &cal)?,
    )?;
    let mut figs = Vec::new();
    for (si, arm, c) in calibration::diagrams(results, sets, &cal) {
        let stem = set_stem(
            &format!("reliability_{}", crate::report::format::file_stem(&arm)),
            &sets[si],
        );
        figs.push(chart_figure(dir, &stem, &c)?);
    }
    Ok(Section {
        id: "calibration".into(),
        title: "Calibration".into(),
        paragraphs: vec![format!(
            "Probability scored: sigmoid(logit) for linear probes and fine-tuned models, the vote share for k-NN. Brier score: mean squared error of the probability. ECE (expected calibration error): {}. Brier and ECE as mean ± sd over seeds; every run in calibration.csv, its bins in reliability.csv.",
            calibration::BINNING
        )],
        tables: vec![Table {
            title: String::new(),
            md: calibration::display(results, sets, &cal)?,
            notes: Vec::new(),
        }],
        figures: figs,
        collapsed: false,
        figures_first: false,
    })
}

/// The frozen test features of PIRL and random init on two principal
/// components and as t-SNE maps, side by side.
fn embedding_section(
    dir: &Path,
    results: &[ArmResult],
    ctx: &ReportInputs,
) -> Result<Option<Section>> {
    let charts = crate::report::embedding::charts(results, &ctx.test_labels);
    if charts.is_empty() {
        return Ok(None);
    }
    let mut figures = Vec::new();
    for (stem, c) in &charts {
        figures.push(chart_figure(dir, stem, c)?);
    }
    let t = crate::eval::tsne::TsneParams::default();
    let mut paragraphs = vec!["The test images' frozen features (the linear probe's view), standardised by the training images' features; melanomas in red. PCA: projected on the first two principal components of the training features. A linear probe separates what lies apart in the full feature space, so these two components show only part of it.".to_string()];
    if charts.iter().any(|(s, _)| s.starts_with("tsne_")) {
        paragraphs.push(format!(
            "t-SNE (exact): the features reduced to their first {} principal components, perplexity {} (at most a third of the images), {} iterations with the affinities exaggerated {}-fold over the first {}, started from the config's seed. t-SNE keeps neighbours: points close on the map are close in feature space, but the distances between clusters and their sizes mean nothing.",
            t.pca_dims, t.perplexity, t.iterations, t.exaggeration, t.exaggeration_iterations
        ));
    }
    Ok(Some(Section {
        id: "features".into(),
        title: "What the frozen encoder separates".into(),
        paragraphs,
        tables: Vec::new(),
        figures,
        collapsed: false,
        figures_first: true,
    }))
}

/// Grad-CAM of the fine-tuned models over a few test images.
fn gradcam_section(dir: &Path, results: &[ArmResult]) -> Result<Option<Section>> {
    let figs = crate::report::gradcam::figures(results)?;
    let Some((_, first)) = figs.first() else {
        return Ok(None);
    };
    let k = crate::eval::gradcam::CASES_PER_KIND;
    let mut paragraphs = vec![format!(
        "Grad-CAM (Selvaraju et al., 2017) of each fine-tuning arm's model (the selected epoch's weights; the largest label fraction, the first seed; PIRL and random init): the {k} melanomas of the test split scored highest at or above the operating threshold (Youden's, picked on validation), then the {k} scored lowest below it (missed). A map is ReLU(Σ_c α_c A_c) at a stage's output A, α_c the spatial mean of ∂logit/∂A_c; it is upsampled bilinearly to the view and scaled to its own maximum, so it shows where in that image the evidence for melanoma lies, not how much there is. p is sigmoid of the run's test score (averaged over the test-time views if the recipe has them); the maps explain the plain view."
    )];
    let grid = |stage: usize| {
        first
            .stages
            .iter()
            .find(|s| s.0 == stage)
            .map(|s| format!("{}x{}", s.1, s.2))
    };
    if let Some(g4) = grid(4) {
        let mut p = if g4 == "1x1" {
            format!(
                "At {} px input the last stage (layer4) is a single cell: its map cannot say where anything lies, only whether the evidence is positive at all.",
                first.view
            )
        } else {
            format!(
                "At {} px input the last stage (layer4) is a {g4} grid: its map can only say which part of the image drove the score, at the resolution of a few cells, not outline a lesion.",
                first.view
            )
        };
        if let Some(g3) = grid(3) {
            p.push_str(&format!(" The layer3 row ({g3}) is finer, but it is not the last stage: its gradients pass through layer4, and Grad-CAM at earlier stages is less specific to the class; read it as a finer hint of the same evidence, not as the model's decision."));
        }
        paragraphs.push(p);
    }
    if let Some(n) = figs
        .iter()
        .map(|(_, f)| f.ensemble)
        .max()
        .filter(|&n| n > 1)
    {
        paragraphs.push(format!(
            "A figure marked as an ensemble (up to {n} fine-tunes here) belongs to a run scored by its members' mean logit: its images are picked, and its p computed, from that mean, while its maps explain one model, the first member (the fine-tune with the run's own seed). They show that member's evidence, not the ensemble's."
        ));
    }
    let mut figures = Vec::new();
    for (stem, f) in &figs {
        let s = svg::gradcam(f, stem);
        write_atomic(&dir.join(format!("{stem}.svg")), s.as_bytes())?;
        write_atomic(&dir.join(format!("{stem}.png")), &png::gradcam(f)?)?;
        figures.push(Figure {
            stem: stem.clone(),
            title: f.title.clone(),
            svg: s,
        });
    }
    Ok(Some(Section {
        id: "gradcam".into(),
        title: "Where the fine-tuned models look (Grad-CAM)".into(),
        paragraphs,
        tables: Vec::new(),
        figures,
        collapsed: false,
        figures_first: true,
    }))
}

fn subgroup_section(
    dir: &Path,
    results: &[ArmResult],
    sets: &[TestSet],
) -> Result<Option<Section>> {
    let subs = subgroups::subgroups(results, sets)?;
    if subs.is_empty() {
        // Say so rather than leave the section out: a reader looks for it.
        return Ok(Some(Section {
            id: "subgroups".into(),
            title: "Subgroups".into(),
            paragraphs: vec!["No test set here carries per-image metadata (age, sex, ...): no subgroup is scored. Metadata comes from the data set's *_metadata.csv files or extra manifest columns (the ISIC 2017 copy used here has them for the training and validation splits only).".into()],
            ..Default::default()
        }));
    }
    tables::write_frame(
        dir,
        "subgroups",
        &mut subgroups::table(results, sets, &subs)?,
    )?;
    let mut t = Vec::new();
    for s in &subs {
        let (title, md) = subgroups::display(results, sets, s)?;
        let mut notes = vec![subgroups::note()];
        notes.extend(
            s.grouping
                .skipped
                .iter()
                .map(|n| format!("Not grouped: {n}.")),
        );
        t.push(Table { title, md, notes });
    }
    Ok(Some(Section {
        id: "subgroups".into(),
        title: "Subgroups".into(),
        paragraphs: vec!["Every run and group in subgroups.csv.".into()],
        tables: t,
        figures: Vec::new(),
        ..Default::default()
    }))
}

/// The external sets (size, runs scored, duplicates dropped), and the
/// collapsed table of every run on them.
fn external_sections(
    dir: &Path,
    results: &[ArmResult],
    sets: &[TestSet],
    aucs: &[Vec<Option<SetAuc>>],
) -> Result<Option<(Section, Section)>> {
    let Some(mut df) = tables::external_runs(results, sets, aucs)? else {
        return Ok(None);
    };
    let runs_md = tables::write_frame(dir, "external_runs", &mut df)?;
    let mut paragraphs = Vec::new();
    for s in sets.iter().filter(|s| !s.is_internal()) {
        let scored = s.scores.iter().filter(|x| x.is_some()).count();
        paragraphs.push(format!(
            "{}: {} images ({} positives), scored by {scored} of {} runs; duplicates of training or internal images dropped: {}.",
            s.display(),
            s.labels.len(),
            s.positives(),
            results.len(),
            s.duplicates_dropped.len()
        ));
    }
    let mut t = Vec::new();
    if let Some(mut d) = tables::duplicates(sets)? {
        t.push(Table {
            title: "Duplicates dropped (external image, the image it duplicates)".into(),
            md: tables::write_frame(dir, "external_duplicates", &mut d)?,
            notes: Vec::new(),
        });
    }
    let summary = Section {
        id: "external".into(),
        title: "External test sets".into(),
        paragraphs,
        tables: t,
        ..Default::default()
    };
    let runs = Section {
        id: "external_runs".into(),
        title: "Every run on the external test sets (DeLong and bootstrap 95 % CIs)".into(),
        tables: vec![Table {
            title: String::new(),
            md: runs_md,
            notes: Vec::new(),
        }],
        collapsed: true,
        ..Default::default()
    };
    Ok(Some((summary, runs)))
}

/// The details: settings, the summary over seeds, every paired test, every
/// run, and the ROC and loss curves.
fn detail_sections(
    dir: &Path,
    results: &[ArmResult],
    ctx: &ReportInputs,
    stats: &[RowStats],
    paired: &[Paired],
    vs: &str,
) -> Result<Vec<Section>> {
    let runs_md = tables::write_frame(dir, "runs", &mut tables::runs(results, stats)?)?;
    tables::write_test_scores(dir, results, ctx)?;
    let paired_md = tables::write_frame(dir, "paired", &mut tables::paired(paired)?)?;
    let summary_md = tables::write_frame(dir, "summary", &mut tables::summary(results, stats)?)?;
    let table = |title: &str, md: String| Table {
        title: title.into(),
        md,
        notes: Vec::new(),
    };
    let section = |id: &str, title: &str, t: Vec<Table>| Section {
        id: id.into(),
        title: title.into(),
        tables: t,
        collapsed: true,
        ..Default::default()
    };
    Ok(vec![
        Section {
            id: "settings".into(),
            title: "Data and settings".into(),
            paragraphs: ctx.lines.clone(),
            collapsed: true,
            ..Default::default()
        },
        section(
            "summary",
            "Summary: test AUC over seeds",
            vec![table("", summary_md)],
        ),
        section(
            "paired",
            &format!("{vs} vs. random init (paired DeLong test, paired bootstrap), every seed"),
            vec![table("", paired_md)],
        ),
        section(
            "runs",
            "Every run: AUC, CIs and operating points on the internal test split",
            vec![table("", runs_md)],
        ),
        Section {
            id: "curves".into(),
            title: "Curves: ROC (first seed) and pretraining loss".into(),
            figures: curve_figures(dir, results, ctx)?,
            collapsed: true,
            ..Default::default()
        },
    ])
}

/// ROC curves (first seed) per arm and fraction, and the pretraining loss.
fn curve_figures(dir: &Path, results: &[ArmResult], ctx: &ReportInputs) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let first_seed = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let mut keys: Vec<(String, f64)> =
        headline::ordered(results.iter().map(|r| (r.arm.clone(), r.fraction)));
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    for (arm, frac) in &keys {
        let mut curves = Vec::new();
        for (i, r) in results
            .iter()
            .filter(|r| &r.arm == arm && r.fraction == *frac && r.seed == first_seed)
            .enumerate()
        {
            let pts = roc::roc_curve(&r.test_scores, &ctx.test_labels)?
                .into_iter()
                .map(|p| (p.fpr, p.tpr))
                .collect();
            let label = format!("{} (AUC {:.3})", r.init, r.test_auc);
            curves.push(Curve::line(&label, pts, canvas::color(i)));
        }
        let c = Chart {
            title: format!("ROC: {arm}, {} % labels, seed {first_seed}", fmt_pct(*frac)),
            x: Axis::linear("1 - specificity", (0.0, 1.0)),
            y: Axis::linear("sensitivity", (0.0, 1.0)),
            curves,
            diagonal: true,
            hlines: Vec::new(),
            size: chart::SIZE,
        };
        out.push(chart_figure(dir, &format!("roc_{arm}_f{frac}"), &c)?);
    }
    if !ctx.pretrain_losses.is_empty() {
        let l = &ctx.pretrain_losses;
        let pts: Vec<(f64, f64)> = l
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1) as f64, *v))
            .collect();
        let lo = l.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let c = Chart {
            title: "PIRL pretraining loss".into(),
            x: Axis::linear("epoch", (1.0, l.len().max(2) as f64)),
            y: Axis::linear("loss", (lo.floor(), hi.ceil().max(lo.floor() + 1.0))),
            curves: vec![Curve::line("mean loss", pts, canvas::color(0))],
            diagonal: false,
            hlines: Vec::new(),
            size: chart::SIZE,
        };
        out.push(chart_figure(dir, "pretrain_loss", &c)?);
    }
    Ok(out)
}
