//! Fetches the files a dataset descriptor lists (`url` and
//! `ground_truth_url` of each split) into a folder, in the layout
//! [`Dataset::open`](super::Dataset::open) reads.
//!
//! - Each file is streamed to `<file>.part` and renamed to its final name only
//!   when complete. An existing `.part` is resumed with an HTTP
//!   `Range: bytes=N-` request (a `206` appends, a `200` starts again from
//!   zero); a broken connection is retried, resuming, up to
//!   [`DownloadOptions::retries`] times, and a later run resumes too.
//! - A descriptor checksum (`sha256` for the zip, `ground_truth_sha256` for
//!   the CSV) is verified; a mismatch removes the download and is an error
//!   naming the file and both hashes. Without one, the computed SHA-256 is in
//!   the report, to be pinned in the descriptor.
//! - Image zips are extracted into the destination only after every entry has
//!   been checked: absolute paths, `..` components and symbolic links are
//!   refused, naming the entry, before anything is written. Each file is
//!   written under a temporary name and renamed; `<images>/.complete` is
//!   written last, and a folder that has it is not extracted again.
//! - Idempotent: a second run with everything in place fetches nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::isic::Descriptor;
use super::{DataError, Split};
use crate::error::{Error, Result, io};
use crate::io::write_atomic;

mod extract;
use extract::{extract, safe_relative};

/// Written last into an extracted image folder; its presence means "complete".
pub const COMPLETE_MARKER: &str = ".complete";

/// Where and how to download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Destination folder (e.g. `datasets/isic2017/`); created if missing.
    pub dest: PathBuf,
    /// Replaces the scheme and host (and port) of every URL, keeping its path:
    /// `http://127.0.0.1:8080` turns `https://host/2017/x.zip` into
    /// `http://127.0.0.1:8080/2017/x.zip`. For tests and mirrors.
    pub base_url_override: Option<String>,
    /// How many times a failed transfer (broken connection, timeout, HTTP 5xx)
    /// of one file is retried, resuming where it stopped.
    pub retries: usize,
}

impl DownloadOptions {
    /// `dest` with no URL override and 3 retries.
    pub fn new(dest: impl Into<PathBuf>) -> DownloadOptions {
        DownloadOptions {
            dest: dest.into(),
            base_url_override: None,
            retries: 3,
        }
    }
}

/// What a file is to its split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// The image zip (`url`).
    Images,
    /// The ground-truth CSV (`ground_truth_url`).
    GroundTruth,
}

/// One downloaded (or already present) file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub split: Split,
    pub kind: FileKind,
    /// The URL actually fetched (after any base URL override).
    pub url: String,
    /// The file's final path.
    pub path: PathBuf,
    /// Size of the complete file.
    pub bytes: u64,
    /// SHA-256 (lowercase hex) of the complete file.
    pub sha256: String,
    /// True when the descriptor gave a checksum and it matched; false when
    /// `sha256` was only computed (pin it in the descriptor).
    pub checksum_verified: bool,
    /// True when the transfer continued a partial download (HTTP 206).
    pub resumed: bool,
    /// True when the file was already complete and nothing was fetched.
    pub skipped: bool,
    /// Bytes received over the network in this run.
    pub received_bytes: u64,
    /// For an image zip: its extraction.
    pub extracted: Option<Extraction>,
}

/// The extraction of one image zip.
#[derive(Debug, Clone, Serialize)]
pub struct Extraction {
    /// The descriptor's image folder inside the destination.
    pub folder: PathBuf,
    /// Files extracted (or recorded in the marker when skipped).
    pub entries: usize,
    /// True when the folder was already complete and nothing was extracted.
    pub skipped: bool,
}

/// Everything [`download`] did, file by file, in descriptor order.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    pub dataset: String,
    pub dest: PathBuf,
    pub files: Vec<FileReport>,
}

impl DownloadReport {
    /// Bytes received over the network in this run, all files together.
    pub fn received_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.received_bytes).sum()
    }

    /// Files the descriptor gives no checksum for (their computed SHA-256 can be pinned).
    pub fn unpinned(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|f| !f.checksum_verified)
    }
}

/// The marker's content: which zip the folder was extracted from.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    zip: String,
    sha256: String,
    bytes: u64,
    entries: usize,
}

struct Job {
    split: Split,
    kind: FileKind,
    url: String,
    path: PathBuf,
    expected: Option<String>,
    /// For an image zip: the folder name (relative to dest) it must yield.
    images: Option<PathBuf>,
}

/// Downloads (and extracts) every split of `desc` into `opts.dest`; see the
/// module documentation. Everything the descriptor says (URLs, names,
/// checksums) is checked before anything is fetched.
pub fn download(desc: &Descriptor, opts: &DownloadOptions) -> Result<DownloadReport> {
    let dest = opts.dest.as_path();
    let mut jobs = Vec::new();
    for sf in &desc.splits {
        let field = |f: &str| {
            format!(
                "descriptor {}, split {}: `{f}`",
                desc.name,
                sf.split.as_str()
            )
        };
        let images = relative_name(&sf.images)
            .map_err(|m| other(format!("{} {:?} {m}", field("images"), sf.images)))?;
        let gt = relative_name(&sf.ground_truth).map_err(|m| {
            other(format!(
                "{} {:?} {m}",
                field("ground_truth"),
                sf.ground_truth
            ))
        })?;
        let url = sf.url.as_deref().ok_or_else(|| {
            other(format!(
                "{} is missing: nothing to download the images from",
                field("url")
            ))
        })?;
        let gt_url = sf.ground_truth_url.as_deref().ok_or_else(|| {
            other(format!(
                "{} is missing: nothing to download the labels from",
                field("ground_truth_url")
            ))
        })?;
        let sha = checksum(sf.sha256.as_deref())
            .map_err(|m| other(format!("{} {m}", field("sha256"))))?;
        let gt_sha = checksum(sf.ground_truth_sha256.as_deref())
            .map_err(|m| other(format!("{} {m}", field("ground_truth_sha256"))))?;
        let mut zip_name = images.clone().into_os_string();
        zip_name.push(".zip");
        jobs.push(Job {
            split: sf.split,
            kind: FileKind::Images,
            url: resolve_url(url, opts.base_url_override.as_deref())?,
            path: dest.join(zip_name),
            expected: sha,
            images: Some(images),
        });
        jobs.push(Job {
            split: sf.split,
            kind: FileKind::GroundTruth,
            url: resolve_url(gt_url, opts.base_url_override.as_deref())?,
            path: dest.join(gt),
            expected: gt_sha,
            images: None,
        });
    }
    fs::create_dir_all(dest).map_err(io(dest))?;
    let agent = agent();
    let mut files = Vec::with_capacity(jobs.len());
    for job in &jobs {
        files.push(run_job(&agent, job, dest, opts.retries)?);
    }
    Ok(DownloadReport {
        dataset: desc.name.clone(),
        dest: dest.to_path_buf(),
        files,
    })
}

/// `url` with its scheme and host replaced by `base` (which may carry a path
/// prefix); `url` itself when `base` is `None`. Only http and https.
pub fn resolve_url(url: &str, base: Option<&str>) -> Result<String> {
    let url = url.trim();
    let Some((_, rest)) = url.split_once("://") else {
        return Err(other(format!(
            "{url}: not an absolute URL (scheme://host/path)"
        )));
    };
    let out = match base {
        None => url.to_string(),
        Some(b) => {
            let b = b.trim().trim_end_matches('/');
            if !b.contains("://") {
                return Err(other(format!(
                    "base URL override {b:?}: not an absolute URL (scheme://host)"
                )));
            }
            let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
            format!("{b}{path}")
        }
    };
    let scheme = out
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        return Err(other(format!(
            "{out}: only http and https URLs can be downloaded"
        )));
    }
    Ok(out)
}

fn other(msg: String) -> Error {
    Error::Data(DataError::Other(msg))
}

fn file_err(path: &Path, msg: String) -> Error {
    Error::Data(DataError::Layout {
        path: path.to_path_buf(),
        msg,
    })
}

/// A descriptor name (`images`, `ground_truth`) as a path below the destination.
fn relative_name(name: &str) -> std::result::Result<PathBuf, &'static str> {
    match safe_relative(name)? {
        Some(p) => Ok(p),
        None => Err("is empty"),
    }
}

/// A checksum from the descriptor, normalised to lowercase hex.
fn checksum(s: Option<&str>) -> std::result::Result<Option<String>, String> {
    let Some(s) = s else { return Ok(None) };
    let t = s.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a SHA-256 (64 hex digits)"));
    }
    Ok(Some(t))
}

fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("pirlkit/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build();
    ureq::Agent::new_with_config(config)
}

fn run_job(agent: &ureq::Agent, job: &Job, dest: &Path, retries: usize) -> Result<FileReport> {
    let mut report = FileReport {
        split: job.split,
        kind: job.kind,
        url: job.url.clone(),
        path: job.path.clone(),
        bytes: 0,
        sha256: String::new(),
        checksum_verified: job.expected.is_some(),
        resumed: false,
        skipped: false,
        received_bytes: 0,
        extracted: None,
    };
    let Some(images) = &job.images else {
        let f = fetch(agent, &job.url, &job.path, job.expected.as_deref(), retries)?;
        report.apply(f);
        return Ok(report);
    };
    let folder = dest.join(images);
    let marker = folder.join(COMPLETE_MARKER);
    if let Some(m) = read_marker(&marker) {
        if job.expected.as_ref().is_none_or(|e| *e == m.sha256) {
            tracing::info!(
                "{}: complete ({} files), nothing to fetch",
                folder.display(),
                m.entries
            );
            report.bytes = m.bytes;
            report.sha256 = m.sha256;
            report.skipped = true;
            report.extracted = Some(Extraction {
                folder,
                entries: m.entries,
                skipped: true,
            });
            return Ok(report);
        }
        tracing::warn!(
            "{}: extracted from a zip with another checksum ({}); fetching again",
            folder.display(),
            m.sha256
        );
        fs::remove_file(&marker).map_err(io(&marker))?;
    }
    let f = fetch(agent, &job.url, &job.path, job.expected.as_deref(), retries)?;
    report.apply(f);
    let entries = extract(&job.path, dest, images)?;
    let zip = job
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let m = Marker {
        zip,
        sha256: report.sha256.clone(),
        bytes: report.bytes,
        entries,
    };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| file_err(&marker, e.to_string()))?;
    write_atomic(&marker, &json)?;
    report.extracted = Some(Extraction {
        folder,
        entries,
        skipped: false,
    });
    Ok(report)
}

impl FileReport {
    fn apply(&mut self, f: Fetched) {
        self.bytes = f.bytes;
        self.sha256 = f.sha256;
        self.resumed = f.resumed;
        self.skipped = f.skipped;
        self.received_bytes = f.received;
    }
}

fn read_marker(path: &Path) -> Option<Marker> {
    let s = fs::read(path).ok()?;
    serde_json::from_slice(&s).ok()
}

struct Fetched {
    bytes: u64,
    sha256: String,
    resumed: bool,
    skipped: bool,
    received: u64,
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Makes `path` a complete, verified copy of `url`.
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    path: &Path,
    expected: Option<&str>,
    retries: usize,
) -> Result<Fetched> {
    if path.is_file() {
        let (bytes, sha256) = hash_file(path)?;
        match expected {
            Some(e) if e != sha256 => {
                tracing::warn!(
                    "{}: SHA-256 {sha256} does not match the descriptor's {e}; fetching again",
                    path.display()
                );
                fs::remove_file(path).map_err(io(path))?;
            }
            _ => {
                return Ok(Fetched {
                    bytes,
                    sha256,
                    resumed: false,
                    skipped: true,
                    received: 0,
                });
            }
        }
    }
    let part = part_path(path);
    tracing::info!("fetching {url} -> {}", path.display());
    let mut failures = 0;
    let mut resumed = false;
    let mut received = 0u64;
    loop {
        match attempt(agent, url, &part, &mut received) {
            Ok(r) => {
                resumed |= r;
                break;
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(msg)) => {
                if failures >= retries {
                    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                    return Err(other(format!(
                        "{url}: {msg}; gave up after {failures} retries ({have} bytes kept in {}; run again to resume)",
                        part.display()
                    )));
                }
                failures += 1;
                tracing::warn!("{url}: {msg}; retry {failures} of {retries}");
                std::thread::sleep(Duration::from_millis(250u64 << (failures - 1).min(5)));
            }
        }
    }
    let (bytes, sha256) = hash_file(&part)?;
    if let Some(e) = expected
        && e != sha256
    {
        let _ = fs::remove_file(&part);
        return Err(file_err(
            path,
            format!(
                "SHA-256 mismatch (downloaded from {url}): expected {e}, got {sha256}; the download was removed"
            ),
        ));
    }
    fs::rename(&part, path).map_err(io(path))?;
    Ok(Fetched {
        bytes,
        sha256,
        resumed,
        skipped: false,
        received,
    })
}

enum Attempt {
    /// Worth another try (resuming): broken connection, timeout, 5xx.
    Retry(String),
    Fatal(Error),
}

/// One request: appends to (or restarts) `part`. Ok(true) when it resumed.
fn attempt(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    received: &mut u64,
) -> std::result::Result<bool, Attempt> {
    let fatal_io = |e: io::Error| {
        Attempt::Fatal(Error::Io {
            path: part.to_path_buf(),
            source: e,
        })
    };
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_) => Attempt::Retry(e.to_string()),
        e => Attempt::Fatal(other(format!("{url}: {e}"))),
    })?;
    let status = resp.status().as_u16();
    let range = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(parse_content_range);
    let body = resp.into_body();
    let len = body.content_length();
    let restart = || File::create(part).map(drop).map_err(fatal_io);
    let (file, offset, total) = match status {
        200 => (File::create(part).map_err(fatal_io)?, 0, len),
        206 => {
            let Some((Some(start), total)) = range else {
                restart()?;
                return Err(Attempt::Retry(
                    "HTTP 206 without a usable Content-Range; starting again".into(),
                ));
            };
            if start != have {
                restart()?;
                return Err(Attempt::Retry(format!(
                    "the server resumed at byte {start}, not {have}; starting again"
                )));
            }
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(part)
                .map_err(fatal_io)?;
            (f, have, total.or(len.map(|l| have + l)))
        }
        416 if have > 0 => {
            // Nothing past `have`: the part may already be the whole file.
            if range.and_then(|(_, t)| t) == Some(have) {
                return Ok(true);
            }
            restart()?;
            return Err(Attempt::Retry(format!(
                "the server cannot resume at byte {have}; starting again"
            )));
        }
        408 | 429 | 500..=599 => return Err(Attempt::Retry(format!("HTTP {status}"))),
        _ => return Err(Attempt::Fatal(other(format!("{url}: HTTP {status}")))),
    };
    if offset > 0 {
        tracing::info!("{url}: resuming at byte {offset}");
    }
    let mut reader = body.into_reader();
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                w.write_all(&buf[..n]).map_err(fatal_io)?;
                *received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                w.flush().map_err(fatal_io)?;
                return Err(Attempt::Retry(format!("connection broken: {e}")));
            }
        }
    }
    let file = w.into_inner().map_err(|e| fatal_io(e.into_error()))?;
    file.sync_all().map_err(fatal_io)?;
    drop(file);
    let now = fs::metadata(part).map_err(fatal_io)?.len();
    match total {
        Some(t) if now < t => Err(Attempt::Retry(format!(
            "connection closed at byte {now} of {t}"
        ))),
        Some(t) if now > t => {
            restart()?;
            Err(Attempt::Retry(format!(
                "got {now} bytes, more than the {t} announced; starting again"
            )))
        }
        _ => Ok(offset > 0),
    }
}

/// `bytes START-END/TOTAL` or `bytes */TOTAL` -> (START, TOTAL).
fn parse_content_range(v: &str) -> (Option<u64>, Option<u64>) {
    let v = v.trim();
    let Some(rest) = v.strip_prefix("bytes").map(str::trim_start) else {
        return (None, None);
    };
    let (range, total) = rest.split_once('/').unwrap_or((rest, "*"));
    let start = range
        .split_once('-')
        .and_then(|(a, _)| a.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// (size, lowercase hex SHA-256) of a file.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    path: path.into(),
                    source: e,
                });
            }
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}
