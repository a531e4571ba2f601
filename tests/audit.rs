//! Dataset audit: on ISIC 2017 it must find the near-duplicates the data set
//! lists (`near_duplicates.csv`, the reference, never an input to the audit),
//! with few others; on a built dataset, each kind of finding.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pirlkit::data::audit::{AuditReport, audit};
use pirlkit::data::{Dataset, ImageCache, Sample, Split};

fn pair_key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn reported(r: &AuditReport) -> Vec<(String, String, bool, &'static str)> {
    let mut v = Vec::new();
    for p in &r.exact_duplicates {
        let (a, b) = pair_key(&p.id_a, &p.id_b);
        v.push((a, b, p.cross_split, "exact"));
    }
    for p in &r.near_duplicates {
        let (a, b) = pair_key(&p.id_a, &p.id_b);
        v.push((a, b, p.cross_split, "near"));
    }
    v
}

#[test]
fn isic2017_finds_the_listed_near_duplicates() {
    let Some(dir) = common::isic_dir() else {
        return;
    };
    let ds = Dataset::open(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(tmp.path().join("cache"));
    let out = tmp.path().join("audit.csv");
    let t = std::time::Instant::now();
    let r = audit(&ds, &cache, &out).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{}\n({secs:.1} s, cold cache)", r.summary());

    // The reference list.
    let mut rdr = csv::Reader::from_path(dir.join("near_duplicates.csv")).unwrap();
    let mut reference = Vec::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        reference.push((pair_key(&rec[0], &rec[2]), rec[1] != rec[3]));
    }
    assert_eq!(reference.len(), 12);
    let got = reported(&r);
    let got_keys: HashSet<(String, String)> =
        got.iter().map(|g| (g.0.clone(), g.1.clone())).collect();
    let missed: Vec<_> = reference
        .iter()
        .filter(|(k, _)| !got_keys.contains(k))
        .collect();
    let ref_keys: HashSet<_> = reference.iter().map(|(k, _)| k.clone()).collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|g| !ref_keys.contains(&(g.0.clone(), g.1.clone())))
        .collect();
    eprintln!(
        "reference {}, reported {}, missed {missed:?}",
        reference.len(),
        got.len()
    );
    for e in &extra {
        eprintln!(
            "not in the reference: {} {} ({}, cross-split {})",
            e.0, e.1, e.3, e.2
        );
    }
    assert!(missed.is_empty(), "missed listed pairs: {missed:?}");
    // The cross-split ones, in particular, are reported as such.
    let cross_ref: Vec<_> = reference.iter().filter(|(_, c)| *c).collect();
    assert_eq!(cross_ref.len(), 7);
    for (k, _) in cross_ref {
        assert!(
            got.iter().any(|g| (&g.0, &g.1) == (&k.0, &k.1) && g.2),
            "{k:?} not reported as across splits"
        );
    }
    assert!(
        got.len() <= 3 * reference.len(),
        "{} pairs reported for {} listed",
        got.len(),
        reference.len()
    );
    assert!(r.has_leaks());

    // Clean otherwise.
    assert_eq!(r.counts.images, 2750);
    assert_eq!(
        (
            r.counts.unreadable,
            r.counts.missing_images,
            r.counts.unlabeled,
            r.counts.unlisted_images
        ),
        (0, 0, 0, 0)
    );
    assert_eq!((r.counts.group_leaks, r.counts.odd_sizes), (0, 0));

    // One CSV row per finding.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("kind,split_a,id_a,split_b,id_b,detail\n"));
    assert_eq!(text.lines().count() - 1, r.counts.findings);
    assert_eq!(r.counts.findings, got.len());
    assert!(secs < 60.0, "audit of 2750 images took {secs:.1} s");
}

// ---- a built dataset ----

/// A smooth random field (sum of blobs) with some texture, `w x h`, from `seed`.
/// (Its 6.28 is a frequency scale, not 2 pi: written as TAU it would change
/// the test's images.)
#[allow(clippy::approx_constant)]
fn field(seed: u64, w: u32, h: u32) -> image::RgbImage {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64) / (1u64 << 31) as f64
    };
    let blobs: Vec<[f64; 6]> = (0..6)
        .map(|_| {
            [
                rnd(),
                rnd(),
                0.05 + 0.2 * rnd(),
                rnd() - 0.5,
                rnd() - 0.5,
                rnd() - 0.5,
            ]
        })
        .collect();
    let (fx, fy, ph) = (3.0 + 6.0 * rnd(), 3.0 + 6.0 * rnd(), 6.28 * rnd());
    image::RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f64 / w as f64, y as f64 / h as f64);
        let mut c = [120.0f64; 3];
        for b in &blobs {
            let d2 = ((u - b[0]).powi(2) + (v - b[1]).powi(2)) / (b[2] * b[2]);
            let g = (-d2).exp();
            for (k, ck) in c.iter_mut().enumerate() {
                *ck += 140.0 * b[3 + k] * g;
            }
        }
        let t = 12.0 * ((fx * u * 6.28 + ph).sin() * (fy * v * 6.28).cos());
        image::Rgb(c.map(|ck| (ck + t).clamp(30.0, 210.0) as u8))
    })
}

fn jpeg_bytes(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

/// A minimal uncompressed RGB DICOM of `img`, with patient identifiers.
fn dicom_bytes(img: &image::RgbImage) -> Vec<u8> {
    use dicom_core::value::PrimitiveValue as P;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let e = |t, vr, v: P| DataElement::new(t, vr, v);
    let obj = dicom_object::InMemDicomObject::from_element_iter([
        e(
            tags::SOP_CLASS_UID,
            VR::UI,
            P::from("1.2.840.10008.5.1.4.1.1.77.1.4"),
        ),
        e(tags::SOP_INSTANCE_UID, VR::UI, P::from("2.25.42")),
        e(tags::PATIENT_NAME, VR::PN, P::from("DOE^JOHN")),
        e(tags::PATIENT_ID, VR::LO, P::from("SECRET123")),
        e(tags::SAMPLES_PER_PIXEL, VR::US, P::from(3u16)),
        e(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, P::from("RGB")),
        e(tags::PLANAR_CONFIGURATION, VR::US, P::from(0u16)),
        e(tags::ROWS, VR::US, P::from(img.height() as u16)),
        e(tags::COLUMNS, VR::US, P::from(img.width() as u16)),
        e(tags::BITS_ALLOCATED, VR::US, P::from(8u16)),
        e(tags::BITS_STORED, VR::US, P::from(8u16)),
        e(tags::HIGH_BIT, VR::US, P::from(7u16)),
        e(tags::PIXEL_REPRESENTATION, VR::US, P::from(0u16)),
        e(tags::PIXEL_DATA, VR::OB, P::from(img.as_raw().clone())),
    ]);
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.77.1.4")
        .media_storage_sop_instance_uid("2.25.42")
        .transfer_syntax("1.2.840.10008.1.2.1");
    let mut out = Vec::new();
    obj.with_meta(meta).unwrap().write_all(&mut out).unwrap();
    out
}

fn add(
    samples: &mut Vec<Sample>,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    split: Split,
    label: Option<u8>,
    group: Option<&str>,
) -> PathBuf {
    let p = dir.join(name);
    if !bytes.is_empty() {
        std::fs::write(&p, bytes).unwrap();
    }
    let id = Path::new(name)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    samples.push(Sample {
        group: group.unwrap_or(&id).to_string(),
        id,
        path: p.clone(),
        label,
        aux: None,
        split,
    });
    p
}

#[test]
fn built_dataset_each_kind_of_finding() {
    let d = tempfile::tempdir().unwrap();
    let img_dir = d.path().join("images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let mut s = Vec::new();
    let splits = [Split::Train, Split::Val, Split::Test];
    let base: Vec<image::RgbImage> = (0..12).map(|k| field(k + 1, 96, 96)).collect();
    for (k, im) in base.iter().enumerate() {
        let name = format!("u{k:02}.png");
        let mut b = Vec::new();
        im.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        add(
            &mut s,
            &img_dir,
            &name,
            &b,
            splits[k % 3],
            Some((k % 2) as u8),
            None,
        );
    }
    // An exact copy of u00 (train) in test.
    let u00 = std::fs::read(img_dir.join("u00.png")).unwrap();
    add(
        &mut s,
        &img_dir,
        "copy_of_u00.png",
        &u00,
        Split::Test,
        Some(0),
        None,
    );
    // u01 brightened by 25 and re-encoded as JPEG, in train.
    let bright = image::RgbImage::from_fn(96, 96, |x, y| {
        image::Rgb(base[1].get_pixel(x, y).0.map(|v| v.saturating_add(25)))
    });
    add(
        &mut s,
        &img_dir,
        "bright_u01.jpg",
        &jpeg_bytes(&bright, 85),
        Split::Train,
        Some(1),
        None,
    );
    // u02 flipped left-right, in val.
    let flipped = image::imageops::flip_horizontal(&base[2]);
    add(
        &mut s,
        &img_dir,
        "flip_u02.jpg",
        &jpeg_bytes(&flipped, 92),
        Split::Val,
        Some(0),
        None,
    );
    // u03 as DICOM, with patient identifiers, in test.
    add(
        &mut s,
        &img_dir,
        "u03_dicom.dcm",
        &dicom_bytes(&base[3]),
        Split::Test,
        Some(1),
        None,
    );
    // A corrupt file, a text file named .jpg, a small and a very wide image.
    add(
        &mut s,
        &img_dir,
        "corrupt.png",
        b"\x89PNG\r\n\x1a\n this is not a png",
        Split::Train,
        Some(0),
        None,
    );
    add(
        &mut s,
        &img_dir,
        "text.jpg",
        b"this is a text file, not an image",
        Split::Train,
        Some(0),
        None,
    );
    add(
        &mut s,
        &img_dir,
        "small.jpg",
        &jpeg_bytes(&field(99, 24, 24), 90),
        Split::Train,
        Some(0),
        None,
    );
    add(
        &mut s,
        &img_dir,
        "wide.jpg",
        &jpeg_bytes(&field(123, 300, 80), 90),
        Split::Train,
        Some(1),
        None,
    );
    // A label row without its image, an image without a label, an image file no row lists.
    add(&mut s, &img_dir, "gone.png", b"", Split::Val, Some(1), None);
    add(
        &mut s,
        &img_dir,
        "nolabel.jpg",
        &jpeg_bytes(&field(555, 96, 96), 90),
        Split::Test,
        None,
        None,
    );
    std::fs::write(
        img_dir.join("stray.jpg"),
        jpeg_bytes(&field(666, 96, 96), 90),
    )
    .unwrap();
    // One group (lesion) on both sides of a split.
    add(
        &mut s,
        &img_dir,
        "lesion9_a.jpg",
        &jpeg_bytes(&field(901, 96, 96), 90),
        Split::Train,
        Some(1),
        Some("lesion9"),
    );
    add(
        &mut s,
        &img_dir,
        "lesion9_b.jpg",
        &jpeg_bytes(&field(902, 96, 96), 90),
        Split::Test,
        Some(1),
        Some("lesion9"),
    );

    let ds = Dataset {
        name: "built".into(),
        root: d.path().to_path_buf(),
        samples: s,
        splits_assigned: false,
    };
    let cache = ImageCache::new(d.path().join("cache"));
    let out = d.path().join("report/audit.csv");
    let r = audit(&ds, &cache, &out).unwrap();
    eprintln!("{}", r.summary());
    let csv_text = std::fs::read_to_string(&out).unwrap();
    eprintln!("{csv_text}");

    // Duplicates: exactly the four planted pairs, each across splits.
    let got: HashSet<_> = reported(&r).into_iter().collect();
    let want: HashSet<_> = [
        ("copy_of_u00", "u00", true, "exact"),
        ("bright_u01", "u01", true, "near"),
        ("flip_u02", "u02", true, "near"),
        ("u03", "u03_dicom", true, "near"),
    ]
    .iter()
    .map(|&(a, b, c, k)| (a.to_string(), b.to_string(), c, k))
    .collect();
    assert_eq!(got, want);
    let flip = r
        .near_duplicates
        .iter()
        .find(|p| p.id_a.contains("u02") || p.id_b.contains("u02"))
        .unwrap();
    assert_eq!(flip.transform, "hflip");
    assert_eq!(r.counts.exact_duplicate_pairs_cross_split, 1);

    // Unreadable files are each listed, with their error; the audit went on.
    let unreadable: Vec<&str> = r.unreadable.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(unreadable, ["corrupt", "text"]);
    assert!(
        r.unreadable[0].detail.contains("decode"),
        "{:?}",
        r.unreadable
    );
    assert!(
        r.unreadable[1]
            .detail
            .contains("not a recognised image format"),
        "{:?}",
        r.unreadable
    );
    let odd: Vec<&str> = r.odd_sizes.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(odd, ["small", "wide"]);
    assert!(
        r.odd_sizes[0].detail.contains("smaller") && r.odd_sizes[1].detail.contains("square"),
        "{:?}",
        r.odd_sizes
    );
    assert_eq!(
        r.missing_images
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        ["gone"]
    );
    assert_eq!(
        r.unlabeled
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        ["nolabel"]
    );
    assert_eq!(
        r.unlisted_images
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        ["stray"]
    );
    assert_eq!(r.group_leaks.len(), 1);
    assert_eq!(
        (
            r.group_leaks[0].group.as_str(),
            r.group_leaks[0].split_a,
            r.group_leaks[0].split_b
        ),
        ("lesion9", Split::Train, Split::Test)
    );
    assert!(r.has_leaks());

    // The CSV: a header and one row per finding, no patient identifier.
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        ["kind", "split_a", "id_a", "split_b", "id_b", "detail"]
    );
    let kinds: Vec<String> = rdr.records().map(|x| x.unwrap()[0].to_string()).collect();
    assert_eq!(kinds.len(), r.counts.findings);
    for k in [
        "exact_duplicate",
        "near_duplicate",
        "group_leak",
        "unreadable",
        "odd_size",
        "missing_image",
        "unlabeled",
        "unlisted_image",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} row");
    }
    for secret in ["DOE", "JOHN", "SECRET123"] {
        assert!(
            !csv_text.contains(secret)
                && !r.summary().contains(secret)
                && !format!("{r:?}").contains(secret)
        );
    }
    // The report serialises.
    let j = serde_json::to_string(&r).unwrap();
    assert!(j.contains("\"near_duplicates\""));
}
