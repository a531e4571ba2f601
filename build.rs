//! Embeds the git commit (and whether tracked files were modified) of the
//! source a binary was built from, for the reports' manifest.json.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=PIRLKIT_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=PIRLKIT_GIT_DIRTY={dirty}");
    for p in [".git/HEAD", ".git/index", "src"] {
        println!("cargo:rerun-if-changed={p}");
    }
}
