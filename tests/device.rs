//! The device plumbing: `--device` parsing, the GPU code path (candle's own
//! conv, the composed max-pool) checked against the fast CPU kernels on the
//! CPU, and batch prefetching that changes no number.

mod common;

use std::process::Command;

use candle_core::Device;
use pirlkit::config::{Config, Preset};
use pirlkit::data::RgbImage;

#[test]
fn the_gpu_code_path_matches_the_cpu_kernels() {
    let scratch = tempfile::tempdir().unwrap();
    let checks = pirlkit::selftest::run(&Device::Cpu, scratch.path()).unwrap();
    // 5 convs x 3 + 3 pools x 2 + 2 ResNet + 2 PIRL.
    assert_eq!(checks.len(), 25);
    for c in &checks {
        assert!(c.ok, "{c:?}");
        assert!(c.max_abs_cpu > 0.0, "{} compared nothing: {c:?}", c.name);
    }
}

#[test]
fn selftest_command_reports_every_check_as_json() {
    let out = Command::new(common::bin())
        .args(["selftest", "--device", "cpu"])
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
    assert_eq!(lines.len(), 25);
    assert!(
        lines
            .iter()
            .all(|l| l["ok"] == true && l["device"] == "cpu")
    );
}

#[test]
fn cuda_in_a_cpu_build_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = Command::new(common::bin())
        .args(["bench", "--device", "cuda:0", "--steps", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without the `cuda` feature"), "{err}");
    let bad = Command::new(common::bin())
        .args(["bench", "--device", "tpu", "--steps", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not one of cpu, cuda, cuda:N"));
}

fn images(n: usize, size: usize) -> Vec<RgbImage> {
    (0..n)
        .map(|i| {
            let mut rng = pirlkit::rng::stream(3, "test-images", i as u64, 0);
            RgbImage {
                size,
                data: pirlkit::data::synthetic::render(size, &mut rng).0,
            }
        })
        .collect()
}

#[test]
fn prefetching_batches_changes_no_number() {
    let imgs = images(48, 32);
    let run = |prefetch: usize| {
        let mut cfg = Config::preset(Preset::Tiny);
        cfg.data.prefetch = prefetch;
        let d = tempfile::tempdir().unwrap();
        let o = pirlkit::train::pretrain::pretrain(&cfg, &imgs, d.path(), false, false).unwrap();
        let w = std::fs::read(o.checkpoint.join("model.safetensors")).unwrap();
        (o.epoch_losses, w)
    };
    let (l0, w0) = run(0);
    let (l3, w3) = run(3);
    assert_eq!(l0, l3);
    assert!(w0 == w3, "weights differ between prefetch 0 and 3");
}
