//! More dataset layouts (folder per class, HAM10000-style metadata), the
//! skip-bad image load, and bad images that must be clear errors naming the
//! file: truncated, empty, mislabelled, CMYK, 16-bit, decompression bombs
//! (refused fast, without allocating the pixels), too small, extreme aspect.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pirlkit::data::cache::decode_resize;
use pirlkit::data::{Dataset, ImageCache, OpenOptions, Sample, Split, drop_samples};

// ---- the largest single allocation made by this thread inside `peak_alloc` ----

struct Track;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(n: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        }
    });
}

unsafe impl GlobalAlloc for Track {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note(n);
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Track = Track;

/// Runs `f`, returning its result, the largest single allocation it made on
/// this thread, and its wall time.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let t = Instant::now();
    let r = f();
    let el = t.elapsed();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()), el)
}

// ---- fixtures ----

fn rgb(w: u32, h: u32, shade: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    })
}

fn png_bytes(img: &image::RgbImage) -> Vec<u8> {
    common::png_of(img)
}

fn jpeg_bytes(img: &image::RgbImage) -> Vec<u8> {
    common::jpeg_of(&image::DynamicImage::ImageRgb8(img.clone()), 90)
}

fn write_img(path: &Path, w: u32, h: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rgb(w, h, shade).save(path).unwrap();
}

fn sample(dir: &Path, name: &str) -> Sample {
    Sample {
        id: Path::new(name)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into(),
        path: dir.join(name),
        label: Some(0),
        aux: None,
        split: Split::Train,
        group: name.into(),
    }
}

fn splits_of(ds: &Dataset) -> [usize; 3] {
    [
        ds.split(Split::Train).len(),
        ds.split(Split::Val).len(),
        ds.split(Split::Test).len(),
    ]
}

// ---- folder per class ----

#[test]
fn folder_per_class_flat_splits_70_15_15_and_finds_the_positive_class() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..40 {
        write_img(
            &d.path().join("nevus").join(format!("n{i}.png")),
            16,
            12,
            i as u8,
        );
    }
    for i in 0..20 {
        write_img(
            &d.path().join("Melanoma").join(format!("m{i}.jpg")),
            16,
            12,
            i as u8,
        );
    }
    // Not images, hidden, or empty: ignored.
    std::fs::write(d.path().join("nevus").join("notes.txt"), "x").unwrap();
    std::fs::create_dir_all(d.path().join(".thumbs")).unwrap();
    write_img(&d.path().join(".thumbs").join("t.png"), 16, 12, 1);
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.samples.len(), 60);
    assert!(
        ds.samples
            .iter()
            .all(|s| s.label == Some(s.id.starts_with('m') as u8)),
        "labels from the folder names"
    );
    let [tr, va, te] = splits_of(&ds);
    assert_eq!(tr + va + te, 60);
    assert!(
        (40..=44).contains(&tr) && (8..=10).contains(&va) && (8..=10).contains(&te),
        "{tr}/{va}/{te}"
    );
    ds.check_labeled().unwrap();
    // Stable: the same split on every open.
    let again = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.samples, again.samples);
}

#[test]
fn folder_per_class_with_split_folders_keeps_the_given_split() {
    let d = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 8), ("val", 3), ("test", 4)] {
        for i in 0..n {
            write_img(
                &d.path()
                    .join(split)
                    .join("benign")
                    .join(format!("{split}_b{i}.png")),
                12,
                12,
                i as u8,
            );
            write_img(
                &d.path()
                    .join(split)
                    .join("malignant")
                    .join(format!("{split}_m{i}.png")),
                12,
                12,
                i as u8,
            );
        }
    }
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(splits_of(&ds), [16, 6, 8]);
    for s in &ds.samples {
        assert!(
            s.id.starts_with(s.split.as_str()),
            "{} in {:?}",
            s.id,
            s.split
        );
        assert_eq!(s.label, Some(s.id.contains("_m") as u8));
    }
    ds.check_labeled().unwrap();
}

#[test]
fn folder_per_class_positive_class_must_be_decidable() {
    let d = tempfile::tempdir().unwrap();
    for c in ["alpha", "beta"] {
        for i in 0..6 {
            write_img(&d.path().join(c).join(format!("{c}{i}.png")), 12, 12, i);
        }
    }
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("alpha") && e.contains("beta") && e.contains("positive"),
        "{e}"
    );
    let ds = Dataset::open_with(
        d.path(),
        &OpenOptions {
            positive: Some("beta".into()),
        },
    )
    .unwrap();
    assert!(
        ds.samples
            .iter()
            .all(|s| s.label == Some(s.id.starts_with("beta") as u8))
    );
    let e = Dataset::open_with(
        d.path(),
        &OpenOptions {
            positive: Some("gamma".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("gamma") && e.contains("alpha, beta"), "{e}");

    // Three classes: an error listing them.
    write_img(&d.path().join("delta").join("d0.png"), 12, 12, 0);
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("exactly two") && e.contains("alpha, beta, delta"),
        "{e}"
    );
}

#[test]
fn folder_per_class_rejects_duplicate_ids() {
    let d = tempfile::tempdir().unwrap();
    write_img(&d.path().join("melanoma").join("x1.png"), 12, 12, 0);
    write_img(&d.path().join("nevus").join("x1.jpg"), 12, 12, 0);
    write_img(&d.path().join("nevus").join("x2.jpg"), 12, 12, 0);
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("x1") && e.contains("x1.png") && e.contains("x1.jpg"),
        "{e}"
    );
}

#[test]
fn a_positive_class_is_refused_by_layouts_with_their_own_labels() {
    let d = tempfile::tempdir().unwrap();
    write_img(&d.path().join("a.png"), 12, 12, 0);
    std::fs::write(d.path().join("manifest.csv"), "path,label\na.png,1\n").unwrap();
    let e = Dataset::open_with(
        d.path(),
        &OpenOptions {
            positive: Some("x".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("manifest.csv") && e.contains("own labels"),
        "{e}"
    );
}

#[test]
fn manifest_rejects_two_paths_with_one_id() {
    let d = tempfile::tempdir().unwrap();
    write_img(&d.path().join("a").join("x.png"), 12, 12, 0);
    write_img(&d.path().join("b").join("x.png"), 12, 12, 0);
    std::fs::write(
        d.path().join("manifest.csv"),
        "path,label\na/x.png,1\nb/x.png,0\n",
    )
    .unwrap();
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("manifest.csv") && e.contains("line 3") && e.contains("duplicate image id x"),
        "{e}"
    );
}

#[test]
fn not_a_dataset_lists_every_layout() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("readme.txt"), "x").unwrap();
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("manifest.csv") && e.contains("metadata") && e.contains("<class>"),
        "{e}"
    );
}

// ---- HAM10000-style metadata ----

/// 60 lesions with 1-3 images each (every 4th lesion a melanoma), images
/// spread over two part folders as HAM10000 ships them.
fn ham_dir() -> (tempfile::TempDir, HashMap<String, String>) {
    let d = tempfile::tempdir().unwrap();
    let mut csv = String::from("lesion_id,image_id,dx,dx_type,age,sex,localization\n");
    let mut lesion_of = HashMap::new();
    let mut n = 0;
    for l in 0..60 {
        let dx = if l % 4 == 0 {
            "mel"
        } else if l % 4 == 1 {
            "nv"
        } else {
            "bkl"
        };
        for _ in 0..(1 + l % 3) {
            let id = format!("ISIC_{:07}", 24000 + n);
            let part = if n % 2 == 0 {
                "HAM10000_images_part_1"
            } else {
                "HAM10000_images_part_2"
            };
            write_img(
                &d.path().join(part).join(format!("{id}.jpg")),
                12,
                12,
                n as u8,
            );
            csv.push_str(&format!("HAM_{l:07},{id},{dx},histo,45.0,male,back\n"));
            lesion_of.insert(id, format!("HAM_{l:07}"));
            n += 1;
        }
    }
    std::fs::write(d.path().join("HAM10000_metadata.csv"), csv).unwrap();
    (d, lesion_of)
}

#[test]
fn ham_metadata_keeps_every_lesion_in_one_split() {
    let (d, lesion_of) = ham_dir();
    // A second, identical copy of a part folder (as some downloads have) is fine.
    let copy = d.path().join("ham10000_images_part_1");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(d.path().join("HAM10000_images_part_1")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.samples.len(), lesion_of.len());
    let mut split_of: HashMap<&str, HashSet<Split>> = HashMap::new();
    for s in &ds.samples {
        assert_eq!(s.group, lesion_of[&s.id]);
        assert!(
            s.path.is_file()
                && s.path.file_name().unwrap().to_string_lossy() == format!("{}.jpg", s.id)
        );
        split_of.entry(&s.group).or_default().insert(s.split);
    }
    for (l, sp) in &split_of {
        assert_eq!(sp.len(), 1, "lesion {l} split across {sp:?}");
    }
    assert!(
        split_of.len() == 60 && lesion_of.len() > 100,
        "several images share a lesion"
    );
    // Labels: dx == mel.
    for s in &ds.samples {
        let l: usize = s.group[4..].parse().unwrap();
        assert_eq!(s.label, Some((l % 4 == 0) as u8), "{}", s.id);
    }
    let [tr, va, te] = splits_of(&ds);
    assert!(tr > va && va > 0 && te > 0, "{tr}/{va}/{te}");
    ds.check_labeled().unwrap();
    // Opening the CSV file itself gives the same data set.
    let direct = Dataset::open(&d.path().join("HAM10000_metadata.csv")).unwrap();
    assert_eq!(direct.samples, ds.samples);
    // Another dx code as the positive class.
    let bkl = Dataset::open_with(
        d.path(),
        &OpenOptions {
            positive: Some("bkl".into()),
        },
    )
    .unwrap();
    assert!(bkl.samples.iter().all(|s| {
        let l: usize = s.group[4..].parse().unwrap();
        s.label == Some((l % 4 >= 2) as u8)
    }));
    let e = Dataset::open_with(
        d.path(),
        &OpenOptions {
            positive: Some("xyz".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("xyz") && e.contains("mel") && e.contains("nv"),
        "{e}"
    );
}

#[test]
fn ham_metadata_errors_name_file_and_line() {
    let (d, _) = ham_dir();
    let csv_path = d.path().join("HAM10000_metadata.csv");
    let orig = std::fs::read_to_string(&csv_path).unwrap();
    let set = |s: &str| std::fs::write(&csv_path, s).unwrap();

    // A listed image without a file.
    set(&format!(
        "{orig}HAM_9999999,ISIC_9999999,mel,histo,1,male,back\n"
    ));
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    let last = orig.lines().count() + 1;
    assert!(
        e.contains("HAM10000_metadata.csv")
            && e.contains(&format!("line {last}"))
            && e.contains("ISIC_9999999"),
        "{e}"
    );

    // The same image id twice.
    let first = orig.lines().nth(1).unwrap();
    set(&format!("{orig}{first}\n"));
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("HAM10000_metadata.csv")
            && e.contains(&format!("line {last}"))
            && e.contains("twice"),
        "{e}"
    );

    // No lesion id.
    set(&orig.replacen("HAM_0000000,", ",", 1));
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("lesion_id"), "{e}");

    // The same id with different content in two folders.
    set(&orig);
    let other = d.path().join("extra");
    write_img(&other.join("ISIC_0024000.jpg"), 12, 12, 200);
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("ISIC_0024000") && e.contains("extra"), "{e}");
    std::fs::remove_dir_all(&other).unwrap();

    // A metadata CSV without the HAM columns is not taken for one: the part
    // folders then read as two class folders with no positive name.
    std::fs::remove_file(&csv_path).unwrap();
    std::fs::write(
        d.path().join("my_metadata.csv"),
        "image,diagnosis\nISIC_0024000,mel\n",
    )
    .unwrap();
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("HAM10000_images_part_1") && e.contains("positive"),
        "{e}"
    );
}

// ---- skip-bad ----

#[test]
fn skip_bad_lists_every_bad_file_with_its_error() {
    let d = tempfile::tempdir().unwrap();
    let good = png_bytes(&rgb(40, 30, 9));
    let jpg = jpeg_bytes(&rgb(40, 30, 9));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("good0.png", good.clone()),
        ("empty.png", Vec::new()),
        ("good1.jpg", jpg.clone()),
        ("text.jpg", b"this is not an image at all".to_vec()),
        ("trunc_png.png", good[..good.len() / 2].to_vec()),
        ("trunc_jpg.jpg", jpg[..jpg.len() * 2 / 3].to_vec()),
        ("good2.png", good.clone()),
        ("tiny.png", png_bytes(&rgb(1, 1, 0))),
    ];
    let mut csv = String::from("path,label,split\n");
    for (i, (name, bytes)) in files.iter().enumerate() {
        std::fs::write(d.path().join(name), bytes).unwrap();
        csv.push_str(&format!(
            "{name},{},{}\n",
            i % 2,
            ["train", "val", "test"][i % 3]
        ));
    }
    csv.push_str("missing.png,0,train\n");
    std::fs::write(d.path().join("manifest.csv"), csv).unwrap();
    let mut ds = Dataset::open(d.path()).unwrap();
    let cache = ImageCache::new(d.path().join("cache"));

    // load_all stops, naming one bad file.
    let bad = [
        "empty.png",
        "text.jpg",
        "trunc_png.png",
        "trunc_jpg.jpg",
        "tiny.png",
        "missing.png",
    ];
    let e = cache.load_all(&ds.samples, 16).unwrap_err().to_string();
    assert!(bad.iter().any(|b| e.contains(b)), "{e}");

    let (imgs, skipped) = cache.load_all_skip_bad(&ds.samples, 16).unwrap();
    let ids: Vec<&str> = skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["empty", "text", "trunc_png", "trunc_jpg", "tiny", "missing"],
        "{skipped:#?}"
    );
    for (s, name) in skipped.iter().zip(bad) {
        assert!(s.path.ends_with(name), "{s:?}");
        assert!(!s.error.is_empty());
    }
    let err = |name: &str| {
        skipped
            .iter()
            .find(|s| s.path.ends_with(name))
            .unwrap()
            .error
            .clone()
    };
    assert!(err("empty.png").contains("empty"), "{}", err("empty.png"));
    assert!(
        err("text.jpg").contains("not a recognised image format"),
        "{}",
        err("text.jpg")
    );
    assert!(
        err("trunc_jpg.jpg").contains("truncated"),
        "{}",
        err("trunc_jpg.jpg")
    );
    assert!(err("tiny.png").contains("too small"), "{}", err("tiny.png"));
    assert!(
        err("missing.png").to_lowercase().contains("no such file"),
        "{}",
        err("missing.png")
    );
    assert_eq!(imgs.len(), 3);
    let json = serde_json::to_value(&skipped).unwrap();
    assert!(
        json[0]["id"] == "empty"
            && json[0]["path"].as_str().unwrap().ends_with("empty.png")
            && json[0]["error"].is_string()
    );

    drop_samples(&mut ds, &skipped);
    let kept: Vec<&str> = ds.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(kept, ["good0", "good1", "good2"]);
    let again = cache.load_all(&ds.samples, 16).unwrap();
    assert_eq!(again, imgs, "images line up with the remaining samples");
}

// ---- bad images, one by one ----

fn load_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    std::fs::write(dir.join(name), bytes).unwrap();
    let cache = ImageCache::new(dir.join("cache"));
    let e = cache
        .load_all(&[sample(dir, name)], 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains(name), "error does not name {name}: {e}");
    e
}

#[test]
fn truncated_empty_and_mislabelled_files() {
    let d = tempfile::tempdir().unwrap();
    let jpg = jpeg_bytes(&rgb(64, 48, 30));
    let png = png_bytes(&rgb(64, 48, 30));
    for cut in [jpg.len() / 2, jpg.len() - 2, 200, 3] {
        let e = load_err(d.path(), "t.jpg", &jpg[..cut]);
        assert!(
            e.contains("truncated") || e.contains("cannot decode"),
            "{cut}: {e}"
        );
    }
    for cut in [png.len() / 2, png.len() - 12, 40, 9] {
        let e = load_err(d.path(), "t.png", &png[..cut]);
        assert!(
            e.contains("cannot decode") || e.contains("truncated") || e.contains("recognised"),
            "{cut}: {e}"
        );
    }
    let e = load_err(d.path(), "zero.jpg", b"");
    assert!(e.contains("empty file"), "{e}");
    let e = load_err(d.path(), "text.jpg", b"hello, I am a text file\n");
    assert!(e.contains("not a recognised image format"), "{e}");
    // A PNG named .jpg, and a JPEG named .png: format from content.
    std::fs::write(d.path().join("png.jpg"), &png).unwrap();
    std::fs::write(d.path().join("jpg.png"), &jpg).unwrap();
    let cache = ImageCache::new(d.path().join("cache"));
    let imgs = cache
        .load_all(
            &[sample(d.path(), "png.jpg"), sample(d.path(), "jpg.png")],
            16,
        )
        .unwrap();
    assert_eq!(imgs[0], decode_resize(&png, 16).unwrap());
    // Trailing bytes after the end-of-image marker are fine.
    let mut tail = jpg.clone();
    tail.extend(b"trailing camera data");
    assert!(decode_resize(&tail, 16).is_ok());
}

#[test]
fn hand_built_jpeg_decodes_to_its_block_values() {
    // Checks the fixture writer the CMYK case relies on.
    let j = common::flat_jpeg(16, 16, 3, None, |bx, by, c| {
        if c == 0 {
            60 + 100 * ((bx + by) % 2) as u8
        } else {
            128
        }
    });
    let img = image::load_from_memory(&j).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (16, 16));
    let p = img.get_pixel(2, 2).0;
    let q = img.get_pixel(10, 2).0;
    assert!(
        p.iter().all(|&v| v.abs_diff(60) <= 2) && q.iter().all(|&v| v.abs_diff(160) <= 2),
        "{p:?} {q:?}"
    );
}

#[test]
fn cmyk_jpeg_decodes_to_rgb_or_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let j = common::flat_jpeg(24, 16, 4, Some(0), |bx, _, c| {
        [40u8, 120, 200, 30][c].wrapping_add(bx as u8 * 10)
    });
    std::fs::write(d.path().join("cmyk.jpg"), &j).unwrap();
    let cache = ImageCache::new(d.path().join("cache"));
    match cache.load_all(&[sample(d.path(), "cmyk.jpg")], 16) {
        Ok(v) => {
            assert_eq!(v[0].data.len(), 16 * 16 * 3);
            // Not all one grey: the colour survived the conversion.
            let px = &v[0].data[..3];
            eprintln!("CMYK JPEG decoded to RGB, first pixel {px:?}");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("cmyk.jpg") && e.contains("decode"), "{e}");
        }
    }
    // YCCK (Adobe transform 2) too.
    let j = common::flat_jpeg(16, 16, 4, Some(2), |_, _, c| [90u8, 130, 140, 20][c]);
    let r = decode_resize(&j, 8);
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().contains("decode"),
        "{r:?}"
    );
}

#[test]
fn sixteen_bit_png_is_scaled_to_8_bits() {
    let img = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        20,
        20,
        image::Rgb([0xFFFF, 0x8080, 0x0101]),
    );
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    let bytes = bytes.into_inner();
    assert_eq!(bytes[24], 16, "a 16-bit PNG");
    let out = decode_resize(&bytes, 10).unwrap();
    for p in out.data.chunks(3) {
        assert!(p[0] >= 254 && p[1].abs_diff(128) <= 1 && p[2] <= 2, "{p:?}");
    }
    let grey =
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(12, 12, image::Luma([0x4000]));
    let mut b = std::io::Cursor::new(Vec::new());
    grey.write_to(&mut b, image::ImageFormat::Png).unwrap();
    let out = decode_resize(&b.into_inner(), 12).unwrap();
    assert!(out.data.iter().all(|&v| v.abs_diff(64) <= 1));
}

/// PNG with its IHDR width and height replaced (CRC fixed, so the header
/// itself is valid).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut b = png_bytes(&rgb(16, 16, 3));
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
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

/// JPEG with its frame header's height and width replaced.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut b = jpeg_bytes(&rgb(16, 16, 3));
    let sof = b.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

#[test]
fn decompression_bombs_are_refused_fast_without_allocating() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bomb_side.png", png_claiming(100_000, 100_000)),
        ("bomb_wide.png", png_claiming(1_000_000, 16)),
        ("bomb_16k.png", png_claiming(16_000, 16_000)),
        ("bomb_side.jpg", jpeg_claiming(65_535, 65_535)),
        ("bomb_16k.jpg", jpeg_claiming(16_000, 16_000)),
        ("bomb_4k.jpg", jpeg_claiming(4_000, 4_000)),
    ];
    for (name, bytes) in &cases {
        assert!(bytes.len() < 2000, "{name} is a small file");
        let (r, peak, t) = peak_alloc(|| decode_resize(bytes, 16));
        let e = r.expect_err(name);
        assert!(
            e.contains("bomb") || e.contains("refused") || e.contains("truncated"),
            "{name}: {e}"
        );
        assert!(peak < 1 << 20, "{name}: allocated {peak} bytes at once");
        assert!(t < Duration::from_secs(1), "{name}: {t:?}");
        let e = load_err(d.path(), name, bytes);
        assert!(e.contains("pixels"), "{e}");
    }
}

#[test]
fn too_small_and_extreme_aspect_ratio() {
    let d = tempfile::tempdir().unwrap();
    let e = load_err(d.path(), "one.png", &png_bytes(&rgb(1, 1, 0)));
    assert!(e.contains("1x1") && e.contains("too small"), "{e}");
    let e = load_err(d.path(), "thin.png", &png_bytes(&rgb(300, 7, 0)));
    assert!(e.contains("300x7") && e.contains("too small"), "{e}");
    let e = load_err(d.path(), "one.jpg", &jpeg_bytes(&rgb(1, 1, 0)));
    assert!(e.contains("too small"), "{e}");

    // 4000x8 (and 16384x8): valid; the centre square is cut out first, so
    // nothing near `size * 2048` pixels wide is allocated.
    for w in [4000u32, 16_384] {
        let strip =
            image::RgbImage::from_fn(w, 8, |x, _| image::Rgb([(x * 255 / w) as u8, 50, 50]));
        let bytes = png_bytes(&strip);
        let (r, peak, t) = peak_alloc(|| decode_resize(&bytes, 224));
        let img = r.unwrap();
        assert_eq!(img.data.len(), 224 * 224 * 3);
        // Centre of the strip: red about 127.
        assert!(
            img.px(112, 112, 0).abs_diff(127) <= 3,
            "{}",
            img.px(112, 112, 0)
        );
        assert!(
            peak <= (w as usize * 8 * 3).max(224 * 224 * 16),
            "{w}x8: {peak} bytes at once"
        );
        assert!(t < Duration::from_secs(2), "{t:?}");
    }
    // Tall too.
    let tall = png_bytes(&rgb(8, 4000, 1));
    assert_eq!(decode_resize(&tall, 32).unwrap().size, 32);
}

#[test]
fn isic_jpegs_pass_the_new_checks() {
    let Some(dir) = common::isic_dir() else {
        return;
    };
    let ds = Dataset::open(&dir).unwrap();
    let picked: Vec<PathBuf> = ds
        .samples
        .iter()
        .step_by(97)
        .map(|s| s.path.clone())
        .collect();
    for p in picked {
        let b = std::fs::read(&p).unwrap();
        decode_resize(&b, 32).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
