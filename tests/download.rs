//! `data::download` against a tiny HTTP/1.1 server on 127.0.0.1 that this
//! test starts (no other network): full download + extraction read back with
//! `Dataset::open`, resume with `Range` after a cut connection, checksums,
//! unsafe zip entries, and a second run that fetches nothing.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pirlkit::data::download::{DownloadOptions, FileKind, download};
use pirlkit::data::isic::Descriptor;
use pirlkit::data::{Dataset, Split};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- server

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// (path, Range header) of every request, in order.
    log: Vec<(String, Option<String>)>,
    /// Path -> bytes of body after which the connection is cut, once.
    cut_after: HashMap<String, usize>,
    /// Answer every request with the whole file (200), as servers without
    /// range support do.
    ignore_range: bool,
}

/// Serves `State::files` over HTTP/1.1 (GET, with or without `Range`), one
/// connection at a time, `Connection: close`. Stops when dropped, or after
/// 60 s whatever happens.
struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            files,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !sp.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = serve(s, &st);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }

    fn set_file(&self, path: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.into(), bytes);
    }

    fn cut_once(&self, path: &str, after: usize) {
        self.state
            .lock()
            .unwrap()
            .cut_after
            .insert(path.into(), after);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || req.len() > 64 * 1024 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let mut lines = text.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let path = first.get(1).copied().unwrap_or("").to_string();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_string());
    let mut st = state.lock().unwrap();
    st.log.push((path.clone(), range.clone()));
    let (Some(body), true) = (st.files.get(&path).cloned(), first.first() == Some(&"GET")) else {
        drop(st);
        return s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let cut = st.cut_after.remove(&path);
    let start = if st.ignore_range {
        None
    } else {
        range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
    };
    drop(st);
    let len = body.len();
    let (head, part) = match start {
        Some(n) if n >= len => {
            let h = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            (h, &body[..0])
        }
        Some(n) => {
            let h = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - 1,
                len - n
            );
            (h, &body[n..])
        }
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
            ),
            &body[..],
        ),
    };
    s.write_all(head.as_bytes())?;
    let part = &part[..cut.unwrap_or(part.len()).min(part.len())];
    s.write_all(part)?;
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

// ---------------------------------------------------------------- data

fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([seed.wrapping_mul(53), (x * 30) as u8, (y * 30) as u8])
    });
    let mut c = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut c, image::ImageFormat::Jpeg)
        .unwrap();
    c.into_inner()
}

fn png(seed: u8) -> Vec<u8> {
    let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([seed ^ (x * y) as u8]));
    let mut c = Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut c, image::ImageFormat::Png)
        .unwrap();
    c.into_inner()
}

enum Entry<'a> {
    Dir(&'a str),
    File(String, Vec<u8>),
    Symlink(&'a str, &'a str),
}

fn zip_of(entries: Vec<Entry>) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        match e {
            Entry::Dir(d) => w.add_directory(d, opts).unwrap(),
            Entry::File(name, bytes) => {
                w.start_file(name, opts).unwrap();
                w.write_all(&bytes).unwrap();
            }
            Entry::Symlink(name, target) => w.add_symlink(name, target, opts).unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

/// An image zip as the challenge ships it: `<folder>/ISIC_xxxxxxx.jpg`, with
/// superpixel PNGs beside the images (train) and a metadata CSV.
fn image_zip(folder: &str, ids: &[&str], superpixels: bool) -> Vec<u8> {
    let mut e = vec![Entry::Dir(folder)];
    for (k, id) in ids.iter().enumerate() {
        e.push(Entry::File(format!("{folder}/{id}.jpg"), jpeg(k as u8 + 1)));
        if superpixels {
            e.push(Entry::File(
                format!("{folder}/{id}_superpixels.png"),
                png(k as u8),
            ));
        }
    }
    let meta: String = ids
        .iter()
        .map(|id| format!("{id},unknown,unknown\n"))
        .collect();
    e.push(Entry::File(
        format!("{folder}/{folder}_metadata.csv"),
        format!("image_id,age_approximate,sex\n{meta}").into_bytes(),
    ));
    zip_of(e)
}

fn ground_truth(rows: &[(&str, u8)], with_sk: bool) -> Vec<u8> {
    let mut s = String::from(if with_sk {
        "image_id,melanoma,seborrheic_keratosis\n"
    } else {
        "image_id,melanoma\n"
    });
    for (id, m) in rows {
        if with_sk {
            s += &format!("{id},{m}.0,{}.0\n", 1 - m);
        } else {
            s += &format!("{id},{m}.0\n");
        }
    }
    s.into_bytes()
}

const TRAIN: [(&str, u8); 4] = [
    ("ISIC_0000000", 1),
    ("ISIC_0000001", 0),
    ("ISIC_0000002", 0),
    ("ISIC_0000003", 1),
];
const VAL: [(&str, u8); 2] = [("ISIC_0001769", 0), ("ISIC_0001852", 1)];
const TEST: [(&str, u8); 3] = [
    ("ISIC_0012086", 1),
    ("ISIC_0012092", 0),
    ("ISIC_0012095", 0),
];

const TRAIN_ZIP: &str = "/2017/ISIC-2017_Training_Data.zip";

/// The files of the built-in isic2017 descriptor, at the URL paths it gives.
fn challenge_files() -> HashMap<String, Vec<u8>> {
    let ids = |r: &[(&'static str, u8)]| r.iter().map(|x| x.0).collect::<Vec<_>>();
    let mut f = HashMap::new();
    f.insert(
        TRAIN_ZIP.into(),
        image_zip("ISIC-2017_Training_Data", &ids(&TRAIN), true),
    );
    f.insert(
        "/2017/ISIC-2017_Training_Part3_GroundTruth.csv".into(),
        ground_truth(&TRAIN, true),
    );
    f.insert(
        "/2017/ISIC-2017_Validation_Data.zip".into(),
        image_zip("ISIC-2017_Validation_Data", &ids(&VAL), false),
    );
    f.insert(
        "/2017/ISIC-2017_Validation_Part3_GroundTruth.csv".into(),
        ground_truth(&VAL, false),
    );
    f.insert(
        "/2017/ISIC-2017_Test_v2_Data.zip".into(),
        image_zip("ISIC-2017_Test_v2_Data", &ids(&TEST), false),
    );
    f.insert(
        "/2017/ISIC-2017_Test_v2_Part3_GroundTruth.csv".into(),
        ground_truth(&TEST, true),
    );
    f
}

/// Options pointing every URL at `server`; checks that the override really
/// turns each descriptor URL into a loopback one before anything is fetched.
fn opts(dest: &Path, server: &Server, desc: &Descriptor, retries: usize) -> DownloadOptions {
    let base = server.base();
    for s in &desc.splits {
        for u in [&s.url, &s.ground_truth_url].into_iter().flatten() {
            let r = pirlkit::data::download::resolve_url(u, Some(&base)).unwrap();
            assert!(r.starts_with(&format!("{base}/")), "{u} -> {r}");
        }
    }
    DownloadOptions {
        dest: dest.to_path_buf(),
        base_url_override: Some(base),
        retries,
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Every file below `dir` (relative), sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut v);
    }
    v.sort();
    v
}

// ---------------------------------------------------------------- tests

#[test]
fn base_url_override_replaces_scheme_and_host() {
    use pirlkit::data::download::resolve_url;
    let u = "https://isic-challenge-data.s3.amazonaws.com/2017/ISIC-2017_Training_Data.zip";
    assert_eq!(resolve_url(u, None).unwrap(), u);
    assert_eq!(
        resolve_url(u, Some("http://127.0.0.1:8080/")).unwrap(),
        "http://127.0.0.1:8080/2017/ISIC-2017_Training_Data.zip"
    );
    assert_eq!(
        resolve_url(u, Some("http://mirror.example/isic")).unwrap(),
        "http://mirror.example/isic/2017/ISIC-2017_Training_Data.zip"
    );
    for bad in ["ftp://host/x.zip", "no-scheme/x.zip"] {
        let e = resolve_url(bad, None).unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
    assert!(resolve_url(u, Some("127.0.0.1:80")).is_err());
}

#[test]
fn full_download_reads_as_isic_layout() {
    let files = challenge_files();
    let server = Server::start(files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("isic2017");
    let desc = Descriptor::isic2017();
    let report = download(&desc, &opts(&dest, &server, &desc, 0)).unwrap();

    assert_eq!(report.files.len(), 6);
    assert_eq!(server.requests(), 6);
    for f in &report.files {
        let served = &files[&format!("/2017/{}", f.url.rsplit('/').next().unwrap())];
        assert!(!f.skipped && !f.resumed && !f.checksum_verified, "{f:?}");
        assert_eq!(
            (f.bytes, f.received_bytes),
            (served.len() as u64, served.len() as u64)
        );
        assert_eq!(
            f.sha256,
            sha(served),
            "the report records the computed checksum"
        );
        assert_eq!(std::fs::read(&f.path).unwrap(), *served);
        match f.kind {
            FileKind::Images => {
                let x = f.extracted.as_ref().unwrap();
                assert!(!x.skipped && x.folder.join(".complete").is_file());
            }
            FileKind::GroundTruth => assert!(f.extracted.is_none()),
        }
    }
    assert_eq!(report.unpinned().count(), 6);
    let train = report
        .files
        .iter()
        .find(|f| f.kind == FileKind::Images && f.split == Split::Train)
        .unwrap();
    assert_eq!(train.extracted.as_ref().unwrap().entries, 4 * 2 + 1);
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        json.contains("\"kind\":\"ground_truth\"") && json.contains("\"resumed\":false"),
        "{json}"
    );

    // Nothing half-written is left.
    let all = tree(&dest);
    assert!(
        all.iter()
            .all(|p| !p.ends_with(".part") && !p.ends_with(".tmp")),
        "{all:?}"
    );

    let ds = Dataset::open(&dest).unwrap();
    let count = |s: Split| ds.split(s).len();
    assert_eq!(
        (count(Split::Train), count(Split::Val), count(Split::Test)),
        (4, 2, 3)
    );
    for (rows, split) in [
        (&TRAIN[..], Split::Train),
        (&VAL[..], Split::Val),
        (&TEST[..], Split::Test),
    ] {
        for (id, label) in rows {
            let s = ds.samples.iter().find(|s| s.id == *id).unwrap();
            assert_eq!((s.split, s.label), (split, Some(*label)), "{id}");
            image::open(&s.path).unwrap();
        }
    }
    ds.check_labeled().unwrap();
}

#[test]
fn cut_connection_is_resumed_with_range() {
    let files = challenge_files();
    let zip = files[TRAIN_ZIP].clone();
    let server = Server::start(files);
    let mut desc = Descriptor::isic2017();
    desc.splits.truncate(1);
    let half = zip.len() / 2;
    assert!(half > 1000, "zip of {} bytes", zip.len());

    // Within one run: the retry resumes.
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    server.cut_once(TRAIN_ZIP, half);
    let report = download(&desc, &opts(&dest, &server, &desc, 2)).unwrap();
    let want = (TRAIN_ZIP.to_string(), Some(format!("bytes={half}-")));
    assert!(
        server.log().contains(&want),
        "no Range request: {:?}",
        server.log()
    );
    assert_eq!(
        std::fs::read(dest.join("ISIC-2017_Training_Data.zip")).unwrap(),
        zip
    );
    let f = &report.files[0];
    assert!(f.resumed && !f.skipped, "{f:?}");
    assert_eq!(
        (f.bytes, f.received_bytes),
        (zip.len() as u64, zip.len() as u64)
    );
    assert_eq!(f.sha256, sha(&zip));
    assert!(
        dest.join("ISIC-2017_Training_Data/ISIC_0000003.jpg")
            .is_file()
    );

    // Across runs: with no retries the run fails naming the URL and keeps the
    // part; the next run resumes it.
    let dest = tmp.path().join("e");
    server.cut_once(TRAIN_ZIP, 1000);
    let err = download(&desc, &opts(&dest, &server, &desc, 0))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains(&format!("{}{TRAIN_ZIP}", server.base())),
        "{err}"
    );
    let part = dest.join("ISIC-2017_Training_Data.zip.part");
    assert_eq!(std::fs::read(&part).unwrap(), zip[..1000]);
    assert!(!dest.join("ISIC-2017_Training_Data.zip").exists());
    let report = download(&desc, &opts(&dest, &server, &desc, 0)).unwrap();
    assert_eq!(
        server.log().last().unwrap().0,
        "/2017/ISIC-2017_Training_Part3_GroundTruth.csv"
    );
    assert!(
        server
            .log()
            .contains(&(TRAIN_ZIP.to_string(), Some("bytes=1000-".into())))
    );
    assert!(report.files[0].resumed);
    assert_eq!(report.files[0].received_bytes, (zip.len() - 1000) as u64);
    assert_eq!(
        std::fs::read(dest.join("ISIC-2017_Training_Data.zip")).unwrap(),
        zip
    );
    assert!(!part.exists());

    // A server that ignores Range answers 200: the part is restarted from zero.
    let dest = tmp.path().join("f");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(
        dest.join("ISIC-2017_Training_Data.zip.part"),
        b"stale bytes from another file",
    )
    .unwrap();
    server.state.lock().unwrap().ignore_range = true;
    let report = download(&desc, &opts(&dest, &server, &desc, 0)).unwrap();
    assert!(!report.files[0].resumed);
    assert_eq!(
        std::fs::read(dest.join("ISIC-2017_Training_Data.zip")).unwrap(),
        zip
    );
    assert!(!dest.join("ISIC-2017_Training_Data.zip.part").exists());
}

#[test]
fn checksum_mismatch_removes_the_file() {
    let files = challenge_files();
    let zip = files[TRAIN_ZIP].clone();
    let csv = files["/2017/ISIC-2017_Training_Part3_GroundTruth.csv"].clone();
    let server = Server::start(files);
    let tmp = tempfile::tempdir().unwrap();

    let mut desc = Descriptor::isic2017();
    desc.splits.truncate(1);
    let wrong = "ab".repeat(32);
    desc.splits[0].sha256 = Some(wrong.clone());
    let dest = tmp.path().join("bad");
    let err = download(&desc, &opts(&dest, &server, &desc, 0))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("ISIC-2017_Training_Data.zip"), "{err}");
    assert!(
        err.contains(&wrong) && err.contains(&sha(&zip)),
        "expected and actual hashes: {err}"
    );
    assert!(!dest.join("ISIC-2017_Training_Data.zip").exists());
    assert!(!dest.join("ISIC-2017_Training_Data.zip.part").exists());
    assert!(
        !dest.join("ISIC-2017_Training_Data").exists(),
        "nothing extracted from a bad zip"
    );

    // The CSV's checksum too (`ground_truth_sha256`).
    desc.splits[0].sha256 = Some(sha(&zip).to_uppercase());
    desc.splits[0].ground_truth_sha256 = Some("00".repeat(32));
    let err = download(&desc, &opts(&dest, &server, &desc, 0))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("ISIC-2017_Training_Part3_GroundTruth.csv") && err.contains(&sha(&csv)),
        "{err}"
    );
    assert!(
        !dest
            .join("ISIC-2017_Training_Part3_GroundTruth.csv")
            .exists()
    );

    // Right checksums: verified, and said so.
    desc.splits[0].ground_truth_sha256 = Some(sha(&csv));
    let report = download(&desc, &opts(&dest, &server, &desc, 0)).unwrap();
    assert!(
        report.files.iter().all(|f| f.checksum_verified),
        "{report:?}"
    );
    assert_eq!(report.unpinned().count(), 0);

    // A malformed checksum in the descriptor is refused before any request.
    let n = server.requests();
    desc.splits[0].sha256 = Some("not-a-hash".into());
    let err = download(&desc, &opts(&tmp.path().join("x"), &server, &desc, 0))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("sha256") && err.contains("not-a-hash"),
        "{err}"
    );
    assert_eq!(server.requests(), n);
}

#[test]
fn unsafe_zip_entries_are_refused() {
    let server = Server::start(challenge_files());
    let tmp = tempfile::tempdir().unwrap();
    let mut desc = Descriptor::isic2017();
    desc.splits.truncate(1);
    let abs = format!("{}/abs_evil.txt", tmp.path().display());
    let ok = |n: &str| Entry::File(format!("ISIC-2017_Training_Data/{n}"), jpeg(1));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "../evil.txt",
            zip_of(vec![
                ok("ISIC_0000000.jpg"),
                Entry::File("../evil.txt".into(), b"pwned".to_vec()),
            ]),
        ),
        (
            &abs,
            zip_of(vec![
                ok("ISIC_0000000.jpg"),
                Entry::File(abs.clone(), b"pwned".to_vec()),
            ]),
        ),
        (
            "ISIC-2017_Training_Data/link.jpg",
            zip_of(vec![
                ok("ISIC_0000000.jpg"),
                Entry::Symlink("ISIC-2017_Training_Data/link.jpg", "/etc/passwd"),
            ]),
        ),
        (
            "ISIC-2017_Training_Data\\..\\..\\evil.txt",
            zip_of(vec![
                ok("ISIC_0000000.jpg"),
                Entry::File(
                    "ISIC-2017_Training_Data\\..\\..\\evil.txt".into(),
                    b"x".to_vec(),
                ),
            ]),
        ),
        (
            "ISIC-2017_Training_Data/../../evil.txt",
            zip_of(vec![
                ok("ISIC_0000000.jpg"),
                Entry::File(
                    "ISIC-2017_Training_Data/../../evil.txt".into(),
                    b"x".to_vec(),
                ),
            ]),
        ),
    ];
    for (k, (entry, bytes)) in cases.into_iter().enumerate() {
        server.set_file(TRAIN_ZIP, bytes);
        let dest = tmp.path().join(format!("case{k}")).join("data");
        let err = download(&desc, &opts(&dest, &server, &desc, 0))
            .unwrap_err()
            .to_string();
        eprintln!("{err}");
        assert!(
            err.contains(&format!("{entry:?}")),
            "error must name {entry:?}: {err}"
        );
        assert!(err.contains("ISIC-2017_Training_Data.zip"), "{err}");
        // Nothing written outside dest, nor any entry inside it.
        assert!(
            !tmp.path().join("evil.txt").exists()
                && !tmp.path().join(format!("case{k}/evil.txt")).exists()
        );
        assert!(!Path::new(&abs).exists());
        assert!(
            !dest.join("ISIC-2017_Training_Data").exists(),
            "case {k}: extracted before checking"
        );
        assert_eq!(
            tree(&tmp.path().join(format!("case{k}"))),
            vec!["data/ISIC-2017_Training_Data.zip".to_string()]
        );
    }
}

#[test]
fn second_run_downloads_nothing() {
    let files = challenge_files();
    let server = Server::start(files);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("isic2017");
    let desc = Descriptor::isic2017();
    let o = opts(&dest, &server, &desc, 0);
    let first = download(&desc, &o).unwrap();
    let n = server.requests();
    assert_eq!(n, 6);
    let before = std::fs::metadata(dest.join("ISIC-2017_Training_Data/ISIC_0000000.jpg"))
        .unwrap()
        .modified()
        .unwrap();

    let again = download(&desc, &o).unwrap();
    assert_eq!(
        server.requests(),
        n,
        "the second run made requests: {:?}",
        &server.log()[n..]
    );
    assert!(
        again
            .files
            .iter()
            .all(|f| f.skipped && f.received_bytes == 0),
        "{again:?}"
    );
    assert!(
        again
            .files
            .iter()
            .filter_map(|f| f.extracted.as_ref())
            .all(|x| x.skipped)
    );
    for (a, b) in first.files.iter().zip(&again.files) {
        assert_eq!((&a.sha256, a.bytes), (&b.sha256, b.bytes));
    }
    let after = std::fs::metadata(dest.join("ISIC-2017_Training_Data/ISIC_0000000.jpg"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "not extracted again");

    // Deleting a zip after extraction does not fetch it again (the folder is
    // complete); deleting a CSV fetches just that file.
    std::fs::remove_file(dest.join("ISIC-2017_Validation_Data.zip")).unwrap();
    std::fs::remove_file(dest.join("ISIC-2017_Test_v2_Part3_GroundTruth.csv")).unwrap();
    let third = download(&desc, &o).unwrap();
    assert_eq!(
        server.log()[n..],
        [(
            "/2017/ISIC-2017_Test_v2_Part3_GroundTruth.csv".to_string(),
            None
        )]
    );
    assert_eq!(third.files.iter().filter(|f| !f.skipped).count(), 1);
    assert_eq!(Dataset::open(&dest).unwrap().samples.len(), 9);
}
