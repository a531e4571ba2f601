//! External test sets in a protocol: every run scores them with the model
//! chosen on the main validation split, the report shows them beside the
//! internal test, and an image that duplicates a training image (a
//! re-encoded copy) is found by the audit and dropped, and listed.

mod common;

use std::path::Path;

/// An external set: test images 61-100 of the built-in set (the protocol
/// keeps the first 60 of each split), plus a JPEG re-encode of a training
/// image it uses.
fn external_set(dir: &Path) -> usize {
    let mini = pirlkit::data::builtin::shipped_dir();
    let manifest = std::fs::read_to_string(mini.join("manifest.csv")).unwrap();
    let rows: Vec<Vec<&str>> = manifest
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut out = String::from("path,label\n");
    let test: Vec<&Vec<&str>> = rows
        .iter()
        .filter(|r| r[3] == "test")
        .skip(60)
        .take(40)
        .collect();
    for r in &test {
        let name = Path::new(r[1])
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        std::fs::copy(mini.join(r[1]), dir.join("images").join(&name)).unwrap();
        out += &format!("images/{name},{}\n", r[2]);
    }
    let train0 = rows.iter().find(|r| r[3] == "train").unwrap();
    let img = image::open(mini.join(train0[1])).unwrap();
    std::fs::write(
        dir.join("images/copy_of_train.jpg"),
        common::jpeg_of(&img, 70),
    )
    .unwrap();
    out += &format!("images/copy_of_train.jpg,{}\n", train0[2]);
    std::fs::write(dir.join("manifest.csv"), out).unwrap();
    test.len() + 1
}

#[test]
fn external_sets_are_scored_shown_and_cleaned_of_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let n = external_set(&tmp.path().join("ext"));
    let proto = tmp.path().join("p.toml");
    std::fs::write(
        &proto,
        r#"
name = "with-external"
preset = "tiny"
seeds = [0]
bootstrap_resamples = 100

[config]
data.limit_per_split = 60

[[arms]]
name = "linear-probe"
kind = "linear-probe"

[[arms]]
name = "finetune"
kind = "finetune"
[arms.finetune]
epochs = 1
batch_size = 16

[[external]]
name = "elsewhere"
data = "ext"
"#,
    )
    .unwrap();
    let (reports, cache) = (tmp.path().join("reports"), tmp.path().join("cache"));
    let out = common::run_protocol(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = reports.join("with-external");
    // Every run scored the external set, minus the dropped copy.
    for e in std::fs::read_dir(dir.join("runs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let s = r["external_scores"]["elsewhere"].as_array().unwrap();
            assert_eq!(s.len(), n - 1, "{}", p.display());
        }
    }
    // The copy of a training image was found and dropped.
    let dups = std::fs::read_to_string(dir.join("external_duplicates.csv")).unwrap();
    assert!(dups.contains("copy_of_train"), "{dups}");
    let runs = std::fs::read_to_string(dir.join("external_runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 1 + 4, "{runs}");
    assert!(
        runs.lines().skip(1).all(|l| l.contains("elsewhere")),
        "{runs}"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("elsewhere"));
    // The set is part of every run's key: removing it reruns them all.
    let p2 = std::fs::read_to_string(&proto).unwrap();
    let cut = p2.find("[[external]]").unwrap();
    std::fs::write(&proto, &p2[..cut]).unwrap();
    let out = common::run_protocol(&proto, &reports, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("test AUC").count(), 4, "{log}");
}
