//! Per-arm settings in a protocol: an arm with its own encoder (a ResNet-50
//! from a `weights:` file, against the same ResNet-50 from random init), its
//! own seeds and label fractions; and the combinations that cannot work are
//! refused with the arm named.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use pirlkit::model::{Arch, ResNet, ResNetConfig};

use common::run_protocol as run;

/// A small ResNet-50 (v1 strides) in torchvision naming, seeded.
fn weights_file(path: &Path) {
    let cfg = ResNetConfig {
        arch: Arch::Resnet50,
        width: 0.0625,
        stride_in_1x1: true,
        ..Default::default()
    };
    let vm = VarMap::new();
    ResNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    pirlkit::model::seeded_init(&vm, 99).unwrap();
    vm.save(path).unwrap();
}

#[test]
fn an_arm_with_its_own_encoder_seeds_and_fractions() {
    let tmp = tempfile::tempdir().unwrap();
    weights_file(&tmp.path().join("r50.safetensors"));
    let proto = tmp.path().join("p.toml");
    std::fs::write(
        &proto,
        r#"
name = "own-encoder"
preset = "tiny"
seeds = [0, 1]
label_fractions = [0.5, 1.0]
bootstrap_resamples = 100

[config]
data.limit_per_split = 60

[[arms]]
name = "r50-probe"
kind = "linear-probe"
inits = ["weights:r50.safetensors", "random"]
seeds = [3]
label_fractions = [1.0]
[arms.config]
model = { arch = "resnet50", width = 0.0625, stride_in_1x1 = true }
"#,
    )
    .unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = reports.join("own-encoder");
    let runs: Vec<String> = std::fs::read_to_string(dir.join("runs.csv"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // One arm x 2 inits x its own 1 fraction x its own 1 seed.
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs[1..]
            .iter()
            .all(|l| l.contains(",1.0,3,") || l.contains(",1,3,")),
        "{runs:?}"
    );
    // The weights init is paired with random init on the same test images.
    let paired = std::fs::read_to_string(dir.join("paired.csv")).unwrap();
    let paired: Vec<&str> = paired.lines().collect();
    assert_eq!(paired.len(), 2, "{paired:?}");
    assert!(paired[0].starts_with("arm,init,fraction,seed,auc_init,auc_random,diff"));
    assert!(paired[1].starts_with("r50-probe,weights:r50.safetensors,"));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Pretrained init vs. random init"));
    assert!(html.contains("arm r50-probe: model Resnet50 width 0.0625 (v1 strides)"));
    // The weights file is hashed into the manifest.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let h = m["weights_sha256"]["weights:r50.safetensors"]
        .as_str()
        .unwrap();
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(
        std::fs::read(tmp.path().join("r50.safetensors")).unwrap(),
    ));
    assert_eq!(h, want);
    // No arm takes the PIRL init: nothing was pretrained.
    assert!(!dir.join("pretrain").exists());
    // The weights and the random init are different encoders: their saved
    // test scores differ.
    let scores = |init: &str| -> Vec<f64> {
        let f = std::fs::read_dir(dir.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(init))
            .unwrap_or_else(|| panic!("no saved run for {init}"));
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        serde_json::from_value(j["test_scores"].clone()).unwrap()
    };
    let (a, b) = (scores("weights"), scores("random"));
    assert_eq!(a.len(), b.len());
    assert!(a != b);
}

#[test]
fn impossible_arm_settings_are_refused_naming_the_arm() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[arms.config]\nmodel = { arch = \"resnet50\" }\n",
            "inits = [\"pirl\", \"random\"]",
            "cannot take the pirl init",
        ),
        (
            "[arms.config]\ndata = { image_size = 64 }\n",
            "inits = [\"random\"]",
            "cannot change data settings",
        ),
        ("", "inits = [\"random\"]\nseeds = []", "empty seeds"),
        (
            "",
            "inits = [\"random\"]\nlabel_fractions = [1.5]",
            "label fraction 1.5",
        ),
    ];
    for (i, (config, inits, want)) in cases.iter().enumerate() {
        let proto = tmp.path().join(format!("p{i}.toml"));
        std::fs::write(
            &proto,
            format!(
                "name = \"bad\"\npreset = \"tiny\"\n\n[[arms]]\nname = \"odd-arm\"\nkind = \"linear-probe\"\n{inits}\n{config}"
            ),
        )
        .unwrap();
        let out = run(&proto, &tmp.path().join("r"), &tmp.path().join("c"));
        assert!(!out.status.success(), "case {i} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.contains("odd-arm"),
            "case {i}: {err}"
        );
    }
}

/// With several probe views, each init's probe takes the view whose best
/// penalty has the best validation AUC, and says which; k-NN reads the first.
#[test]
fn probe_views_are_chosen_on_validation_per_init() {
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("p.toml");
    std::fs::write(
        &proto,
        r#"
name = "views"
preset = "tiny"
bootstrap_resamples = 100

[config]
data.limit_per_split = 60
probe.views = [{ crop = 24 }, { crop = 32, tta = "dihedral" }]

[[arms]]
name = "linear-probe"
kind = "linear-probe"
inits = ["random"]
"#,
    )
    .unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let out = run(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = std::fs::read_to_string(reports.join("views/runs.csv")).unwrap();
    let row = runs.lines().nth(1).unwrap();
    assert!(
        row.contains("; view ") && row.contains(" px, stages "),
        "{row}"
    );
}

/// The view chosen is the one with the best validation AUC: an informative
/// feature set against pure noise, in either order.
#[test]
fn the_probe_takes_the_view_that_validates_best() {
    use ndarray::Array2;
    use pirlkit::config::{ProbeConfig, ProbeView, Tta};
    let y = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 3 == 0) as u8).collect() };
    let (ytr, yva, yte) = (y(90), y(60), y(60));
    // Feature 0 carries the label (with overlap), the rest is hashed noise.
    let noise = |i: usize, j: usize| ((i * 7919 + j * 104729) % 1000) as f64 / 1000.0;
    let informative = |ys: &[u8]| {
        Array2::from_shape_fn((ys.len(), 4), |(i, j)| {
            if j == 0 {
                ys[i] as f64 + 1.5 * noise(i, 9)
            } else {
                noise(i, j)
            }
        })
    };
    let junk = |n: usize| Array2::from_shape_fn((n, 4), |(i, j)| noise(i + 500, j + 3));
    let good = (
        ProbeView {
            crop: 32,
            tta: Tta::Dihedral,
            stages: vec![3, 4],
        },
        [informative(&ytr), informative(&yva), informative(&yte)],
        Vec::new(),
    );
    let bad = (
        ProbeView {
            crop: 24,
            tta: Tta::None,
            ..Default::default()
        },
        [junk(90), junk(60), junk(60)],
        Vec::new(),
    );
    let cfg = ProbeConfig::default();
    let all: Vec<usize> = (0..90).collect();
    for views in [
        vec![bad.clone(), good.clone()],
        vec![good.clone(), bad.clone()],
    ] {
        let r =
            pirlkit::eval::probe::fit_probe_views(&views, &all, &ytr, &yva, &yte, &cfg).unwrap();
        assert_eq!(r.view, good.0);
        assert_eq!(r.view_aucs.len(), 2);
        let best = r.view_aucs.iter().map(|v| v.1).fold(f64::MIN, f64::max);
        assert_eq!(r.val_auc, best);
        assert!(r.val_auc > 0.8, "{}", r.val_auc);
    }
}
