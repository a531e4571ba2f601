//! `manifest.json`: the provenance of a report.

use std::path::PathBuf;

use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Result, io};
use crate::train::checkpoint;

/// Provenance for `manifest.json`: hashes of the config, the data (per file
/// and whole), the split and each checkpoint; seeds; git commit; crate
/// versions; machine and threads.
pub fn manifest(
    cfg: &Config,
    ds: &Dataset,
    data: &crate::data::fingerprint::Fingerprint,
    checkpoints: &[PathBuf],
    extra: serde_json::Value,
) -> Result<serde_json::Value> {
    use sha2::{Digest, Sha256};
    let mut ckpts = serde_json::Map::new();
    for c in checkpoints {
        let p = c.join(checkpoint::MODEL_FILE);
        let b = std::fs::read(&p).map_err(io(&p))?;
        ckpts.insert(
            c.display().to_string(),
            hex::encode(Sha256::digest(&b)).into(),
        );
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let lock = include_str!("../../Cargo.lock");
    let mut versions = serde_json::Map::new();
    let mut name = "";
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = n.trim_end_matches('"');
        } else if let Some(v) = line.strip_prefix("version = \"")
            && [
                "candle-core",
                "candle-nn",
                "polars",
                "linfa",
                "linfa-logistic",
                "image",
                "gemm",
                "dicom-object",
            ]
            .contains(&name)
        {
            versions.insert(name.to_string(), v.trim_end_matches('"').into());
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    Ok(serde_json::json!({
        "pirlkit_version": env!("CARGO_PKG_VERSION"),
        "config_sha256": checkpoint::config_hash(cfg),
        "config": cfg,
        "seed": cfg.seed,
        "data": {
            "root": ds.root.display().to_string(),
            "images": data.files.len(),
            "sha256_all": data.sha256_all,
            "split_sha256": data.split_sha256,
            "files": data.files.iter().map(|f| serde_json::json!({"id": f.id, "split": f.split, "sha256": f.sha256})).collect::<Vec<_>>(),
        },
        "checkpoints_sha256": ckpts,
        "git_commit": env!("PIRLKIT_GIT_COMMIT"),
        "git_dirty": env!("PIRLKIT_GIT_DIRTY"),
        "working_dir_git_commit": git(&["rev-parse", "HEAD"]),
        "crates": versions,
        "machine": {
            "cpu": cpu,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "available_parallelism": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "rayon_threads": rayon::current_num_threads(),
        },
        "protocol": extra,
    }))
}
