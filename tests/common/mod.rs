//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data/isic2017` beside the checkout, if present. Without it the
/// calling test is skipped with a message, except under `CI=true`, where a
/// missing data set fails the test so CI never silently skips it.
pub fn isic_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/isic2017");
    if p.join("ISIC-2017_Training_Part3_GroundTruth.csv").is_file() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {} is missing: the ISIC 2017 data must be beside the checkout", p.display());
    }
    eprintln!("SKIPPED: {} not found (tests that need the ISIC 2017 data are skipped outside CI)", p.display());
    None
}

/// The pirlkit binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pirlkit"))
}
