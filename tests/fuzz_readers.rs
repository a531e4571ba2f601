//! A deterministic mutation fuzzer for the readers, run as a normal test
//! (`cargo fuzz` needs nightly): seeded from `pirlkit::rng::stream`, a bounded
//! number of iterations, mutations of valid seed inputs (bit flips, byte
//! sets, truncation, insertion, duplication, deletion, integer and header
//! field overwrites, format tokens). Targets:
//!
//! - `decode`: `data::cache::decode_resize` on PNG, JPEG (YCbCr, grey, CMYK)
//!   and DICOM (uncompressed RGB / 16-bit grey, JPEG baseline) seeds;
//! - `manifest`: a mutated `manifest.csv` opened with `Dataset::open`;
//! - `ham`: a mutated HAM10000-style metadata CSV (`layouts::read_ham` and
//!   `Dataset::open`);
//! - `isic_gt`: `data::isic::read_ground_truth`.
//!
//! Every call must return Ok or Err: a panic fails the test, prints the
//! input's hex and saves it as `tests/fuzz_corpus/<target>-<hash>.bin`. Files
//! in `tests/fuzz_corpus/` are also seeds, and `corpus_replays_cleanly`
//! replays each through its reader (a `decode-` file must also stay under
//! 0.5 s and a 64 MB allocation).
//!
//! Knobs: `PIRLKIT_FUZZ_SCALE=N` multiplies the iteration counts (default 1:
//! a few seconds in release mode); `PIRLKIT_FUZZ_ITERS=N` sets them;
//! `PIRLKIT_FUZZ_DUMP_SLOW=DIR` saves inputs slower than 0.5 s; the ignored
//! `replay_folder_timed` test replays `PIRLKIT_FUZZ_REPLAY=DIR` through
//! `decode_resize` with times and largest allocations.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use pirlkit::data::cache::decode_resize;
use pirlkit::data::isic::read_ground_truth;
use pirlkit::data::{Dataset, layouts};

// ---- the largest single allocation of this thread, while tracking ----

struct Track;

thread_local! {
    static TRACKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PEAK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(n: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        }
    });
}

unsafe impl std::alloc::GlobalAlloc for Track {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        note(n);
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Track = Track;

/// `f()`, and the largest single allocation it made on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()))
}

const SEED: u64 = 20_240_917;
const MAX_LEN: usize = 1 << 20;
/// Largest single allocation a corpus file may cause in `decode_resize`.
const MAX_REPLAY_ALLOC: usize = 64 << 20;
/// A call slower than this is reported (not a failure: bad input may
/// legitimately take a moment).
const SLOW: Duration = Duration::from_millis(500);

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

fn scale() -> u64 {
    std::env::var("PIRLKIT_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `PIRLKIT_FUZZ_ITERS=N`: run N iterations per target instead (a quick look).
fn iters(default: u64) -> u64 {
    std::env::var("PIRLKIT_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default * scale())
}

// ---------------------------------------------------------------- mutations

const INTERESTING: [u32; 16] = [
    0,
    1,
    2,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x3FFF,
    0x4000,
    0x4001,
    0x7FFF,
    0x8000,
    0xFFFF,
    0xFFFF_FFFF,
];

const BINARY_TOKENS: [&[u8]; 14] = [
    b"\xFF\xD8",
    b"\xFF\xD9",
    b"\xFF\xDA\x00\x08",
    b"\xFF\xC0\x00\x11\x08",
    b"\xFF\xC4",
    b"\xFF\xDD\x00\x04\x00\x01",
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"DICM",
    b"\xFE\xFF\x00\xE0\xFF\xFF\xFF\xFF",
    b"\xE0\x7F\x10\x00OB\x00\x00\xFF\xFF\xFF\xFF",
    b"\xFF\xFF\xFF\xFF",
    b"\x00\x00\x00\x00",
];

const TEXT_TOKENS: [&[u8]; 22] = [
    b"\"",
    b"\"\"",
    b",",
    b",,,,",
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b"\0",
    b"\xFF\xFE",
    b"..",
    b"../../",
    b"/",
    b"\\",
    b".hidden",
    b"train",
    b"test",
    b"1",
    b"nan",
    b"-0",
    b"\xC3\xA9",
    b"mel",
];

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8], text: bool) -> Vec<u8> {
    let mut d = seed.to_vec();
    let n = rng.random_range(1..=4);
    for _ in 0..n {
        let len = d.len();
        let pos = |rng: &mut ChaCha8Rng| {
            if len == 0 {
                0
            } else {
                rng.random_range(0..len)
            }
        };
        let op = rng.random_range(0..10);
        match op {
            0 if len > 0 => {
                let p = pos(rng);
                d[p] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let p = pos(rng);
                d[p] = rng.random();
            }
            2 => {
                let cut = rng.random_range(0..=len);
                d.truncate(cut);
            }
            3 => {
                let p = rng.random_range(0..=len);
                let k = rng.random_range(1..=16);
                let ins: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                d.splice(p..p, ins);
            }
            4 if len > 0 => {
                let a = pos(rng);
                let b = rng.random_range(a..=len.min(a + 256));
                let chunk = d[a..b].to_vec();
                let p = rng.random_range(0..=len);
                let times = rng.random_range(1..=8);
                for _ in 0..times {
                    d.splice(p..p, chunk.iter().copied());
                }
            }
            5 if len > 0 => {
                let a = pos(rng);
                let b = rng.random_range(a..=len.min(a + 64));
                d.drain(a..b);
            }
            6 | 7 if len >= 4 => {
                // An integer field: anywhere (6) or in the header (7; the
                // first 400 bytes hold the PNG IHDR, the JPEG tables and
                // frame header, the DICOM meta group and image attributes).
                let hi = if op == 6 { len - 3 } else { (len - 3).min(400) };
                let p = rng.random_range(0..hi);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let w = rng.random_range(0..4);
                let bytes: Vec<u8> = match w {
                    0 => vec![v as u8],
                    1 => (v as u16).to_be_bytes().to_vec(),
                    2 => (v as u16).to_le_bytes().to_vec(),
                    _ => {
                        if rng.random() {
                            v.to_be_bytes().to_vec()
                        } else {
                            v.to_le_bytes().to_vec()
                        }
                    }
                };
                let end = (p + bytes.len()).min(len);
                d[p..end].copy_from_slice(&bytes[..end - p]);
            }
            _ => {
                let toks: &[&[u8]] = if text { &TEXT_TOKENS } else { &BINARY_TOKENS };
                let t = toks[rng.random_range(0..toks.len())];
                let p = rng.random_range(0..=len);
                if rng.random() || p + t.len() > len {
                    d.splice(p..p, t.iter().copied());
                } else {
                    d[p..p + t.len()].copy_from_slice(t);
                }
            }
        }
        d.truncate(MAX_LEN);
    }
    // Half the time, a mutated PNG gets its chunk CRCs fixed, so the
    // mutation reaches the decoder instead of failing the checksum.
    if !text && d.starts_with(b"\x89PNG\r\n\x1a\n") && rng.random() {
        fix_png_crcs(&mut d);
    }
    d
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &x in data {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Rewrites the CRC of every whole chunk of a PNG.
fn fix_png_crcs(d: &mut [u8]) {
    let mut i = 8;
    while i + 12 <= d.len() {
        let len = u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]) as usize;
        let Some(end) = (i + 8).checked_add(len).filter(|&e| e + 4 <= d.len()) else {
            return;
        };
        let crc = crc32(&d[i + 4..end]);
        d[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        i = end + 4;
    }
}

// ---------------------------------------------------------------- harness

struct Finding {
    target: &'static str,
    file: PathBuf,
    msg: String,
}

/// Runs `call` on `input`; a panic is saved to the corpus and returned.
fn run_one(
    target: &'static str,
    input: &[u8],
    call: &dyn Fn(&[u8]) -> bool,
) -> Result<bool, Finding> {
    let r = catch_unwind(AssertUnwindSafe(|| call(input)));
    let p = match r {
        Ok(ok) => return Ok(ok),
        Err(p) => p,
    };
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into());
    let name = format!("{target}-{}.bin", &hex::encode(Sha256::digest(input))[..16]);
    let file = corpus_dir().join(name);
    let _ = std::fs::create_dir_all(corpus_dir());
    let _ = std::fs::write(&file, input);
    let shown = &input[..input.len().min(4096)];
    eprintln!(
        "PANIC in {target}: {msg}\n  saved as {}\n  input ({} bytes{}): {}",
        file.display(),
        input.len(),
        if shown.len() < input.len() {
            ", first 4096 shown"
        } else {
            ""
        },
        hex::encode(shown)
    );
    Err(Finding { target, file, msg })
}

/// Corpus files of one target (`<target>-*`), as extra seeds.
fn corpus_seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(corpus_dir()) {
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{target}-")))
            {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The fuzzer's input number `i` for `target`: a seed picked and mutated
/// by the stream `(SEED, "fuzz-<target>", i)`.
fn nth_input(seeds: &[Vec<u8>], target: &str, i: u64, text: bool) -> Vec<u8> {
    let mut rng = pirlkit::rng::stream(SEED, &format!("fuzz-{target}"), i, 0);
    let seed = &seeds[rng.random_range(0..seeds.len())];
    mutate(&mut rng, seed, text)
}

/// Fuzzes `call` for `iters` iterations over `seeds` (and the target's
/// corpus files); fails listing every panicking input.
fn fuzz(
    target: &'static str,
    mut seeds: Vec<Vec<u8>>,
    iters: u64,
    text: bool,
    call: &dyn Fn(&[u8]) -> bool,
) {
    seeds.extend(corpus_seeds(target));
    let t0 = Instant::now();
    let mut findings = Vec::new();
    let mut slow: Vec<(Duration, String)> = Vec::new();
    let mut big: Vec<String> = Vec::new();
    // Every seed as is first: they must pass.
    for s in &seeds {
        findings.extend(run_one(target, s, call).err());
    }
    let mut oks = 0u64;
    for i in 0..iters {
        let input = nth_input(&seeds, target, i, text);
        let t = Instant::now();
        let (r, peak) = peak_alloc(|| run_one(target, &input, call));
        match r {
            Ok(ok) => oks += ok as u64,
            Err(f) => findings.push(f),
        }
        let el = t.elapsed();
        if peak > MAX_REPLAY_ALLOC {
            big.push(format!(
                "iteration {i}, {} bytes: {} MB",
                input.len(),
                peak >> 20
            ));
            if let Some(dir) = std::env::var_os("PIRLKIT_FUZZ_DUMP_SLOW") {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(
                    Path::new(&dir).join(format!("{target}-big-{i}.bin")),
                    &input,
                );
            }
        }
        if el > SLOW {
            slow.push((el, format!("iteration {i}, {} bytes", input.len())));
            if let Some(dir) = std::env::var_os("PIRLKIT_FUZZ_DUMP_SLOW") {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(
                    Path::new(&dir).join(format!("{target}-slow-{i}.bin")),
                    &input,
                );
            }
        }
    }
    eprintln!(
        "fuzz {target}: {iters} iterations over {} seeds in {:.2} s: {oks} Ok, {} Err, {} panics, {} slow (> {SLOW:?}) calls {slow:?}, {} allocations over {} MB {big:?}",
        seeds.len(),
        t0.elapsed().as_secs_f64(),
        iters - oks - findings.len() as u64,
        findings.len(),
        slow.len(),
        big.len(),
        MAX_REPLAY_ALLOC >> 20
    );
    assert!(
        findings.is_empty(),
        "{} panicking input(s) for {target}, saved in tests/fuzz_corpus/:\n{}",
        findings.len(),
        findings
            .iter()
            .map(|f| format!("  {} ({}): {}", f.file.display(), f.target, f.msg))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------- seeds

use common::png_of;

fn jpeg_of(img: &image::DynamicImage) -> Vec<u8> {
    common::jpeg_of(img, 85)
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 11) as u8, ((x + y) * 5) as u8])
    })
}

/// A baseline 4-component (Adobe CMYK) JPEG of flat 8x8 blocks, built by
/// hand: the `image` encoder writes no CMYK.
fn cmyk_jpeg(w: u16, h: u16) -> Vec<u8> {
    common::flat_jpeg(w, h, 4, Some(0), |bx, by, c| {
        [40u8, 120, 200, 30][c].wrapping_add((bx * 13 + by * 7) as u8)
    })
}

const VL_PHOTOGRAPHIC: &str = "1.2.840.10008.5.1.4.1.1.77.1.4";

fn el(tag: dicom_core::Tag, vr: VR, v: PrimitiveValue) -> InMemElement {
    DataElement::new(tag, vr, v)
}

fn dicom(
    ts: &str,
    w: u16,
    h: u16,
    spp: u16,
    pi: &str,
    bits: u16,
    frames: usize,
    pixel: InMemElement,
) -> Vec<u8> {
    let mut e = vec![
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(VL_PHOTOGRAPHIC),
        ),
        el(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.42"),
        ),
        el(tags::MODALITY, VR::CS, PrimitiveValue::from("XC")),
        el(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("FUZZ^SEED"),
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(spp)),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(pi),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(h)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(w)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(bits - 1)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
    ];
    if frames > 1 {
        e.push(el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames.to_string()),
        ));
    }
    e.push(pixel);
    let file = InMemDicomObject::from_element_iter(e)
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(VL_PHOTOGRAPHIC)
                .media_storage_sop_instance_uid("2.25.42")
                .transfer_syntax(ts),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn decode_seeds() -> Vec<Vec<u8>> {
    let rgb = gradient(24, 20);
    let grey = image::GrayImage::from_fn(16, 12, |x, y| image::Luma([(x * 13 + y * 3) as u8]));
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(10, 10, |x, y| {
        image::Rgb([(x * 6000) as u16, (y * 5000) as u16, 0x8080])
    });
    let rgba = image::RgbaImage::from_fn(9, 9, |x, y| {
        image::Rgba([x as u8 * 20, y as u8 * 20, 7, 200])
    });
    let jpeg = jpeg_of(&image::DynamicImage::ImageRgb8(rgb.clone()));
    let mut px2 = rgb.as_raw().clone();
    px2.extend(gradient(24, 20).as_raw().iter().map(|v| 255 - v));
    let grey16: Vec<u16> = grey.as_raw().iter().map(|&g| g as u16 * 257).collect();
    let mut frag = jpeg.clone();
    if frag.len() % 2 == 1 {
        frag.push(0);
    }
    vec![
        png_of(&rgb),
        png_of(&grey),
        png_of(&rgb16),
        png_of(&rgba),
        jpeg.clone(),
        jpeg_of(&image::DynamicImage::ImageLuma8(grey.clone())),
        cmyk_jpeg(16, 16),
        dicom(
            "1.2.840.10008.1.2.1",
            24,
            20,
            3,
            "RGB",
            8,
            1,
            el(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(rgb.as_raw().clone()),
            ),
        ),
        dicom(
            "1.2.840.10008.1.2.1",
            24,
            20,
            3,
            "RGB",
            8,
            2,
            el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(px2)),
        ),
        dicom(
            "1.2.840.10008.1.2",
            16,
            12,
            1,
            "MONOCHROME2",
            16,
            1,
            el(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(grey16.into())),
        ),
        dicom(
            "1.2.840.10008.1.2.4.50",
            24,
            20,
            3,
            "YBR_FULL_422",
            8,
            1,
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), vec![frag])),
            ),
        ),
    ]
}

fn write_png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    gradient(12, 12).save(path).unwrap();
}

// ---------------------------------------------------------------- targets

fn call_decode(b: &[u8]) -> bool {
    decode_resize(b, 16).is_ok()
}

/// A folder with a few images and a slot for `manifest.csv`.
fn manifest_env() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_png(&d.path().join(format!("img{i}.png")));
    }
    write_png(&d.path().join("sub/img9.png"));
    d
}

fn call_manifest(dir: &Path, b: &[u8], direct: bool) -> bool {
    let p = dir.join("manifest.csv");
    std::fs::write(&p, b).unwrap();
    if direct {
        Dataset::open(&p).is_ok()
    } else {
        Dataset::open(dir).is_ok()
    }
}

fn ham_env() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let part = if i % 2 == 0 {
            "HAM10000_images_part_1"
        } else {
            "HAM10000_images_part_2"
        };
        write_png(&d.path().join(part).join(format!("ISIC_{i:07}.jpg")));
    }
    d
}

fn call_ham(dir: &Path, b: &[u8], via_open: bool) -> bool {
    let p = dir.join("HAM10000_metadata.csv");
    std::fs::write(&p, b).unwrap();
    if via_open {
        Dataset::open(dir).is_ok()
    } else {
        layouts::read_ham(&p, None).is_ok()
    }
}

fn call_isic_gt(dir: &Path, b: &[u8]) -> bool {
    let p = dir.join("ISIC-2017_Training_Part3_GroundTruth.csv");
    std::fs::write(&p, b).unwrap();
    read_ground_truth(&p, "melanoma", Some("seborrheic_keratosis")).is_ok()
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    [
        "path,label,split,group\nimg0.png,1,train,a\nimg1.png,0.0,train,a\nimg2.png,true,val,b\nimg3.png,0,test,c\n",
        "path,label\nimg0.png,1\nimg1.png,0\nimg2.png,\nsub/img9.png,no\n",
        "path,label,group\nimg0.png,1,g1\nimg1.png,0,g1\nimg2.png,1,g2\nimg3.png,0,g3\n",
        "\u{feff}\"path\",\"label\",\"split\"\n\"img0.png\",\"1\",\"training\"\n\"img1.png\",\"0\",\"validation\"\r\n",
        "label,path,extra\n1,img0.png,\"a,b\"\n0,img1.png,\"x\"\"y\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn ham_seeds() -> Vec<Vec<u8>> {
    [
        "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_0000118,ISIC_0000000,mel,histo,80.0,male,scalp\nHAM_0000118,ISIC_0000001,mel,histo,80.0,male,scalp\nHAM_0002730,ISIC_0000002,nv,histo,80.0,male,scalp\nHAM_0001466,ISIC_0000003,bkl,consensus,75.0,female,ear\n",
        "image_id,dx,lesion_id\nISIC_0000000,nv,L1\nISIC_0000002,MEL,L2\n",
        "\u{feff}lesion_id,image_id,dx\n\"L1\",\"ISIC_0000001\",\"\"\nL2,ISIC_0000003,mel\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn isic_gt_seeds() -> Vec<Vec<u8>> {
    [
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,0.0,0.0\nISIC_0000001,1.0,0.0\nISIC_0000002,0.0,1.0\n",
        "image_id,melanoma\nISIC_0000000,1\nISIC_0000001,0\n",
        "\"image_id\",\"melanoma\"\r\n\"ISIC_0000000\",\"true\"\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn fuzz_decode_resize() {
    for (i, s) in decode_seeds().iter().enumerate() {
        assert!(
            decode_resize(s, 16).is_ok(),
            "seed {i}: {:?}",
            decode_resize(s, 16).err()
        );
    }
    fuzz(
        "decode",
        decode_seeds(),
        iters(200_000),
        false,
        &call_decode,
    );
}

#[test]
fn fuzz_manifest_csv() {
    let d = manifest_env();
    let flip = std::cell::Cell::new(false);
    fuzz("manifest", manifest_seeds(), iters(2000), true, &|b| {
        flip.set(!flip.get());
        call_manifest(d.path(), b, flip.get())
    });
}

#[test]
fn fuzz_ham_metadata_csv() {
    let d = ham_env();
    let flip = std::cell::Cell::new(false);
    fuzz("ham", ham_seeds(), iters(2000), true, &|b| {
        flip.set(!flip.get());
        call_ham(d.path(), b, flip.get())
    });
}

#[test]
fn fuzz_isic_ground_truth() {
    let d = tempfile::tempdir().unwrap();
    fuzz("isic_gt", isic_gt_seeds(), iters(2000), true, &|b| {
        call_isic_gt(d.path(), b)
    });
}

/// The mutator itself is deterministic: same seed, same inputs.
#[test]
fn mutations_are_reproducible() {
    let seeds = decode_seeds();
    let run = || {
        (0..50u64)
            .map(|i| {
                mutate(
                    &mut pirlkit::rng::stream(SEED, "fuzz-decode", i, 0),
                    &seeds[i as usize % seeds.len()],
                    false,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// Every file in `tests/fuzz_corpus/` through its reader (by the name's
/// prefix): no panic; a name with `-err-` must be an error and one with
/// `-ok-` must load.
#[test]
fn corpus_replays_cleanly() {
    let dir = corpus_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let menv = manifest_env();
    let henv = ham_env();
    let genv = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut failures = Vec::new();
    let mut paths: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let target = name.split('-').next().unwrap_or("");
        let outcome: std::thread::Result<Option<bool>> =
            catch_unwind(AssertUnwindSafe(|| match target {
                "decode" => {
                    let t = Instant::now();
                    let (r, peak) = peak_alloc(|| decode_resize(&bytes, 16));
                    if peak > MAX_REPLAY_ALLOC || t.elapsed() > SLOW {
                        failures.push(format!(
                            "{name}: {:?} and a {} MB allocation ({r:?})",
                            t.elapsed(),
                            peak >> 20
                        ));
                    }
                    Some(r.is_ok())
                }
                "manifest" => {
                    std::fs::write(menv.path().join("manifest.csv"), &bytes).unwrap();
                    Some(Dataset::open(menv.path()).is_ok())
                }
                "ham" => {
                    let p = henv.path().join("HAM10000_metadata.csv");
                    std::fs::write(&p, &bytes).unwrap();
                    let direct = layouts::read_ham(&p, None).is_ok();
                    let _ = Dataset::open(henv.path());
                    Some(direct)
                }
                "isic_gt" => {
                    let p = genv.path().join("gt.csv");
                    std::fs::write(&p, &bytes).unwrap();
                    Some(read_ground_truth(&p, "melanoma", Some("seborrheic_keratosis")).is_ok())
                }
                _ => None,
            }));
        match outcome {
            Err(_) => failures.push(format!("{name}: panics")),
            Ok(None) => failures.push(format!(
                "{name}: unknown target prefix (decode-, manifest-, ham-, isic_gt-)"
            )),
            Ok(Some(ok)) => {
                if name.contains("-err-") && ok {
                    failures.push(format!("{name}: loads, expected an error"));
                }
                if name.contains("-ok-") && !ok {
                    failures.push(format!("{name}: is an error, expected to load"));
                }
            }
        }
        n += 1;
    }
    eprintln!("replayed {n} corpus files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes the hand-made regression inputs of `tests/fuzz_corpus/` (run with
/// `--ignored` to regenerate them; the fuzzer's own findings are written by
/// the fuzz tests).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = png_of(&gradient(16, 16));
    let jpeg = jpeg_of(&image::DynamicImage::ImageRgb8(gradient(64, 48)));
    let png_claiming = |w: u32, h: u32| {
        let mut b = png.clone();
        b[16..20].copy_from_slice(&w.to_be_bytes());
        b[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&b[12..29]);
        b[29..33].copy_from_slice(&crc.to_be_bytes());
        b
    };
    let jpeg_claiming = |w: u16, h: u16| {
        let mut b = jpeg.clone();
        let sof = b.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
        b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        b
    };
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "decode-err-bomb-100000x100000.png",
            png_claiming(100_000, 100_000),
        ),
        (
            "decode-err-bomb-16000x16000.png",
            png_claiming(16_000, 16_000),
        ),
        (
            "decode-err-bomb-65535x65535.jpg",
            jpeg_claiming(65_535, 65_535),
        ),
        (
            "decode-err-bomb-16000x16000.jpg",
            jpeg_claiming(16_000, 16_000),
        ),
        ("decode-err-truncated.jpg", jpeg[..jpeg.len() / 2].to_vec()),
        ("decode-err-no-eoi.jpg", jpeg[..jpeg.len() - 2].to_vec()),
        ("decode-err-truncated.png", png[..png.len() / 2].to_vec()),
        ("decode-err-empty.jpg", Vec::new()),
        ("decode-err-text.jpg", b"this is not an image\n".to_vec()),
        ("decode-err-1x1.png", png_of(&gradient(1, 1))),
        ("decode-ok-png-named.jpg", png.clone()),
        ("decode-ok-cmyk.jpg", cmyk_jpeg(16, 16)),
        (
            "decode-ok-4000x8.png",
            png_of(&image::RgbImage::from_fn(4000, 8, |x, _| {
                image::Rgb([(x / 16) as u8, 40, 80])
            })),
        ),
        (
            "manifest-err-quote.csv",
            b"path,label\n\"img0.png,1\n".to_vec(),
        ),
        (
            "manifest-err-invalid-utf8.csv",
            b"path,label\nimg\xFF.png,1\n".to_vec(),
        ),
        (
            "ham-err-dup.csv",
            b"lesion_id,image_id,dx\nL1,ISIC_0000000,mel\nL2,ISIC_0000000,nv\n".to_vec(),
        ),
        (
            "isic_gt-err-ragged.csv",
            b"image_id,melanoma\nISIC_0000000\n".to_vec(),
        ),
    ];
    for (name, b) in files {
        std::fs::write(dir.join(name), b).unwrap();
    }
    for (name, d) in dicom_jpeg_bad_cases() {
        std::fs::write(dir.join(name), d).unwrap();
    }
    // What the fuzzer found before `check_dicom_lengths`: DICOM files of a
    // few KB whose element lengths (mutated, or misread after an odd-length
    // binary value) made the parser zero-fill 0.7-4 GB before failing.
    // Regenerated from the fuzzer's stream over the built-in seeds alone.
    let seeds = decode_seeds();
    for i in [5u64, 23, 52, 82, 125, 166, 1161, 4214] {
        let input = nth_input(&seeds, "decode", i, false);
        let e = decode_resize(&input, 16).unwrap_err();
        assert!(e.contains("claims"), "iteration {i}: {e}");
        std::fs::write(
            dir.join(format!("decode-err-dicom-alloc-iter{i}.dcm")),
            input,
        )
        .unwrap();
    }
}

/// Replays the files of `$PIRLKIT_FUZZ_REPLAY` (a folder) through
/// `decode_resize`, printing time, largest allocation and outcome of each.
#[test]
#[ignore]
fn replay_folder_timed() {
    let Some(dir) = std::env::var_os("PIRLKIT_FUZZ_REPLAY") else {
        return;
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let b = std::fs::read(&p).unwrap();
        let t = Instant::now();
        let (r, peak) = peak_alloc(|| decode_resize(&b, 16));
        eprintln!(
            "{}: {:?}, largest allocation {} MB, {:?}",
            p.display(),
            t.elapsed(),
            peak >> 20,
            r.map(|_| "ok")
        );
    }
}

/// DICOM JPEG frames get the .jpg checks: a frame header claiming
/// 16000x16000 pixels over a 2 KB file was decoded (grey fill, 730 MB, 4 s)
/// before `check_dicom_lengths` looked at the frame; a truncated frame too.
fn dicom_jpeg(jpeg: &[u8]) -> Vec<u8> {
    let mut frag = jpeg.to_vec();
    if frag.len() % 2 == 1 {
        frag.push(0);
    }
    dicom(
        "1.2.840.10008.1.2.4.50",
        24,
        20,
        3,
        "YBR_FULL_422",
        8,
        1,
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), vec![frag])),
        ),
    )
}

fn dicom_jpeg_bad_cases() -> Vec<(&'static str, Vec<u8>)> {
    let jpeg = jpeg_of(&image::DynamicImage::ImageRgb8(gradient(24, 20)));
    let mut bomb = jpeg.clone();
    let sof = bomb.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0x3E, 0x80, 0x3E, 0x80]); // 16000x16000
    vec![
        (
            "decode-err-dicom-jpeg-bomb-16000x16000.dcm",
            dicom_jpeg(&bomb),
        ),
        (
            "decode-err-dicom-jpeg-truncated.dcm",
            dicom_jpeg(&jpeg[..jpeg.len() * 2 / 3]),
        ),
    ]
}

#[test]
fn dicom_jpeg_frames_get_the_jpeg_checks() {
    for (name, d) in dicom_jpeg_bad_cases() {
        let t = Instant::now();
        let (r, peak) = peak_alloc(|| decode_resize(&d, 16));
        let e = r.expect_err(name);
        assert!(
            e.starts_with("DICOM JPEG frame:") && (e.contains("bomb") || e.contains("truncated")),
            "{name}: {e}"
        );
        assert!(
            peak < 1 << 20 && t.elapsed() < SLOW,
            "{name}: {} bytes, {:?}",
            peak,
            t.elapsed()
        );
    }
    // Split over several fragments, the frame still passes.
    let jpeg = jpeg_of(&image::DynamicImage::ImageRgb8(gradient(24, 20)));
    let mut j = jpeg.clone();
    if j.len() % 2 == 1 {
        j.push(0);
    }
    let frags: Vec<Vec<u8>> = j.chunks(100).map(|c| c.to_vec()).collect();
    let d = dicom(
        "1.2.840.10008.1.2.4.50",
        24,
        20,
        3,
        "YBR_FULL_422",
        8,
        1,
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), frags)),
        ),
    );
    assert_eq!(
        decode_resize(&d, 16).unwrap(),
        decode_resize(&jpeg, 16).unwrap()
    );
}
