//! What a data set is, as hashes: each file's SHA-256, the whole set's
//! (ids, splits, labels and file contents) and the split's (ids and splits
//! alone). Runs are keyed by these (see `protocol::RunKey`) and the report's
//! manifest lists them, so one computation serves both.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Dataset, io_err};

/// One file's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    pub id: String,
    pub split: &'static str,
    pub label: Option<u8>,
    pub sha256: String,
}

/// A data set's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub files: Vec<FileHash>,
    /// Over every sample's (id, split, label, file hash), in manifest order.
    pub sha256_all: String,
    /// Over every sample's (id, split), in manifest order.
    pub split_sha256: String,
}

/// Hashes every file of `ds` (in parallel); an unreadable file is an error
/// naming it.
pub fn fingerprint(ds: &Dataset) -> super::Result<Fingerprint> {
    let files: Vec<FileHash> = ds
        .samples
        .par_iter()
        .map(|s| {
            let b = std::fs::read(&s.path).map_err(io_err(&s.path))?;
            Ok(FileHash {
                id: s.id.clone(),
                split: s.split.as_str(),
                label: s.label,
                sha256: hex::encode(Sha256::digest(&b)),
            })
        })
        .collect::<super::Result<_>>()?;
    let mut whole = Sha256::new();
    let mut split = Sha256::new();
    for f in &files {
        let label = f.label.map_or("-".to_string(), |l| l.to_string());
        whole.update(format!("{},{},{label},{}\n", f.id, f.split, f.sha256).as_bytes());
        split.update(format!("{},{}\n", f.id, f.split).as_bytes());
    }
    Ok(Fingerprint {
        files,
        sha256_all: hex::encode(whole.finalize()),
        split_sha256: hex::encode(split.finalize()),
    })
}

/// SHA-256 of a file's bytes, hex.
pub fn file_sha256(path: &std::path::Path) -> super::Result<String> {
    let b = std::fs::read(path).map_err(io_err(path))?;
    Ok(hex::encode(Sha256::digest(&b)))
}
