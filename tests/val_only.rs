//! `probe --val-only` and `finetune --val-only` (the tuning commands) never
//! score the test split: no test AUC in what they print or write.

use std::process::Command;

fn run(args: &[&str], out: &std::path::Path) -> (String, serde_json::Value, &'static str) {
    let cache = out.join("cache");
    let o = Command::new(env!("CARGO_BIN_EXE_pirlkit"))
        .args(["--no-progress", "--quiet"])
        .args(args)
        .args(["--preset", "tiny", "--limit-per-split", "48", "--val-only"])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let file = if args[0] == "probe" {
        "probe.json"
    } else {
        "finetune.json"
    };
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(file)).unwrap()).unwrap();
    (stdout, json, file)
}

#[test]
fn tuning_commands_leave_the_test_split_unscored() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["probe", "--random-init"][..],
        &["finetune", "--random-init", "--ft-epochs", "1"][..],
    ] {
        let out = dir.path().join(args[0]);
        let (stdout, json, file) = run(args, &out);
        assert!(
            stdout.contains("test split was not scored") && !stdout.contains("test AUC"),
            "{}: {stdout}",
            args[0]
        );
        assert!(
            json["test_auc"].is_null(),
            "{file} has a test AUC: {}",
            json["test_auc"]
        );
        assert!(
            json["val_auc"].as_f64().is_some_and(|v| v.is_finite()),
            "{file}: {json}"
        );
    }
}
