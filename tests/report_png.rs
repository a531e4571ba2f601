//! The protocol report's PNG charts and Parquet tables, on a small report
//! written in-process from scored runs: the PNGs decode to the chart size,
//! show the curves, the diagonal and text drawn with the embedded font; the
//! Parquet tables read back (polars' ParquetReader) to the values written;
//! report.md links the PNGs while report.html keeps its inline SVG.

use std::path::Path;

use image::{Rgb, RgbImage};
use polars::prelude::{AnyValue, DataFrame, ParquetReader, SerReader};

use pirlkit::eval::auc::auc;
use pirlkit::protocol::ArmResult;
use pirlkit::report::png::{self, COLORS, HEIGHT, MARGINS, WIDTH};
use pirlkit::report::protocol::write;
use pirlkit::report::svg::Series;
use pirlkit::runner::ReportInputs;

fn near(p: &Rgb<u8>, c: (u8, u8, u8)) -> bool {
    let d = |a: u8, b: u8| (a as i32 - b as i32).abs() < 24;
    d(p.0[0], c.0) && d(p.0[1], c.1) && d(p.0[2], c.2)
}

/// Dark (text or axis) pixels inside `x0..x1` x `y0..y1`.
fn dark(img: &RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 110))
        .count()
}

fn decode(bytes: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

fn roc_series() -> Vec<Series> {
    vec![
        Series {
            label: "pirl (AUC 0.900)".into(),
            points: vec![
                (0.0, 0.0),
                (0.05, 0.6),
                (0.2, 0.85),
                (0.5, 0.95),
                (1.0, 1.0),
            ],
        },
        Series {
            label: "random (AUC 0.700)".into(),
            points: vec![(0.0, 0.0), (0.2, 0.4), (0.5, 0.75), (1.0, 1.0)],
        },
    ]
}

fn chart(xlabel: &str, ylabel: &str, title: &str) -> RgbImage {
    let bytes = png::line_chart(
        title,
        xlabel,
        ylabel,
        &roc_series(),
        (0.0, 1.0),
        (0.0, 1.0),
        true,
    )
    .unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    decode(&bytes)
}

#[test]
fn png_chart_shows_curves_diagonal_and_text() {
    let img = chart("1 - specificity", "sensitivity", "ROC: test chart");
    assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
    let (l, r, t, b) = MARGINS;

    // Not blank: mostly white, but a good share of drawn pixels.
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    let total = (WIDTH * HEIGHT) as usize;
    assert!(
        white > total / 2 && white < total - 5_000,
        "{white} white of {total}"
    );

    // Both curve colours, inside the plot area.
    for c in &COLORS[..2] {
        let n = (t..HEIGHT - b)
            .flat_map(|y| (l..WIDTH - r).map(move |x| (x, y)))
            .filter(|&(x, y)| near(img.get_pixel(x, y), *c))
            .count();
        assert!(n > 1_000, "curve colour {c:?}: {n} pixels");
    }
    // The dashed grey diagonal: on the line x = y, near the plot's middle.
    let (pw, ph) = ((WIDTH - l - r) as i64, (HEIGHT - t - b) as i64);
    let (cx, cy) = (l as i64 + pw / 2, t as i64 + ph / 2);
    let grey = (-20i64..20)
        .filter(|d| {
            let (x, y) = (cx + 3 * d, cy - 3 * d * ph / pw);
            (-1..=1).any(|k| near(img.get_pixel(x as u32, (y + k) as u32), (0x99, 0x99, 0x99)))
        })
        .count();
    assert!(grey >= 10, "diagonal: {grey} grey samples");

    // Text: title band, x tick labels + x label below the plot, y ticks +
    // y label left of it.
    assert!(dark(&img, (0, WIDTH), (0, t - 10)) > 300, "title");
    assert!(
        dark(&img, (l, WIDTH - r), (HEIGHT - b + 8, HEIGHT)) > 600,
        "x labels"
    );
    assert!(dark(&img, (0, l - 8), (t, HEIGHT - b)) > 600, "y labels");

    // The axis titles are really drawn: without them those bands lose ink.
    let bare = chart("", "", "");
    let xband = |i: &RgbImage| dark(i, (l, WIDTH - r), (HEIGHT - b / 2, HEIGHT));
    let yband = |i: &RgbImage| dark(i, (0, l / 2), (t, HEIGHT - b));
    let tband = |i: &RgbImage| dark(i, (0, WIDTH), (0, t - 10));
    assert!(
        xband(&img) > xband(&bare) + 200,
        "{} vs {}",
        xband(&img),
        xband(&bare)
    );
    assert!(
        yband(&img) > yband(&bare) + 200,
        "{} vs {}",
        yband(&img),
        yband(&bare)
    );
    assert!(tband(&img) > tband(&bare) + 200);
    // Different text, different pixels (glyphs, not boxes).
    assert!(chart("epoch", "loss", "other") != img);
}

fn scores(n: usize, labels: &[u8], shift: f64, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let noise = (((i as u64 * 2654435761 + seed * 97) % 1000) as f64) / 1000.0;
            labels[i] as f64 * shift + noise
        })
        .collect()
}

fn result(
    arm: &str,
    init: &str,
    fraction: f64,
    seed: u64,
    val_y: &[u8],
    test_y: &[u8],
) -> ArmResult {
    let shift = if init == "pirl" { 0.6 } else { 0.2 };
    let test_scores = scores(test_y.len(), test_y, shift, seed);
    let val_scores = scores(val_y.len(), val_y, shift, seed + 7);
    // Through serde, as the runner reads saved runs: fields added to
    // ArmResult later (with serde defaults) need no change here.
    serde_json::from_value(serde_json::json!({
        "arm": arm,
        "kind": "linear-probe",
        "init": init,
        "fraction": fraction,
        "seed": seed,
        "n_train": (100.0 * fraction) as usize,
        "n_train_pos": (20.0 * fraction) as usize,
        "val_auc": auc(&val_scores, val_y).unwrap(),
        "test_auc": auc(&test_scores, test_y).unwrap(),
        "test_scores": test_scores,
        "val_scores": val_scores,
        "detail": format!("C=0.1 seed {seed}"),
        "seconds": 1.0,
        "key": format!("{arm}-{init}-{fraction}-{seed}"),
        "computed_by": "test",
    }))
    .unwrap()
}

fn read_parquet(p: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(p).unwrap())
        .finish()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A column's values (polars' AnyValue, no nulls expected).
fn values<T>(df: &DataFrame, col: &str, f: impl Fn(AnyValue) -> Option<T>) -> Vec<T> {
    let c = df.column(col).unwrap();
    (0..c.len())
        .map(|i| {
            let v = c.get(i).unwrap();
            f(v.clone()).unwrap_or_else(|| panic!("{col} row {i}: {v:?}"))
        })
        .collect()
}

fn f64s(df: &DataFrame, col: &str) -> Vec<f64> {
    values(df, col, |v| match v {
        AnyValue::Float64(x) => Some(x),
        _ => None,
    })
}

fn u64s(df: &DataFrame, col: &str) -> Vec<u64> {
    values(df, col, |v| match v {
        AnyValue::UInt64(x) => Some(x),
        _ => None,
    })
}

fn strs(df: &DataFrame, col: &str) -> Vec<String> {
    values(df, col, |v| match v {
        AnyValue::String(x) => Some(x.to_string()),
        AnyValue::StringOwned(x) => Some(x.to_string()),
        _ => None,
    })
}

#[test]
fn report_writes_parquet_and_png() {
    let test_y: Vec<u8> = (0..80).map(|i| (i % 4 == 0) as u8).collect();
    let val_y: Vec<u8> = (0..60).map(|i| (i % 3 == 0) as u8).collect();
    let mut results = Vec::new();
    for arm in ["linear-probe", "knn"] {
        for fraction in [0.5, 1.0] {
            for seed in [0, 1] {
                for init in ["pirl", "random"] {
                    results.push(result(arm, init, fraction, seed, &val_y, &test_y));
                }
            }
        }
    }
    let losses = [6.2, 5.1, 4.4, 4.0];
    let ctx: ReportInputs = serde_json::from_value(serde_json::json!({
        "title": "pirlkit: png-parquet",
        "lines": ["data: synthetic scores"],
        "pretrain_losses": losses,
        "manifest": {"name": "png-parquet"},
        "val_labels": val_y,
        "test_labels": test_y,
        "test_ids": (0..test_y.len()).map(|i| format!("img{i}")).collect::<Vec<_>>(),
        "resamples": 100,
        "runs": [],
        "invocation": "test",
    }))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("report");
    write(&dir, &results, &ctx).unwrap();

    // runs.parquet: the values written, bit for bit, in the CSV's order.
    let runs = read_parquet(&dir.join("runs.parquet"));
    assert_eq!(runs.height(), results.len());
    let names: Vec<String> = runs
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let csv = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), names.join(","));
    assert_eq!(
        strs(&runs, "arm"),
        results.iter().map(|r| r.arm.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        strs(&runs, "init"),
        results.iter().map(|r| r.init.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        strs(&runs, "detail"),
        results.iter().map(|r| r.detail.clone()).collect::<Vec<_>>()
    );
    let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(f64s(&runs, "test_auc")),
        bits(results.iter().map(|r| r.test_auc).collect())
    );
    assert_eq!(
        bits(f64s(&runs, "val_auc")),
        bits(results.iter().map(|r| r.val_auc).collect())
    );
    assert_eq!(
        bits(f64s(&runs, "fraction")),
        bits(results.iter().map(|r| r.fraction).collect())
    );
    let seeds = u64s(&runs, "seed");
    assert_eq!(seeds, results.iter().map(|r| r.seed).collect::<Vec<_>>());
    // Every other float column matches the CSV text.
    for (i, line) in csv.lines().skip(1).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        for (j, name) in names.iter().enumerate().skip(6).take(14) {
            let want: f64 = cells[j].parse().unwrap();
            let got = f64s(&runs, name)[i];
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{name} row {i}: {got} vs {want}"
            );
        }
    }
    let lo = f64s(&runs, "delong_lo");
    let hi = f64s(&runs, "delong_hi");
    for (r, (lo, hi)) in results.iter().zip(lo.iter().zip(&hi)) {
        assert!(*lo <= r.test_auc && r.test_auc <= *hi && *lo < *hi);
    }

    // paired.parquet and summary.parquet.
    let paired = read_parquet(&dir.join("paired.parquet"));
    assert_eq!(paired.height(), 8);
    for (i, p) in results.chunks(2).enumerate() {
        assert_eq!(
            f64s(&paired, "auc_init")[i].to_bits(),
            p[0].test_auc.to_bits()
        );
        assert_eq!(
            f64s(&paired, "auc_random")[i].to_bits(),
            p[1].test_auc.to_bits()
        );
        let diff = f64s(&paired, "diff")[i];
        assert!((diff - (p[0].test_auc - p[1].test_auc)).abs() < 1e-12);
    }
    let summary = read_parquet(&dir.join("summary.parquet"));
    assert_eq!(summary.height(), 8);
    assert!(u64s(&summary, "seeds").iter().all(|&s| s == 2));
    let first = results
        .iter()
        .filter(|r| r.arm == "knn" && r.init == "pirl" && r.fraction == 0.5)
        .map(|r| r.test_auc)
        .sum::<f64>()
        / 2.0;
    assert!((f64s(&summary, "test_auc_mean")[0] - first).abs() < 1e-12);
    assert_eq!(strs(&summary, "arm")[0], "knn");

    // PNGs: one ROC per arm and fraction, plus the loss curve.
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for name in [
        "roc_knn_f0.5.png",
        "roc_knn_f1.png",
        "roc_linear-probe_f0.5.png",
        "roc_linear-probe_f1.png",
        "pretrain_loss.png",
    ] {
        assert!(
            md.contains(&format!("]({name})")),
            "report.md lacks {name}:\n{md}"
        );
        let img = decode(&std::fs::read(dir.join(name)).unwrap());
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT), "{name}");
        let blue = img.pixels().filter(|p| near(p, COLORS[0])).count();
        assert!(blue > 1_000, "{name}: {blue} blue pixels");
        let (l, r, _, b) = MARGINS;
        assert!(
            dark(&img, (l, WIDTH - r), (HEIGHT - b + 8, HEIGHT)) > 200,
            "{name}: x labels"
        );
        assert!(
            dark(&img, (0, l - 8), (0, HEIGHT - b)) > 200,
            "{name}: y labels"
        );
        if name.starts_with("roc_") {
            let red = img.pixels().filter(|p| near(p, COLORS[1])).count();
            assert!(red > 1_000, "{name}: {red} red pixels");
        }
    }
    // report.html stays self-contained: inline SVG, no image files.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    // Label efficiency, forest, 2 reliability diagrams, 4 ROC curves, the loss.
    assert_eq!(html.matches("<svg").count(), 9);
    assert!(!html.contains(".png"));
}
