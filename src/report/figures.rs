//! The headline figures: label efficiency (test AUC against the fraction of
//! labels, one line per arm and init, 95 % interval bars) per test set, and
//! the forest plot of the paired differences pretrained − random init.

use crate::protocol::ArmResult;
use crate::report::canvas::color;
use crate::report::chart::{self, Axis, Chart, Curve};
use crate::report::forest::{Forest, ForestGroup, ForestRow};
use crate::report::format::{fmt_pct, fmt_signed, init_name, p_text};
use crate::report::headline::{HeadRow, estimate, fractions, ordered};
use crate::report::sets::{SetAuc, TestSet};

/// The label-efficiency chart of one set: per (arm, init) its AUC at each
/// fraction with the interval of [`estimate`]; colour by arm, random init
/// dashed.
pub fn label_efficiency(results: &[ArmResult], set: &TestSet, aucs: &[Option<SetAuc>]) -> Chart {
    let arms = ordered(results.iter().map(|r| r.arm.clone()));
    let fr = fractions(results);
    let mut curves = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (ai, arm) in arms.iter().enumerate() {
        let inits = ordered(
            results
                .iter()
                .filter(|r| &r.arm == arm)
                .map(|r| r.init.clone()),
        );
        for init in inits {
            let mut points = Vec::new();
            let mut intervals = Vec::new();
            for &f in &fr {
                if let Some(e) = estimate(results, aucs, (arm, &init, f), None) {
                    points.push((f, e.mean));
                    intervals.push((e.lo, e.hi));
                    lo = lo.min(e.lo).min(e.mean);
                    hi = hi.max(e.hi).max(e.mean);
                }
            }
            if points.is_empty() {
                continue;
            }
            curves.push(Curve {
                label: format!("{arm}: {}", init_name(&init)),
                points,
                intervals,
                color: color(ai),
                dashed: init == "random",
                markers: true,
                dodge: 0.0,
                scatter: false,
            });
        }
    }
    let n = curves.len() as f64;
    for (i, c) in curves.iter_mut().enumerate() {
        c.dodge = (i as f64 - (n - 1.0) / 2.0) * 4.0;
    }
    let (min_f, max_f) = (
        fr.first().copied().unwrap_or(0.1),
        fr.last().copied().unwrap_or(1.0),
    );
    let log = min_f > 0.0 && max_f / min_f > 5.0;
    let x_range = if log {
        (min_f / 1.5, max_f * 1.5)
    } else if max_f > min_f {
        let pad = (max_f - min_f) * 0.1;
        (min_f - pad, max_f + pad)
    } else {
        (min_f - 0.1, max_f + 0.1)
    };
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let y_range = (
        ((lo - 0.02) / 0.05).floor().max(0.0) * 0.05,
        ((hi + 0.02) / 0.05).ceil().min(20.0) * 0.05,
    );
    Chart {
        title: format!("Label efficiency: {}", set.display()),
        x: Axis {
            label: "labelled training images (% of the training split)".into(),
            range: x_range,
            log,
            ticks: fr,
            percent: true,
        },
        y: Axis::linear("test AUC (95 % CI)", y_range),
        curves,
        diagonal: false,
        hlines: vec![0.5],
        size: chart::SIZE,
    }
}

/// The forest plot of every comparison in `rows`, grouped by set.
pub fn forest(rows: &[HeadRow], sets: &[TestSet], vs: &str) -> Forest {
    let arms = ordered(rows.iter().map(|r| r.arm.clone()));
    let several_inits = ordered(rows.iter().filter_map(|r| r.init.clone())).len() > 1;
    let mut groups = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        let rows: Vec<ForestRow> = rows
            .iter()
            .filter(|r| r.set == si)
            .filter_map(|r| {
                let c = r.comparison.as_ref()?;
                let init = r.init.as_deref().unwrap_or("");
                let who = if several_inits {
                    format!("{} ({})", r.arm, init_name(init))
                } else {
                    r.arm.clone()
                };
                let ci = if c.lo.is_finite() {
                    format!(" [{}, {}]", fmt_signed(Some(c.lo)), fmt_signed(Some(c.hi)))
                } else {
                    String::new()
                };
                Some(ForestRow {
                    label: format!("{who}, {} % labels", fmt_pct(r.fraction)),
                    estimate: c.diff,
                    lo: c.lo,
                    hi: c.hi,
                    note: format!("{}{ci}, p {}", fmt_signed(Some(c.diff)), p_text(c.p)),
                    color: color(arms.iter().position(|a| a == &r.arm).unwrap_or(0)),
                })
            })
            .collect();
        if !rows.is_empty() {
            groups.push(ForestGroup {
                title: set.display(),
                rows,
            });
        }
    }
    Forest {
        title: format!("{vs} − random init: difference in test AUC"),
        xlabel: "AUC difference (95 % CI)".into(),
        groups,
    }
}
