//! The built-in data set's checksums: `SHA256SUMS` (sha256sum format,
//! sorted by path) over every file of the folder, and [`verify`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::SUMS_FILE;
use crate::data::{DataError, Result, io_err};

/// Checks every file of `dir` against `dir/SHA256SUMS`: each listed file
/// must exist and have its listed hash, and every other file (except
/// `SHA256SUMS` itself and hidden names, such as `.DS_Store`) must be
/// listed. The error names the first file, in the list's order, that is
/// missing or differs (then the first unlisted one), or the line of
/// `SHA256SUMS` that cannot be read.
pub fn verify(dir: &Path) -> Result<()> {
    let sums = dir.join(SUMS_FILE);
    let text = std::fs::read_to_string(&sums).map_err(io_err(&sums))?;
    let listed = parse_sums(&sums, &text)?;
    let mut names = BTreeSet::new();
    for (line, hash, rel) in &listed {
        let p = dir.join(rel);
        if !p.is_file() {
            return Err(DataError::Layout {
                path: p,
                msg: format!("missing (listed on line {line} of {SUMS_FILE})"),
            });
        }
        let got = file_sha256(&p)?;
        if got != *hash {
            return Err(DataError::Layout {
                path: p,
                msg: format!("differs from {SUMS_FILE}: sha256 {got}, line {line} lists {hash}"),
            });
        }
        names.insert(rel.as_str());
    }
    for rel in list_files(dir)? {
        if rel != SUMS_FILE && !names.contains(rel.as_str()) {
            return Err(DataError::Layout {
                path: dir.join(&rel),
                msg: format!("not listed in {SUMS_FILE}"),
            });
        }
    }
    Ok(())
}

/// `(line, hash, path)` of each line of a sha256sum file.
fn parse_sums(path: &Path, text: &str) -> Result<Vec<(usize, String, String)>> {
    let err = |line: usize, msg: String| DataError::Csv {
        path: path.into(),
        line: line as u64,
        msg,
    };
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let (hash, rest) = l.split_at_checked(64).unwrap_or((l, ""));
        let rel = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .unwrap_or("");
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) || hash.len() != 64 || rel.is_empty() {
            return Err(err(line, format!("not `<64 hex digits>  <path>`: {l:?}")));
        }
        let bad = Path::new(rel).is_absolute()
            || rel.contains('\\')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(err(
                line,
                format!("path {rel:?} is not a plain relative path inside the folder"),
            ));
        }
        if let Some(first) = seen.insert(rel.to_string(), line) {
            return Err(err(
                line,
                format!("{rel} listed twice (first on line {first})"),
            ));
        }
        out.push((line, hash.to_ascii_lowercase(), rel.to_string()));
    }
    if out.is_empty() {
        return Err(err(1, "lists no files".into()));
    }
    Ok(out)
}

pub(super) fn file_sha256(p: &Path) -> Result<String> {
    let b = std::fs::read(p).map_err(io_err(p))?;
    Ok(hex::encode(Sha256::digest(&b)))
}

/// Files under `dir`, as `/`-separated relative paths in byte order;
/// hidden names (starting with `.`) are skipped, at any depth.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let p = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                return Err(DataError::Layout {
                    path: p,
                    msg: "file name is not UTF-8".into(),
                });
            };
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name}");
            if p.is_dir() {
                if depth == 0 {
                    return Err(DataError::Layout {
                        path: p,
                        msg: "folders nested too deep".into(),
                    });
                }
                walk(&p, &format!("{rel}/"), depth - 1, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", 8, &mut out)?;
    out.sort();
    Ok(out)
}

/// `SHA256SUMS` of the files under `dir` (all but `SHA256SUMS` itself).
pub(super) fn sums_of(dir: &Path) -> Result<String> {
    let mut s = String::new();
    for rel in list_files(dir)? {
        if rel != SUMS_FILE {
            s += &format!("{}  {rel}\n", file_sha256(&dir.join(&rel))?);
        }
    }
    Ok(s)
}
