//! A protocol spread over a real Slurm cluster (a one-node cluster started
//! here from Debian's packages by scripts/slurm/one-node-cluster.sh): the
//! pretraining job, a 4-task array of shards and the merge job, submitted by
//! scripts/slurm/submit.sh, give a report whose numbers equal a
//! single-process run's to the last digit. Without Slurm installed the test
//! is skipped with a message, except under CI=true, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const PROTOCOL: &str = r#"
name = "slurm-tiny"
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
name = "finetune"
kind = "finetune"
[arms.finetune]
epochs = 2
batch_size = 16
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Stops the cluster's daemons when the test ends, whatever happens.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm/one-node-cluster.sh"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

fn slurm_installed() -> bool {
    ["slurmctld", "slurmd", "sbatch", "munged"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b} || test -x /usr/sbin/{b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn csv(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

#[test]
fn sharded_over_slurm_equals_one_process_to_the_last_digit() {
    if !slurm_installed() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but Slurm is not installed (.ci/run installs slurmctld, slurmd, slurm-client, munge)"
            );
        }
        eprintln!(
            "SKIPPED: Slurm not installed (apt-get install slurmctld slurmd slurm-client munge)"
        );
        return;
    }
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let proto = tmp.path().join("tiny.toml");
    std::fs::write(&proto, PROTOCOL).unwrap();

    // One process.
    let single = tmp.path().join("single");
    let out = common::run_protocol(&proto, &single, &tmp.path().join("cache-single"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The cluster, and the protocol as pretraining + 4 shards + merge.
    let cdir = tmp.path().join("cluster");
    let port = 20000 + (std::process::id() % 20000) as u16 * 2 % 20000;
    let st = Command::new(repo().join("scripts/slurm/one-node-cluster.sh"))
        .arg("start")
        .arg(&cdir)
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    let _cluster = Cluster(cdir.clone());
    assert!(
        st.status.success(),
        "cluster did not start: {}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    let sharded = tmp.path().join("sharded");
    let sub = Command::new(repo().join("scripts/slurm/submit.sh"))
        .arg(&proto)
        .arg("4")
        .env("SLURM_CONF", cdir.join("slurm.conf"))
        .env("PIRLKIT", common::bin())
        .env("REPORTS", &sharded)
        .env("PIRLKIT_CACHE", tmp.path().join("cache-sharded"))
        .env("WAIT", "1")
        .output()
        .unwrap();
    let logs = || {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(sharded.join("slurm-logs")) {
            for e in rd.flatten() {
                s += &format!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
        s
    };
    assert!(
        sub.status.success(),
        "submit: {}{}\n{}",
        String::from_utf8_lossy(&sub.stdout),
        String::from_utf8_lossy(&sub.stderr),
        logs()
    );
    let ids = String::from_utf8_lossy(&sub.stdout);
    assert!(
        ids.contains("pretrain ") && ids.contains("arms ") && ids.contains("report "),
        "{ids}"
    );

    // The same numbers, to the last digit, in every table.
    let (a, b) = (single.join("slurm-tiny"), sharded.join("slurm-tiny"));
    for name in ["runs.csv", "paired.csv", "summary.csv", "test_scores.csv"] {
        assert_eq!(csv(&a, name), csv(&b, name), "{name} differs\n{}", logs());
    }
    assert_eq!(csv(&a, "runs.csv").lines().count(), 1 + 24);
    // The runs were computed by the array's tasks: four invocations, none
    // of them the pretraining job's or the merge job's.
    let m: serde_json::Value = serde_json::from_str(&csv(&b, "manifest.json")).unwrap();
    let mut by: Vec<&str> = m["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["computed_by"].as_str().unwrap())
        .collect();
    by.sort();
    by.dedup();
    assert_eq!(by.len(), 4, "{by:?}");
    eprintln!("slurm test: {:.1} s", t0.elapsed().as_secs_f64());
}
