//! `pirlkit reproduce` end to end on a small subset of ISIC 2017 (tiny
//! width, 32 px): the report's contents, determinism, and bad input.

mod common;

use std::process::Command;

fn reproduce(
    data: &std::path::Path,
    reports: &std::path::Path,
    cache: &std::path::Path,
    name: &str,
) -> std::process::Output {
    Command::new(common::bin())
        .args([
            "reproduce",
            "--preset",
            "tiny",
            "--limit-per-split",
            "64",
            "--run-name",
            name,
            "--no-progress",
        ])
        .arg("--data")
        .arg(data)
        .arg("--reports")
        .arg(reports)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap()
}

fn read_csv(p: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn reproduce_on_isic_subset_writes_the_report() {
    let Some(data) = common::isic_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let out = reproduce(&data, &reports, &cache, "e2e");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = reports.join("e2e");
    // One runner: the built-in protocol's report, one row per init.
    let rows = read_csv(&dir.join("runs.csv"));
    let h = &rows[0];
    let col = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {h:?}"))
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[1][col("arm")], "linear-probe");
    assert_eq!(rows[1][col("init")], "pirl");
    assert_eq!(rows[2][col("init")], "random");
    for r in &rows[1..] {
        let auc: f64 = r[col("test_auc")].parse().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{auc}");
    }
    // The first 64 rows of the test ground truth, scored by both arms.
    let gt = std::fs::read_to_string(data.join("ISIC-2017_Test_v2_Part3_GroundTruth.csv")).unwrap();
    let want_pos = gt
        .lines()
        .skip(1)
        .take(64)
        .filter(|l| l.split(',').nth(1) == Some("1.0"))
        .count();
    let scores = read_csv(&dir.join("test_scores.csv"));
    assert_eq!(scores.len(), 65);
    assert_eq!(scores[0].len(), 4, "{:?}", scores[0]);
    assert!(scores[1][0].starts_with("ISIC_"));
    assert_eq!(scores[1..].iter().filter(|r| r[1] == "1").count(), want_pos);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("PIRL pretraining: 2 epochs"), "{md}");
    // The headline, printed and at the top of the report.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let head = stdout.lines().next().unwrap_or_default();
    assert!(
        head.starts_with("linear-probe, 100 % labels: PIRL ")
            && head.contains("vs random init")
            && (head.contains("paired DeLong p = ") || head.contains("paired DeLong p < ")),
        "{stdout}"
    );
    assert!(md.contains(head), "{md}");
    // Checkpoint and resolved config beside it.
    assert!(dir.join("pretrain/config.json").is_file());
    assert!(
        dir.join("pretrain/checkpoints/step-00000008/model.safetensors")
            .is_file()
    );

    // Same seed, fresh folder, cache reused: the same numbers.
    let out2 = reproduce(&data, &reports, &cache, "e2e-again");
    assert!(
        out2.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let rows2 = read_csv(&reports.join("e2e-again/runs.csv"));
    for (a, b) in rows[1..].iter().zip(&rows2[1..]) {
        assert_eq!(a[col("test_auc")], b[col("test_auc")]);
    }
    assert_eq!(
        std::fs::read(dir.join("test_scores.csv")).unwrap(),
        std::fs::read(reports.join("e2e-again/test_scores.csv")).unwrap()
    );
}

#[test]
fn bad_data_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = reproduce(
        tmp.path(),
        &tmp.path().join("r"),
        &tmp.path().join("c"),
        "x",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a dataset") && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
    assert!(!tmp.path().join("r/x/summary.csv").exists());
}

#[test]
fn unknown_config_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[model]\nwidht = 0.5\n").unwrap();
    let out = Command::new(common::bin())
        .args(["pretrain", "--preset", "tiny", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("widht") && err.contains("c.toml"), "{err}");
}

#[test]
fn bench_prints_one_json_line_per_configuration() {
    let out = Command::new(common::bin())
        .args([
            "bench",
            "--width",
            "0.125",
            "--batch",
            "2,4",
            "--size",
            "32",
            "--steps",
            "2",
            "--what",
            "train,finetune,features",
            "--pirl-preset",
            "tiny",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    let whats: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        [
            "resnet-train-step",
            "resnet-train-step",
            "finetune-step",
            "finetune-step",
            "features",
            "features",
            "pirl-step"
        ]
    );
    for l in &lines {
        // Linux: the peak resident memory of the process, a few MiB at least.
        let peak = l["peak_rss_mib"].as_f64().unwrap();
        assert!(peak > 1.0 && peak < 64.0 * 1024.0, "{l}");
        assert!(l["median_s"].as_f64().unwrap() > 0.0, "{l}");
    }
    for l in &lines[..2] {
        assert_eq!(l["what"], "resnet-train-step");
        let (step, fwd) = (
            l["median_s"].as_f64().unwrap(),
            l["forward_median_s"].as_f64().unwrap(),
        );
        assert!(
            fwd > 0.0 && fwd < step,
            "the forward is part of the step: {l}"
        );
        assert!(
            (l["images_per_s"].as_f64().unwrap() - l["batch"].as_f64().unwrap() / step).abs()
                < 1e-6
        );
    }
    assert_eq!(lines[6]["batch"], 16);
}

#[test]
fn audit_command_reports_cross_split_duplicates() {
    let Some(data) = common::isic_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("audit")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("audit.csv"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg("--fail-on-leak")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("across splits") && text.contains("LEAK"),
        "{text}"
    );
    let csv = std::fs::read_to_string(tmp.path().join("audit.csv")).unwrap();
    // ISIC_0012175 (train) and ISIC_0015982 (test) are the same file.
    assert!(
        csv.lines()
            .any(|l| l.contains("ISIC_0012175") && l.contains("ISIC_0015982")),
        "{csv}"
    );
}

#[test]
fn skip_bad_leaves_out_unreadable_images_and_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    pirlkit::data::synthetic::generate(&data, 90, 48, 2).unwrap();
    // Corrupt one training image in place (truncate it).
    let victim = data.join("images/synth_00001.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let run = |extra: &[&str], name: &str| {
        Command::new(common::bin())
            .args([
                "reproduce",
                "--preset",
                "tiny",
                "--no-progress",
                "--run-name",
                name,
            ])
            .args(extra)
            .arg("--data")
            .arg(&data)
            .arg("--reports")
            .arg(tmp.path().join("reports"))
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = run(&[], "strict");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synth_00001.png"), "{err}");
    assert!(!tmp.path().join("reports/strict/summary.csv").exists());

    let out = run(&["--skip-bad"], "lenient");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let skipped = std::fs::read_to_string(tmp.path().join("reports/lenient/skipped.csv")).unwrap();
    assert_eq!(skipped.lines().count(), 2, "{skipped}");
    assert!(skipped.contains("synth_00001"), "{skipped}");
    let md = std::fs::read_to_string(tmp.path().join("reports/lenient/report.md")).unwrap();
    assert!(md.contains("unreadable images skipped: 1"), "{md}");
}
