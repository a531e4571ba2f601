//! The protocol report written in-process from scored runs (no training):
//! its calibration, subgroup and headline numbers against scikit-learn and
//! scipy, the external test set beside the internal one, no NaN anywhere,
//! bad input refused by name, and the page as headless Chromium renders it
//! (the headline figure, the forest plot, the external-set columns and the
//! reliability diagrams in the DOM, drawn where they sit, in that order).
//!
//! The fixture's scores, as the Python references compute them:
//! ```python
//! def logit(i, y, s, f, init):   # linear-probe: logits
//!     shift = (1.0 + 0.5 * f) if init == "pirl" else (0.25 + 0.25 * f)
//!     return ((i * 37 + 11 * s) % 17) / 4 - 2 + shift * y
//! def vote(i, y, s, f, init):    # knn: vote shares in [0, 1]
//!     if init == "pirl":
//!         return ((i * 53 + 7 * s) % 20) / 20 * 0.6 + 0.4 * y
//!     return ((i * 53 + 7 * s) % 20) / 20 * 0.8 + 0.2 * y
//! n = 90; y = [int(i % 3 == 0) for i in range(n)]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use polars::prelude::{AnyValue, DataFrame, ParquetReader, SerReader};

use pirlkit::eval::auc::auc;
use pirlkit::protocol::ArmResult;
use pirlkit::report::protocol::write_with_external;
use pirlkit::runner::ReportInputs;

const N: usize = 90;
const EXT: &str = "derm7pt";

fn labels(n: usize, r: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 3 == r) as u8).collect()
}

fn logit(i: usize, y: u8, s: u64, f: f64, init: &str) -> f64 {
    let shift = if init == "pirl" {
        1.0 + 0.5 * f
    } else {
        0.25 + 0.25 * f
    };
    ((i as u64 * 37 + 11 * s) % 17) as f64 / 4.0 - 2.0 + shift * y as f64
}

fn vote(i: usize, y: u8, s: u64, init: &str) -> f64 {
    let base = ((i as u64 * 53 + 7 * s) % 20) as f64 / 20.0;
    if init == "pirl" {
        base * 0.6 + 0.4 * y as f64
    } else {
        base * 0.8 + 0.2 * y as f64
    }
}

fn scores(kind: &str, init: &str, seed: u64, f: f64, y: &[u8], offset: usize) -> Vec<f64> {
    y.iter()
        .enumerate()
        .map(|(i, &l)| match kind {
            "knn" => vote(i + offset, l, seed, init),
            _ => logit(i + offset, l, seed, f, init),
        })
        .collect()
}

fn run(arm: &str, kind: &str, init: &str, fraction: f64, seed: u64) -> ArmResult {
    let (test_y, val_y) = (labels(N, 0), labels(30, 0));
    let t = scores(kind, init, seed, fraction, &test_y, 0);
    let v = scores(kind, init, seed, fraction, &val_y, 500);
    serde_json::from_value(serde_json::json!({
        "arm": arm, "kind": kind, "init": init, "fraction": fraction, "seed": seed,
        "n_train": 100, "n_train_pos": 20,
        "val_auc": auc(&v, &val_y).unwrap(), "test_auc": auc(&t, &test_y).unwrap(),
        "test_scores": t, "val_scores": v, "detail": "", "seconds": 1.0,
        "key": format!("{arm}-{init}-{fraction}-{seed}"), "computed_by": "test",
    }))
    .unwrap()
}

/// linear-probe and knn, PIRL and random init, 25 % and 100 % labels,
/// seeds 0-2; and an arm with PIRL only (nothing to compare it with).
fn results() -> Vec<ArmResult> {
    let mut out = Vec::new();
    for (arm, kind) in [("linear-probe", "linear-probe"), ("knn", "knn")] {
        for fraction in [0.25, 1.0] {
            for seed in 0..3 {
                for init in ["pirl", "random"] {
                    out.push(run(arm, kind, init, fraction, seed));
                }
            }
        }
    }
    for fraction in [0.25, 1.0] {
        out.push(run("pirl-only", "linear-probe", "pirl", fraction, 0));
    }
    out
}

/// The external set's scores of a run (45 images, positives i % 3 == 1).
fn external(r: &ArmResult) -> BTreeMap<String, Vec<f64>> {
    let kind = if r.arm == "knn" {
        "knn"
    } else {
        "linear-probe"
    };
    let y = labels(45, 1);
    BTreeMap::from([(
        EXT.to_string(),
        scores(kind, &r.init, r.seed, r.fraction, &y, 200),
    )])
}

/// ```python
/// sex = ["female" if i % 2 == 0 else "male" for i in range(n)]
/// for i in range(80, 90): sex[i] = ""
/// age = ["unknown" if i % 11 == 5 else str(15 + (i * 7) % 70) for i in range(n)]
/// ```
fn test_meta() -> Vec<BTreeMap<String, String>> {
    (0..N)
        .map(|i| {
            let sex = if i >= 80 {
                ""
            } else if i % 2 == 0 {
                "female"
            } else {
                "male"
            };
            let age = if i % 11 == 5 {
                "unknown".to_string()
            } else {
                (15 + (i * 7) % 70).to_string()
            };
            BTreeMap::from([
                ("sex".to_string(), sex.to_string()),
                ("age_approximate".to_string(), age),
                ("lesion_id".to_string(), format!("L{i}")),
            ])
        })
        .collect()
}

fn inputs() -> serde_json::Value {
    serde_json::json!({
        "title": "pirlkit: report contents",
        "lines": ["data: synthetic scores"],
        "pretrain_losses": [6.0, 5.2, 4.9],
        "manifest": {"name": "contents"},
        "val_labels": labels(30, 0),
        "test_labels": labels(N, 0),
        "test_ids": (0..N).map(|i| format!("ISIC_{i:07}")).collect::<Vec<_>>(),
        "resamples": 200,
        "runs": [],
        "invocation": "test",
        "test_meta": test_meta(),
        "external": [{
            "name": EXT,
            "ids": (0..45).map(|i| format!("D7_{i}")).collect::<Vec<_>>(),
            "labels": labels(45, 1),
            "duplicates_dropped": [["D7_dup1", "ISIC_0000012"], ["D7_dup2", "ISIC_0000040"]],
        }],
    })
}

fn write_report(dir: &Path) -> Vec<String> {
    let ctx: ReportInputs = serde_json::from_value(inputs()).unwrap();
    write_with_external(dir, &results(), &ctx, external).unwrap()
}

fn read(p: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(p).unwrap())
        .finish()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn get(df: &DataFrame, col: &str, i: usize) -> AnyValue<'static> {
    df.column(col).unwrap().get(i).unwrap().into_static()
}

fn f64_at(df: &DataFrame, col: &str, i: usize) -> Option<f64> {
    match get(df, col, i) {
        AnyValue::Float64(v) => Some(v),
        AnyValue::Null => None,
        v => panic!("{col} row {i}: {v:?}"),
    }
}

fn str_at(df: &DataFrame, col: &str, i: usize) -> String {
    match get(df, col, i) {
        AnyValue::String(v) => v.to_string(),
        AnyValue::StringOwned(v) => v.to_string(),
        AnyValue::Null => String::new(),
        v => panic!("{col} row {i}: {v:?}"),
    }
}

/// The rows of `df` whose columns equal the given strings (numbers
/// compared as printed).
fn rows_where(df: &DataFrame, want: &[(&str, &str)]) -> Vec<usize> {
    (0..df.height())
        .filter(|&i| {
            want.iter().all(|(c, v)| match get(df, c, i) {
                AnyValue::String(s) => s == *v,
                AnyValue::StringOwned(s) => s.as_str() == *v,
                AnyValue::Float64(x) => x.to_string() == *v,
                AnyValue::UInt64(x) => x.to_string() == *v,
                _ => false,
            })
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// scikit-learn 1.9.1 on the fixture (linear-probe PIRL, 100 %, seed 0:
/// `p = expit(logit)`; knn PIRL, 100 %, seed 0: `p = vote`):
/// ```python
/// brier_score_loss(y, p)
/// pt, pp = calibration_curve(y, p, n_bins=10)
/// cnt = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
/// cnt = cnt[cnt > 0]; ece = np.sum(cnt / n * np.abs(pt - pp))
/// ```
#[test]
fn calibration_matches_scikit_learn() {
    let tmp = tempfile::tempdir().unwrap();
    write_report(tmp.path());
    let cal = read(&tmp.path().join("calibration.parquet"));
    // 26 runs on the internal test split, 26 on the external set.
    assert_eq!(cal.height(), 52);
    let key = |arm: &str| {
        rows_where(
            &cal,
            &[
                ("test_set", "test"),
                ("arm", arm),
                ("init", "pirl"),
                ("fraction", "1"),
                ("seed", "0"),
            ],
        )
    };
    let lp = key("linear-probe");
    assert_eq!(lp.len(), 1);
    assert_eq!(str_at(&cal, "probability", lp[0]), "sigmoid(logit)");
    assert!(close(
        f64_at(&cal, "brier", lp[0]).unwrap(),
        0.24645319696748647,
        1e-12
    ));
    assert!(close(
        f64_at(&cal, "ece", lp[0]).unwrap(),
        0.26320200328591803,
        1e-12
    ));
    let knn = key("knn");
    assert_eq!(str_at(&cal, "probability", knn[0]), "k-NN vote share");
    assert!(close(
        f64_at(&cal, "brier", knn[0]).unwrap(),
        0.10364999999999998,
        1e-12
    ));
    assert!(close(f64_at(&cal, "ece", knn[0]).unwrap(), 0.179, 1e-12));

    // The reliability curve behind the diagram.
    let rel = read(&tmp.path().join("reliability.parquet"));
    let bins = rows_where(
        &rel,
        &[
            ("test_set", "test"),
            ("arm", "linear-probe"),
            ("init", "pirl"),
            ("fraction", "1"),
            ("seed", "0"),
        ],
    );
    let frac_pos = [
        0.0,
        0.0,
        0.2222222222222222,
        0.3333333333333333,
        0.3333333333333333,
        0.4,
        0.3,
        0.3125,
        1.0,
    ];
    let mean_pred = [
        0.14682298536026078,
        0.2425178313444601,
        0.35863421280696595,
        0.46891174955710097,
        0.5621765008857981,
        0.6508190151886237,
        0.7495550916478794,
        0.8541748240282334,
        0.9375920545360661,
    ];
    let n = [10, 7, 9, 12, 6, 10, 10, 16, 10];
    assert_eq!(bins.len(), 9);
    for (k, &i) in bins.iter().enumerate() {
        assert!(close(
            f64_at(&rel, "fraction_positive", i).unwrap(),
            frac_pos[k],
            1e-12
        ));
        assert!(close(
            f64_at(&rel, "mean_predicted", i).unwrap(),
            mean_pred[k],
            1e-12
        ));
        assert_eq!(get(&rel, "n", i), AnyValue::UInt64(n[k]));
    }
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(md.contains("10 equal-width bins"), "the binning is stated");
}

/// Subgroups of linear-probe PIRL, 100 %, seed 0, against scikit-learn's
/// `roc_auc_score` and a DeLong interval computed by hand in numpy:
/// ```python
/// pos, neg = s[y == 1], s[y == 0]; psi = lambda a, b: (a > b) + 0.5 * (a == b)
/// v10 = [mean(psi(p, neg)) for p in pos]; v01 = [mean(psi(pos, q)) for q in neg]
/// se = sqrt(var(v10, ddof=1) / len(pos) + var(v01, ddof=1) / len(neg))
/// auc -/+ 1.959963984540054 * se
/// ```
#[test]
fn subgroups_match_hand_computed() {
    let tmp = tempfile::tempdir().unwrap();
    write_report(tmp.path());
    let sub = read(&tmp.path().join("subgroups.parquet"));
    type Want = (
        &'static str,
        &'static str,
        u64,
        u64,
        Option<(f64, f64, f64)>,
    );
    let want: [Want; 7] = [
        (
            "age",
            "<40",
            33,
            11,
            Some((0.6900826446280992, 0.5015077502474674, 0.878657539008731)),
        ),
        ("age", "40-59", 25, 9, None),
        ("age", ">=60", 24, 8, None),
        ("age", "unknown", 8, 2, None),
        (
            "sex",
            "female",
            40,
            14,
            Some((0.7115384615384616, 0.5484839452372541, 0.874592977839669)),
        ),
        (
            "sex",
            "male",
            40,
            13,
            Some((0.8034188034188035, 0.6525681831833406, 0.9542694236542663)),
        ),
        ("sex", "unknown", 10, 3, None),
    ];
    let mine = rows_where(
        &sub,
        &[
            ("test_set", "test"),
            ("arm", "linear-probe"),
            ("init", "pirl"),
            ("fraction", "1"),
            ("seed", "0"),
        ],
    );
    assert_eq!(mine.len(), want.len());
    for (&i, (col, group, n, n_pos, ci)) in mine.iter().zip(want) {
        assert_eq!(str_at(&sub, "column", i), col);
        assert_eq!(str_at(&sub, "group", i), group);
        assert_eq!(get(&sub, "n", i), AnyValue::UInt64(n), "{col}={group}");
        assert_eq!(
            get(&sub, "n_pos", i),
            AnyValue::UInt64(n_pos),
            "{col}={group}"
        );
        let got = (
            f64_at(&sub, "auc", i),
            f64_at(&sub, "delong_lo", i),
            f64_at(&sub, "delong_hi", i),
        );
        match ci {
            Some((a, lo, hi)) => {
                assert!(close(got.0.unwrap(), a, 1e-12), "{col}={group}: {got:?}");
                assert!(close(got.1.unwrap(), lo, 1e-9), "{col}={group}: {got:?}");
                assert!(close(got.2.unwrap(), hi, 1e-9), "{col}={group}: {got:?}");
            }
            None => assert_eq!(got, (None, None, None), "{col}={group}: fewer than 10"),
        }
    }
    // The external set has no metadata: no subgroups there.
    assert!(rows_where(&sub, &[("test_set", EXT)]).is_empty());
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(md.contains("fewer than 10 positives or 10 negatives"));
    assert!(
        md.contains("Not grouped: lesion_id: 90 distinct values"),
        "{md}"
    );
    assert!(md.contains("| sex = unknown | 10 | 3 | – |"), "{md}");
}

/// Three seeds: the difference is the mean of the per-seed AUC differences
/// with Student's t interval over seeds and the one-sample t-test (scipy):
/// ```python
/// d = [roc_auc_score(y, lp_pirl(s)) - roc_auc_score(y, lp_random(s)) for s in range(3)]
/// m = mean(d); h = stats.t.ppf(0.975, 2) * std(d, ddof=1) / sqrt(3)
/// stats.ttest_1samp(d, 0).pvalue
/// ```
#[test]
fn headline_compares_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let head = write_report(tmp.path());
    let hd = read(&tmp.path().join("headline.parquet"));
    let row = rows_where(
        &hd,
        &[
            ("test_set", "test"),
            ("arm", "linear-probe"),
            ("init", "pirl"),
            ("fraction", "1"),
        ],
    );
    assert_eq!(row.len(), 1);
    let i = row[0];
    assert_eq!(get(&hd, "seeds", i), AnyValue::UInt64(3));
    assert!(close(
        f64_at(&hd, "diff", i).unwrap(),
        0.18064814814814814,
        1e-12
    ));
    assert!(close(
        f64_at(&hd, "diff_lo", i).unwrap(),
        0.15181203380126654,
        1e-9
    ));
    assert!(close(
        f64_at(&hd, "diff_hi", i).unwrap(),
        0.20948426249502974,
        1e-9
    ));
    assert!(close(
        f64_at(&hd, "p", i).unwrap(),
        0.0013735306873207988,
        1e-9
    ));
    assert_eq!(str_at(&hd, "p_method", i), "t-test over 3 seeds");
    // The external set's comparison is there too, and differs.
    let ext = rows_where(
        &hd,
        &[
            ("test_set", EXT),
            ("arm", "linear-probe"),
            ("init", "pirl"),
            ("fraction", "1"),
        ],
    );
    assert_eq!(ext.len(), 1);
    assert!(f64_at(&hd, "diff", ext[0]).unwrap() != f64_at(&hd, "diff", i).unwrap());
    // An arm without random init: listed, nothing compared.
    let solo = rows_where(
        &hd,
        &[
            ("test_set", "test"),
            ("arm", "pirl-only"),
            ("fraction", "1"),
        ],
    );
    assert_eq!(solo.len(), 1);
    assert!(f64_at(&hd, "auc_init", solo[0]).is_some());
    assert_eq!(f64_at(&hd, "auc_random", solo[0]), None);
    assert_eq!(f64_at(&hd, "diff", solo[0]), None);

    // The printed headline: internal comparisons, mean ± sd with seeds.
    assert_eq!(head.len(), 4, "{head:?}");
    let lp = head
        .iter()
        .find(|l| l.starts_with("linear-probe, 100 % labels: PIRL "))
        .unwrap();
    assert!(
        lp.contains(" ± ") && lp.contains("(3 seeds) vs random init "),
        "{lp}"
    );
    let ps = lp.split("paired DeLong p = ").nth(1).unwrap();
    assert_eq!(ps.split(", ").count(), 3, "one p per seed: {lp}");
    let md = std::fs::read_to_string(tmp.path().join("report.md")).unwrap();
    assert!(md.contains(lp.as_str()));
    // The headline comes first: figures, then the table, then the rest.
    let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("report.md lacks {s}"));
    assert!(at("](label_efficiency_test.png)") < at("](forest.png)"));
    assert!(at("](forest.png)") < at("| arm | labels |"));
    assert!(at("| arm | labels |") < at("## Calibration"));
    assert!(at("## Calibration") < at("## Subgroups"));
    assert!(at("## Subgroups") < at("## External test sets"));
    assert!(at("## External test sets") < at("## Details"));
    assert!(at("## Details") < at("](roc_knn_f1.png)"));
    assert!(md.contains("| pirl-only | 25 % | – | PIRL |"), "{md}");
    // Duplicates dropped from the external set are listed.
    assert!(md.contains("| derm7pt | D7_dup2 | ISIC_0000040 |"), "{md}");
}

#[test]
fn nothing_prints_nan() {
    let tmp = tempfile::tempdir().unwrap();
    write_report(tmp.path());
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let p = e.unwrap().path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if ["md", "csv", "html", "svg"].contains(&ext) {
            let s = std::fs::read_to_string(&p).unwrap();
            assert!(!s.contains("NaN") && !s.contains("inf"), "{}", p.display());
        }
    }
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let rs = results();
    let mut j = inputs();
    j["external"][0]["labels"] = serde_json::json!([0, 1]);
    let ctx: ReportInputs = serde_json::from_value(j).unwrap();
    let e = write_with_external(tmp.path(), &rs, &ctx, external).unwrap_err();
    assert!(
        e.to_string()
            .contains("external test set \"derm7pt\": 45 ids for 2 labels"),
        "{e}"
    );

    let mut j = inputs();
    j["test_meta"] = serde_json::json!([{"sex": "male"}]);
    let ctx: ReportInputs = serde_json::from_value(j).unwrap();
    let e = write_with_external(tmp.path(), &rs, &ctx, external).unwrap_err();
    assert!(
        e.to_string().contains("1 metadata rows for 90 images"),
        "{e}"
    );

    let ctx: ReportInputs = serde_json::from_value(inputs()).unwrap();
    let short = |r: &ArmResult| {
        let mut m = external(r);
        if r.arm == "knn" && r.seed == 2 {
            m.get_mut(EXT).unwrap().pop();
        }
        m
    };
    let e = write_with_external(tmp.path(), &rs, &ctx, short).unwrap_err();
    assert!(
        e.to_string()
            .contains("run knn / pirl / 0.25 / seed 2 has 44 scores for 45 images"),
        "{e}"
    );

    let mut bad = rs.clone();
    bad[12].test_scores[0] = 1.5; // knn, a vote share above 1
    let e = write_with_external(tmp.path(), &bad, &ctx, external).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("calibration")
            && e.contains("run knn / pirl / 0.25 / seed 0")
            && e.contains("not in [0, 1]"),
        "{e}"
    );
}

/// Headless Chromium, offline: the page's figures are in the DOM and drawn
/// where they sit (their colours inside their boxes), the external set's
/// columns are in the headline table, and the headline comes first.
#[test]
fn the_page_renders_its_headline_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("report");
    write_report(&dir);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    let Some(chrome) = chromium() else { return };
    let ids = [
        "label_efficiency_test",
        "label_efficiency_ext_derm7pt",
        "forest",
        "reliability_linear-probe_test",
        "reliability_knn_test",
        "headline",
        "calibration",
    ];
    let shown = Shown::render(chrome, tmp.path(), &dir, &ids);
    let (dom, boxes) = (&shown.dom, &shown.boxes);
    for col in [
        "<th>AUC</th>",
        "<th>derm7pt: AUC</th>",
        "<th>derm7pt: difference [95 % CI]</th>",
        "<th>derm7pt: p</th>",
    ] {
        assert!(dom.contains(col), "headline table lacks {col}");
    }
    assert!(!dom.contains("NaN"));
    // The answer first: the headline section above calibration, the
    // label-efficiency figure above the forest plot or beside it.
    assert!(boxes["headline"][1] < boxes["calibration"][1]);
    assert!(boxes["label_efficiency_test"][1] <= boxes["forest"][1]);
    assert!(boxes["forest"][1] < boxes["calibration"][1]);
    let count = |id: &str, c: (u8, u8, u8)| shown.count(id, c);
    let (blue, red, green) = ((0x1f, 0x77, 0xb4), (0xd6, 0x27, 0x28), (0x2c, 0xa0, 0x2c));
    // linear-probe blue, knn red, pirl-only green, in both label-efficiency
    // figures; blue and red squares in the forest plot (pirl-only has no
    // comparison: no green); PIRL blue and random init red in the
    // reliability diagrams.
    for id in ["label_efficiency_test", "label_efficiency_ext_derm7pt"] {
        for (name, c) in [("blue", blue), ("red", red), ("green", green)] {
            assert!(count(id, c) > 150, "{id}: {name} {} pixels", count(id, c));
        }
    }
    assert!(count("forest", blue) > 150 && count("forest", red) > 150);
    assert!(count("forest", green) < 20, "pirl-only has no comparison");
    for id in ["reliability_linear-probe_test", "reliability_knn_test"] {
        assert!(count(id, blue) > 150 && count(id, red) > 150, "{id}");
    }
    // Drawn, not blank: dark (text, axes) pixels in each figure.
    for id in ["label_efficiency_test", "forest", "reliability_knn_test"] {
        assert!(count(id, (0, 0, 0)) > 300, "{id}: text and axes");
    }
}

/// The runs of the pictures' fixture: a linear probe with its PCA and
/// t-SNE maps, and a fine-tuning with Grad-CAM, each for PIRL and random
/// init. The maps put the positives (every third image) apart from the
/// rest; the Grad-CAM images are uniform grey (128), their layer4 map lit
/// in the lower right cell only, their layer3 map in the upper left cell
/// (and all zero for the last missed image of random init).
fn picture_results() -> Vec<ArmResult> {
    use pirlkit::eval::gradcam::{CamCase, CaseKind, GradCams, Heatmap};
    let y = labels(N, 0);
    let spot = |i: usize, l: u8, k: f64| {
        let a = i as f64 * 0.7;
        (k * l as f64 + a.cos(), a.sin() - k * l as f64)
    };
    let grey = {
        let im = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        let mut png = Vec::new();
        im.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        hex::encode(png)
    };
    let mut out = Vec::new();
    for init in ["pirl", "random"] {
        let mut r = run("linear-probe", "linear-probe", init, 1.0, 0);
        r.test_embedding = y
            .iter()
            .enumerate()
            .map(|(i, &l)| spot(i, l, 3.0))
            .collect();
        r.test_tsne = y
            .iter()
            .enumerate()
            .map(|(i, &l)| spot(i, l, 6.0))
            .collect();
        out.push(r);
        let mut f = run("finetune", "linear-probe", init, 1.0, 0);
        f.kind = pirlkit::protocol::ArmKind::Finetune;
        let threshold = 0.0;
        let picks = pirlkit::eval::gradcam::pick_cases(&f.test_scores, &y, threshold, 3);
        assert_eq!(picks.len(), 6, "{picks:?}");
        let cases = picks
            .iter()
            .enumerate()
            .map(|(k, &(kind, i))| {
                let mut l3 = vec![0.0f32; 16];
                if !(init == "random" && k == 5) {
                    l3[0] = 2.0;
                }
                CamCase {
                    kind,
                    index: i,
                    id: format!("ISIC_{i:07}"),
                    label: 1,
                    score: f.test_scores[i],
                    view_logit: f.test_scores[i],
                    image_png: grey.clone(),
                    maps: vec![
                        Heatmap {
                            stage: 4,
                            h: 2,
                            w: 2,
                            values: vec![0.0, 0.0, 0.0, 0.5],
                        },
                        Heatmap {
                            stage: 3,
                            h: 4,
                            w: 4,
                            values: l3,
                        },
                    ],
                }
            })
            .collect::<Vec<_>>();
        assert_eq!(cases[0].kind, CaseKind::TruePositive);
        assert_eq!(cases[5].kind, CaseKind::Missed);
        f.gradcam = Some(GradCams {
            threshold,
            view: 64,
            cases,
        });
        out.push(f);
    }
    out
}

/// An ensemble's Grad-CAM says whose maps it shows: the figure's title and
/// the section name the first member, a single run's say nothing of it.
#[test]
fn an_ensembles_grad_cam_names_the_member_it_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("report");
    let mut ctx = inputs();
    ctx["external"] = serde_json::json!([]);
    let ctx: ReportInputs = serde_json::from_value(ctx).unwrap();
    let mut rs = picture_results();
    let single = tmp.path().join("single");
    write_with_external(&single, &rs, &ctx, |_| BTreeMap::new()).unwrap();
    let html = std::fs::read_to_string(single.join("report.html")).unwrap();
    assert!(
        !html.contains("ensemble of"),
        "a single run called an ensemble"
    );
    let pirl_ft = rs
        .iter_mut()
        .find(|r| r.kind == pirlkit::protocol::ArmKind::Finetune && r.init == "pirl")
        .unwrap();
    pirl_ft.members = (0..3)
        .map(|k| pirlkit::train::finetune::Member {
            seed: k,
            best_epoch: 1,
            val_auc: 0.5,
            test_auc: 0.5,
            val_scores: Vec::new(),
            test_scores: Vec::new(),
        })
        .collect();
    write_with_external(&dir, &rs, &ctx, |_| BTreeMap::new()).unwrap();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let g = std::fs::read_to_string(dir.join("gradcam_finetune_pirl.svg")).unwrap();
    assert!(
        g.contains("ensemble of 3: the maps of its first member"),
        "{g}"
    );
    let r = std::fs::read_to_string(dir.join("gradcam_finetune_random.svg")).unwrap();
    assert!(!r.contains("ensemble of"));
    assert!(html.contains("its maps explain one model, the first member"));
}

/// The encoder's pictures: PCA and t-SNE maps of PIRL beside random init,
/// and the Grad-CAM figures, written as SVG and PNG, captioned honestly
/// (the 2x2 last stage), and drawn by Chromium where they sit: the maps'
/// dots, the image row's grey, the overlays' heat where the maps are lit.
#[test]
fn the_encoder_pictures_are_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("report");
    let mut ctx = inputs();
    ctx["external"] = serde_json::json!([]);
    let ctx: ReportInputs = serde_json::from_value(ctx).unwrap();
    write_with_external(&dir, &picture_results(), &ctx, |_| BTreeMap::new()).unwrap();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let figs = [
        "features_linear-probe_pirl",
        "features_linear-probe_random",
        "tsne_linear-probe_pirl",
        "tsne_linear-probe_random",
        "gradcam_finetune_pirl",
        "gradcam_finetune_random",
    ];
    for f in figs {
        assert!(html.contains(&format!("<figure id=\"{f}\">")), "{f}");
        assert!(md.contains(&format!("]({f}.png)")), "{f}");
        let png = image::open(dir.join(format!("{f}.png"))).unwrap();
        let svg = std::fs::read_to_string(dir.join(format!("{f}.svg"))).unwrap();
        let w: f64 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            png.width() as f64,
            2.0 * w,
            "{f}: the PNG is the SVG at twice the size"
        );
    }
    // PCA before t-SNE, PIRL before random init; Grad-CAM after them.
    let at = |s: &str| html.find(&format!("<figure id=\"{s}\">")).unwrap();
    assert!(at(figs[0]) < at(figs[1]) && at(figs[1]) < at(figs[2]));
    assert!(at(figs[2]) < at(figs[3]) && at(figs[3]) < at(figs[4]));
    // One dot per test image in each map.
    for f in &figs[..4] {
        let svg = std::fs::read_to_string(dir.join(format!("{f}.svg"))).unwrap();
        assert!(svg.matches("<circle").count() >= N, "{f}");
    }
    // Six images, three rows each (the view, layer4, layer3), inline.
    let g = std::fs::read_to_string(dir.join("gradcam_finetune_pirl.svg")).unwrap();
    assert_eq!(g.matches("href=\"data:image/png;base64,").count(), 18);
    assert!(g.contains("true positive") && g.contains("missed") && g.contains("melanoma, p "));
    assert!(g.contains("2x2 cells") && g.contains("4x4 cells"));
    let r = std::fs::read_to_string(dir.join("gradcam_finetune_random.svg")).unwrap();
    assert!(r.contains("map all zero") && !g.contains("map all zero"));
    assert!(html.contains("At 64 px input the last stage (layer4) is a 2x2 grid"));
    assert!(html.contains("The layer3 row (4x4) is finer, but it is not the last stage"));
    assert!(html.contains("perplexity 30"));
    assert!(!html.contains("NaN"));

    let Some(chrome) = chromium() else { return };
    let shown = Shown::render(chrome, tmp.path(), &dir, &figs);
    let b = &shown.boxes;
    // PIRL beside random init (same row), the t-SNE maps under the PCA maps.
    assert_eq!(b[figs[0]][1], b[figs[1]][1]);
    assert!(b[figs[0]][0] < b[figs[1]][0]);
    assert!(b[figs[2]][1] > b[figs[0]][1]);
    let (blue, red) = ((31, 119, 180), (214, 39, 40));
    for f in &figs[..4] {
        assert!(shown.count(f, blue) > 150, "{f}: blue dots");
        assert!(shown.count(f, red) > 100, "{f}: red dots");
        assert!(shown.count(f, (0, 0, 0)) > 300, "{f}: text and axes");
    }
    // Grad-CAM: the grey views; the overlays red (255, 0, 0 at 45 % over
    // grey) where a map peaks and blue (0, 0, 255 over grey) where it is
    // zero; header text.
    let (heat, cold, grey) = ((185, 70, 70), (70, 70, 185), (128, 128, 128));
    for f in &figs[4..] {
        let (h, c, gr) = (
            shown.count(f, heat),
            shown.count(f, cold),
            shown.count(f, grey),
        );
        assert!(h > 2000, "{f}: {h} heat pixels");
        assert!(c > 10000, "{f}: {c} cold pixels");
        assert!(gr > 6 * 90 * 90, "{f}: {gr} grey pixels (six views)");
        assert!(shown.count(f, (0, 0, 0)) > 300, "{f}: text");
    }
}

/// A Grad-CAM case that cannot be drawn is an error naming the run and
/// the image, not a blank panel.
#[test]
fn broken_pictures_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctx = inputs();
    ctx["external"] = serde_json::json!([]);
    let ctx: ReportInputs = serde_json::from_value(ctx).unwrap();
    let mut rs = picture_results();
    let g = rs[1].gradcam.as_mut().unwrap();
    g.cases[2].image_png = "not hex".into();
    let id = g.cases[2].id.clone();
    let e = write_with_external(tmp.path(), &rs, &ctx, |_| BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("run finetune / pirl / 1 / seed 0") && e.contains(&id),
        "{e}"
    );
    let mut rs = picture_results();
    let g = rs[3].gradcam.as_mut().unwrap();
    g.cases[1].maps.pop();
    let id = g.cases[1].id.clone();
    let e = write_with_external(tmp.path(), &rs, &ctx, |_| BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("run finetune / random / 1 / seed 0") && e.contains(&id),
        "{e}"
    );
}

/// report.html as headless Chromium lays it out and draws it: the DOM, the
/// box of each element asked for (left, top, width, height in page
/// pixels), and a screenshot of the whole page.
struct Shown {
    dom: String,
    boxes: BTreeMap<String, Vec<i64>>,
    img: image::RgbImage,
}

impl Shown {
    fn render(chrome: &str, tmp: &Path, dir: &Path, ids: &[&str]) -> Shown {
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        // A copy that writes each element's box into the DOM once laid out.
        let probe = format!(
            "<script>const r=[{}].map(i=>{{const e=document.getElementById(i);if(!e)return i+' missing';const b=e.getBoundingClientRect();return [i,b.left+scrollX,b.top+scrollY,b.width,b.height].map(v=>typeof v==='number'?Math.round(v):v).join(' ')}});r.push('page '+document.documentElement.scrollHeight);const p=document.createElement('pre');p.id='boxes';p.textContent=r.join('\\n');document.body.appendChild(p);</script></body>",
            ids.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let page = dir.join("probe.html");
        std::fs::write(&page, html.replace("</body>", &probe)).unwrap();
        let dom = browse(
            chrome,
            tmp,
            &page,
            &["--dump-dom", "--window-size=1280,900"],
        );
        let boxes: BTreeMap<String, Vec<i64>> = dom
            .split("<pre id=\"boxes\">")
            .nth(1)
            .and_then(|s| s.split("</pre>").next())
            .unwrap_or_else(|| panic!("no boxes in the DOM"))
            .lines()
            .map(|l| {
                let mut w = l.split(' ');
                let id = w.next().unwrap().to_string();
                let v: Vec<i64> = w
                    .map(|x| x.parse().unwrap_or_else(|_| panic!("{l}")))
                    .collect();
                (id, v)
            })
            .collect();
        for id in ids {
            assert_eq!(boxes[*id].len(), 4, "{id}: {:?}", boxes[*id]);
        }
        let height = boxes["page"][0];
        let shot = tmp.join("page.png");
        browse(
            chrome,
            tmp,
            &page,
            &[
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size=1280,{height}"),
            ],
        );
        let img = image::open(&shot).unwrap().to_rgb8();
        Shown { dom, boxes, img }
    }

    /// Pixels within 40 of `c` per channel inside the box of `id`.
    fn count(&self, id: &str, c: (u8, u8, u8)) -> usize {
        let (b, img) = (&self.boxes[id], &self.img);
        let (x0, y0) = (b[0].max(0) as u32, b[1].max(0) as u32);
        let (x1, y1) = (
            ((b[0] + b[2]) as u32).min(img.width()),
            ((b[1] + b[3]) as u32).min(img.height()),
        );
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y).0;
                (p[0] as i32 - c.0 as i32).abs() < 40
                    && (p[1] as i32 - c.1 as i32).abs() < 40
                    && (p[2] as i32 - c.2 as i32).abs() < 40
            })
            .count()
    }
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no chromium to render report.html");
        }
        eprintln!("SKIPPED: report.html browser check (no chromium installed)");
    }
    found
}

fn browse(chrome: &str, tmp: &Path, page: &Path, args: &[&str]) -> String {
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.join("chrome-profile").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The linear probe on all the labels does not depend on the seed: the same
/// run three times. Its comparison is that run's paired DeLong test, not a
/// t-test over three identical differences (sd 0, which printed p < 0.0001
/// for a difference of 0.001 in the protocol's report).
#[test]
fn a_seed_independent_arm_is_compared_as_one_run() {
    let rs: Vec<ArmResult> = results()
        .into_iter()
        .map(|r| {
            if r.arm == "linear-probe" && r.fraction == 1.0 {
                let mut one = run("linear-probe", "linear-probe", &r.init, 1.0, 0);
                one.seed = r.seed;
                one.key = r.key.clone();
                one
            } else {
                r
            }
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let ctx: ReportInputs = serde_json::from_value(inputs()).unwrap();
    write_with_external(tmp.path(), &rs, &ctx, external).unwrap();
    let hd = read(&tmp.path().join("headline.parquet"));
    let at = |fraction: &str| {
        let row = rows_where(
            &hd,
            &[
                ("test_set", "test"),
                ("arm", "linear-probe"),
                ("init", "pirl"),
                ("fraction", fraction),
            ],
        );
        assert_eq!(row.len(), 1);
        row[0]
    };
    let y = labels(N, 0);
    let pirl = scores("linear-probe", "pirl", 0, 1.0, &y, 0);
    let random = scores("linear-probe", "random", 0, 1.0, &y, 0);
    let want = pirlkit::eval::stats::delong_paired(&pirl, &random, &y).unwrap();
    let i = at("1");
    assert_eq!(
        str_at(&hd, "p_method", i),
        "paired DeLong (the 3 seeds give one run)"
    );
    assert!(close(f64_at(&hd, "p", i).unwrap(), want.p, 1e-12));
    assert!(close(f64_at(&hd, "diff", i).unwrap(), want.diff, 1e-12));
    assert!(close(f64_at(&hd, "diff_lo", i).unwrap(), want.lo, 1e-12));
    assert!(close(f64_at(&hd, "diff_hi", i).unwrap(), want.hi, 1e-12));
    assert!(want.lo < want.hi, "a real interval, not a point");
    // Seed-dependent runs still get the t-test over seeds.
    assert_eq!(str_at(&hd, "p_method", at("0.25")), "t-test over 3 seeds");
}
