//! A protocol end to end on the built-in synthetic data (tiny settings):
//! every (arm, init, fraction, seed) runs through one code path, the report
//! holds what a reviewer needs, and an interrupted protocol continues with
//! the runs not done.

mod common;

use std::path::Path;
use std::process::Command;

use pirlkit::protocol::label_subset;

const PROTOCOL: &str = r#"
name = "tiny-protocol"
preset = "tiny"
seeds = [0, 1]
label_fractions = [0.5, 1.0]
bootstrap_resamples = 200

[config]
data.limit_per_split = 60

[[arms]]
name = "linear-probe"
kind = "linear-probe"

[[arms]]
name = "knn"
kind = "knn"
k = 5

[[arms]]
name = "partial-finetune"
kind = "finetune"
[arms.finetune]
epochs = 2
batch_size = 16
freeze_up_to = "layer3"
"#;

use common::run_protocol as run;

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn protocol_runs_every_arm_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("tiny.toml");
    std::fs::write(&proto, PROTOCOL).unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = reports.join("tiny-protocol");
    // 3 arms x 2 inits x 2 fractions x 2 seeds.
    let runs = lines(&dir.join("runs.csv"));
    assert_eq!(runs.len(), 1 + 24, "{runs:?}");
    assert!(runs[0].starts_with("arm,init,fraction,seed,n_train,n_train_pos,val_auc,test_auc,delong_lo,delong_hi,boot_lo,boot_hi"));
    // Nested, stratified label fractions: half the labels -> half the images.
    let n_train: Vec<u64> = runs[1..]
        .iter()
        .map(|l| l.split(',').nth(4).unwrap().parse().unwrap())
        .collect();
    assert!(
        n_train.iter().all(|&n| n == 60 || n == 30 || n == 31),
        "{n_train:?}"
    );
    let paired = lines(&dir.join("paired.csv"));
    assert_eq!(paired.len(), 1 + 12);
    assert!(paired[0].contains("delong_p"));
    let summary = lines(&dir.join("summary.csv"));
    assert_eq!(summary.len(), 1 + 12);
    for l in &runs[1..] {
        let f: Vec<f64> = l
            .split(',')
            .skip(6)
            .take(6)
            .map(|v| v.parse().unwrap())
            .collect();
        // test AUC inside its DeLong CI; CIs inside [0, 1].
        assert!(f[2] <= f[1] + 1e-12 && f[1] <= f[3] + 1e-12, "{l}");
        assert!(f.iter().all(|v| (0.0..=1.0).contains(v)), "{l}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains("<svg")
            && html.contains("PIRL vs. random init")
            && html.contains("partial-finetune")
    );
    assert!(
        !html.contains("src=\"http"),
        "report.html must open offline"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["data"]["images"], 180);
    assert_eq!(manifest["data"]["sha256_all"].as_str().unwrap().len(), 64);
    assert!(manifest["checkpoints_sha256"].as_object().unwrap().len() == 1);
    let commit = manifest["git_commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    assert!(
        manifest["crates"]["candle-core"] == "0.11.1",
        "{}",
        manifest["crates"]
    );
    assert!(dir.join("roc_linear-probe_f1.svg").is_file());
    // What the frozen encoders separate: PIRL and random init, side by side.
    assert!(html.contains("What the frozen encoder separates"));
    for init in ["pirl", "random"] {
        let svg =
            std::fs::read_to_string(dir.join(format!("features_linear-probe_{init}.svg"))).unwrap();
        assert!(
            svg.matches("<circle").count() >= 60,
            "{init}: one dot per test image"
        );
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    // ... and as t-SNE maps.
    for init in ["pirl", "random"] {
        let svg =
            std::fs::read_to_string(dir.join(format!("tsne_linear-probe_{init}.svg"))).unwrap();
        assert!(svg.matches("<circle").count() >= 60, "{init}: t-SNE dots");
    }
    // Grad-CAM of the fine-tuned model at the largest fraction and first
    // seed only, for each init: the surest true positives and the misses of
    // the 60 test images, at 32 px (layer4 one cell, layer3 2x2).
    let mut explained = Vec::new();
    for f in std::fs::read_dir(dir.join("runs")).unwrap() {
        let r: pirlkit::protocol::ArmResult =
            serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap();
        if let Some(g) = &r.gradcam {
            explained.push((r.arm.clone(), r.init.clone(), r.fraction, r.seed));
            assert_eq!(g.view, 32);
            assert!(!g.cases.is_empty() && g.cases.len() <= 6);
            for c in &g.cases {
                assert_eq!(c.label, 1);
                assert_eq!(c.score, r.test_scores[c.index]);
                let shape: Vec<_> = c.maps.iter().map(|m| (m.stage, m.h, m.w)).collect();
                assert_eq!(shape, vec![(4, 1, 1), (3, 2, 2)]);
                assert_eq!(c.image().unwrap().dimensions(), (32, 32));
            }
        }
        assert_eq!(
            r.test_tsne.len(),
            if r.kind == pirlkit::protocol::ArmKind::LinearProbe {
                60
            } else {
                0
            }
        );
    }
    explained.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        explained,
        vec![
            ("partial-finetune".to_string(), "pirl".to_string(), 1.0, 0),
            ("partial-finetune".to_string(), "random".to_string(), 1.0, 0)
        ]
    );
    assert!(html.contains("the last stage (layer4) is a single cell"));
    for init in ["pirl", "random"] {
        assert!(html.contains(&format!("<figure id=\"gradcam_partial-finetune_{init}\">")));
        assert!(md.contains(&format!("](gradcam_partial-finetune_{init}.png)")));
    }
    for stem in ["runs", "paired", "summary"] {
        parquet_matches_csv(&dir, stem);
    }
    // report.md links the PNG charts (which decode); report.html inlines SVG.
    for name in [
        "roc_linear-probe_f1.png",
        "roc_knn_f0.5.png",
        "pretrain_loss.png",
    ] {
        assert!(md.contains(&format!("]({name})")), "{md}");
        let img = image::open(dir.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (960, 800), "{name}");
    }
    assert!(!html.contains(".png"));
    check_in_browser(&dir.join("report.html"), tmp.path());

    // Interrupted halfway: drop two finished runs; the rerun redoes only
    // those and rebuilds the same report.
    let done = dir.join("runs");
    let mut files: Vec<_> = std::fs::read_dir(&done)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 24);
    std::fs::remove_file(&files[3]).unwrap();
    std::fs::remove_file(&files[17]).unwrap();
    let before = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("test AUC").count(), 2, "{log}");
    let after = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    assert_eq!(before, after);
}

/// `{stem}.parquet` read back with polars holds the CSV's columns, rows and
/// values (floats to the CSV's printed precision, text exactly).
fn parquet_matches_csv(dir: &Path, stem: &str) {
    use polars::prelude::{AnyValue, ParquetReader, SerReader};
    let p = dir.join(format!("{stem}.parquet"));
    let df = ParquetReader::new(std::fs::File::open(&p).unwrap())
        .finish()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let csv = lines(&dir.join(format!("{stem}.csv")));
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(csv[0], names.join(","), "{stem}");
    assert_eq!(df.height() + 1, csv.len(), "{stem}");
    for (i, line) in csv[1..].iter().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), df.width(), "{stem}: {line}");
        for (col, cell) in df.columns().iter().zip(cells) {
            match col.get(i).unwrap() {
                AnyValue::Float64(v) => {
                    let want: f64 = cell.parse().unwrap();
                    assert!(
                        (v.is_nan() && want.is_nan()) || (v - want).abs() <= 1e-9,
                        "{stem}.{} row {i}: {v} vs {cell}",
                        col.name()
                    );
                }
                AnyValue::UInt64(v) => assert_eq!(v.to_string(), cell),
                AnyValue::String(v) => assert_eq!(v, cell.trim_matches('"')),
                v => panic!("{stem}.{}: unexpected {v:?}", col.name()),
            }
        }
    }
}

#[test]
fn label_fractions_are_stratified_and_nested() {
    let labels: Vec<u8> = (0..200).map(|i| (i % 5 == 0) as u8).collect();
    let small = label_subset(&labels, 0.1, 3);
    let mid = label_subset(&labels, 0.25, 3);
    let all = label_subset(&labels, 1.0, 3);
    assert_eq!(all.len(), 200);
    assert_eq!(small.iter().filter(|&&i| labels[i] == 1).count(), 4);
    assert_eq!(small.iter().filter(|&&i| labels[i] == 0).count(), 16);
    assert!(small.iter().all(|i| mid.contains(i)));
    assert_ne!(label_subset(&labels, 0.1, 4), small);
}

#[test]
fn protocol_with_unknown_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("bad.toml");
    std::fs::write(&proto, PROTOCOL.replace("seeds = [0, 1]", "seedz = [0, 1]")).unwrap();
    let out = run(&proto, &tmp.path().join("r"), &tmp.path().join("c"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seedz") && err.contains("bad.toml"), "{err}");
}

/// Renders report.html in headless Chromium (offline) and checks what it
/// shows: the tables' text in the DOM, and the ROC curves' colours on screen.
fn check_in_browser(html: &Path, tmp: &Path) {
    let Some(chrome) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no chromium to render report.html (.ci/run installs it)");
        }
        eprintln!("SKIPPED: report.html browser check (no chromium installed)");
        return;
    };
    let url = format!("file://{}", html.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    let profile = format!("--user-data-dir={}", tmp.join("chrome-profile").display());
    let dom = Command::new(chrome)
        .args(common)
        .arg(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("Summary: test AUC over seeds") && dom.contains("<td>partial-finetune</td>"),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.matches("<svg").count() >= 6, "ROC and loss plots");
    assert!(dom.contains("<figure id=\"gradcam_partial-finetune_pirl\">"));
    assert!(dom.contains("<figure id=\"tsne_linear-probe_random\">"));
    // The headline first: the label-efficiency figure and the forest plot
    // before the comparison table, calibration after it, details last.
    let at = |s: &str| {
        dom.find(s)
            .unwrap_or_else(|| panic!("report.html lacks {s}"))
    };
    assert!(at("<figure id=\"label_efficiency_test\">") < at("<figure id=\"forest\">"));
    assert!(at("<figure id=\"forest\">") < at("<th>difference [95 % CI]</th>"));
    assert!(at("<th>difference [95 % CI]</th>") < at("<section id=\"calibration\">"));
    assert!(at("<figure id=\"reliability_partial-finetune_test\">") < at("<h2>Details</h2>"));
    assert!(at("<h2>Details</h2>") < at("Summary: test AUC over seeds"));
    assert!(!dom.contains("NaN"));
    let shot = tmp.join("report.png");
    let st = Command::new(chrome)
        .args(common)
        .arg(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,3000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    // The first curve colour (#1f77b4) and the second (#d62728) are drawn.
    let near = |p: &image::Rgb<u8>, c: [u8; 3]| {
        p.0.iter()
            .zip(c)
            .all(|(a, b)| (*a as i32 - b as i32).abs() < 40)
    };
    let blue = img.pixels().filter(|p| near(p, [0x1f, 0x77, 0xb4])).count();
    let red = img.pixels().filter(|p| near(p, [0xd6, 0x27, 0x28])).count();
    assert!(
        blue > 200 && red > 200,
        "curves not visible: {blue} blue, {red} red pixels"
    );
}

/// Regression for the stale-results bug: saved runs were found by (arm,
/// init, fraction, seed) alone, so an edited arm was served its old
/// numbers. Now a run is saved under the hash of what fixes it, and editing
/// one arm reruns that arm's runs and no other.
#[test]
fn a_changed_setting_reruns_only_the_runs_it_touches() {
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("tiny.toml");
    std::fs::write(&proto, PROTOCOL).unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let status = |dir: &Path| -> Vec<(String, String, String)> {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        m["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["arm"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = reports.join("tiny-protocol");
    let first = status(&dir);
    assert_eq!(first.len(), 24);
    assert!(first.iter().all(|(_, s, _)| s == "computed"), "{first:?}");
    let runs_before = lines(&dir.join("runs.csv"));

    // The same protocol again: everything is reused.
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status(&dir).iter().all(|(_, s, _)| s == "reused"));

    // One arm edited (k-NN's k): its 8 runs rerun under new keys, the other
    // 16 are reused under their old ones.
    std::fs::write(&proto, PROTOCOL.replace("k = 5", "k = 7")).unwrap();
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("test AUC").count(), 8, "{log}");
    let second = status(&dir);
    for ((arm, st, key), (_, _, old_key)) in second.iter().zip(&first) {
        if arm == "knn" {
            assert_eq!(st, "computed", "{arm}");
            assert_ne!(key, old_key, "{arm}");
        } else {
            assert_eq!(st, "reused", "{arm}");
            assert_eq!(key, old_key, "{arm}");
        }
    }
    let runs_after = lines(&dir.join("runs.csv"));
    for (a, b) in runs_before.iter().zip(&runs_after) {
        if a.starts_with("knn,") {
            assert!(b.starts_with("knn,"));
        } else {
            assert_eq!(a, b);
        }
    }
    // A fine-tuning setting reruns the fine-tuning arm alone.
    std::fs::write(
        &proto,
        PROTOCOL.replace("k = 5", "k = 7").replace(
            "freeze_up_to = \"layer3\"",
            "freeze_up_to = \"layer3\"\nlr = 1e-3",
        ),
    )
    .unwrap();
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = status(&dir);
    for (arm, st, _) in &third {
        assert_eq!(
            st,
            if arm == "partial-finetune" {
                "computed"
            } else {
                "reused"
            },
            "{arm}"
        );
    }
}

/// Every protocol shipped in protocols/ parses and validates under today's
/// schema (unknown keys are errors, so a renamed setting shows here).
#[test]
fn shipped_protocols_parse() {
    let files = toml_files("protocols");
    for p in &files {
        let (proto, cfg) = pirlkit::protocol::Protocol::from_file(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!proto.runs(&cfg).unwrap().is_empty(), "{}", p.display());
    }
    assert!(files.len() >= 2, "{} protocols", files.len());
}

/// The `.toml` files directly in the repository folder `sub`.
fn toml_files(sub: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect()
}

/// Every ablation config in protocols/ablations/ parses over the cpu preset,
/// and each (but `preset-cpu.toml`, the preset as it is) pins the settings
/// its README row was measured with, so that a new cpu preset does not
/// silently change what the row's command measures.
#[test]
fn ablation_configs_parse_and_pin_their_settings() {
    let mut n = 0;
    for p in toml_files("protocols/ablations") {
        let text = std::fs::read_to_string(&p).unwrap();
        let cfg = pirlkit::config::Config::from_toml_over(pirlkit::config::Preset::Cpu, &text)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(
            cfg.data.val_from_train,
            0.25,
            "{}: the tuning split",
            p.display()
        );
        if p.file_name().unwrap() == "preset-cpu.toml" {
            continue;
        }
        let t: toml::Table = toml::from_str(&text).unwrap();
        for path in [
            &["model", "width"][..],
            &["train", "epochs"],
            &["train", "optim", "lr"],
            &["probe", "views"],
            &["probe", "selection"],
        ] {
            let mut v = &toml::Value::Table(t.clone());
            for k in path {
                v = v
                    .get(k)
                    .unwrap_or_else(|| panic!("{} does not pin {}", p.display(), path.join(".")));
            }
        }
        n += 1;
    }
    assert!(n >= 10, "{n} ablation configs");
}

/// The skin-lesion protocol pins what its saved figures were measured with
/// as the cpu preset moves: its linear probes choose on validation, its
/// fine-tunes train and score at the pretext crop (64 px), and both settings
/// serialise as they did then (`selection` left out, `crop = 0`), so the
/// saved runs' keys still match.
#[test]
fn the_protocol_pins_the_recipe_it_was_measured_with() {
    use pirlkit::config::ProbeSelection;
    let (proto, cfg) = pirlkit::protocol::Protocol::from_file(std::path::Path::new(
        "protocols/skin-lesion-auc.toml",
    ))
    .unwrap();
    // Measured 2026-12-06 with the cpu preset of that day: the pins equal
    // that preset, so `reproduce --preset cpu`'s pretraining serves it.
    let preset = pirlkit::config::Config::preset(pirlkit::config::Preset::Cpu);
    assert_eq!(cfg.model, preset.model);
    assert_eq!(cfg.train, preset.train);
    assert_eq!(cfg.pretext, preset.pretext);
    assert_eq!(cfg.pirl, preset.pirl);
    let mut kinds = std::collections::BTreeSet::new();
    for r in proto.runs(&cfg).unwrap() {
        kinds.insert(format!("{:?}", r.arm.kind));
        assert_eq!(r.cfg.probe.selection, ProbeSelection::Cv);
        assert_eq!(r.cfg.probe.views, preset.probe.views);
        assert_eq!(r.cfg.finetune.crop, 96);
        assert_eq!(r.cfg.finetune.epochs, 60);
        assert_eq!(r.cfg.finetune.epochs, preset.finetune.epochs);
        assert_eq!(r.cfg.finetune.view(r.cfg.pretext.crop), 96);
        // Pinned in the file, not taken from the preset: a preset change
        // leaves the protocol's keys alone.
        let ft = serde_json::to_value(&r.cfg.finetune).unwrap();
        assert_eq!(ft["crop"], 96);
        assert_eq!(ft["epochs"], 60);
        let probe = serde_json::to_value(&r.cfg.probe).unwrap();
        assert_eq!(probe["selection"], "cv");
    }
    let text = std::fs::read_to_string("protocols/skin-lesion-auc.toml").unwrap();
    for pin in [
        "width = 0.25",
        "epochs = 100",
        "crop = 96",
        "epochs = 60",
        "selection = \"cv\"",
    ] {
        assert!(text.contains(pin), "the protocol file pins {pin}");
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}
