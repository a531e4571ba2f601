//! The built-in data set (datasets/isic2017-mini): the shipped folder matches
//! its checksums and opens with the challenge's counts, its audit finds only
//! what its README explains, a rebuild from the ISIC 2017 folder gives the
//! same bytes, a tampered copy fails verification naming the file, and the
//! builder on a small hand-made challenge folder (non-square images, a
//! duplicate across splits and one inside a split, bad input).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use pirlkit::data::builtin::{self, MANIFEST_COLUMNS};
use pirlkit::data::{Dataset, ImageCache, Split};

fn shipped() -> PathBuf {
    builtin::shipped_dir()
}

fn counts(ds: &Dataset) -> BTreeMap<Split, (usize, usize)> {
    let mut out = BTreeMap::new();
    for s in &ds.samples {
        let e = out.entry(s.split).or_insert((0, 0));
        e.0 += 1;
        e.1 += (s.label == Some(1)) as usize;
    }
    out
}

/// Every file under `dir` (relative path -> bytes).
fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    builtin::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|rel| {
            let b = std::fs::read(dir.join(&rel)).unwrap();
            (rel, b)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in all_files(from) {
        let p = to.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// `duplicates.csv` rows: (image_a, split_a, image_b, split_b, audit, resolution).
fn duplicates(dir: &Path) -> Vec<[String; 6]> {
    let mut rdr = csv::Reader::from_path(dir.join("duplicates.csv")).unwrap();
    let h = rdr.headers().unwrap().clone();
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        [
            "image_a",
            "split_a",
            "image_b",
            "split_b",
            "audit",
            "listed_by_source",
            "resolution"
        ]
    );
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            [0, 1, 2, 3, 4, 6].map(|i| r[i].to_string())
        })
        .collect()
}

// ---------------------------------------------------------- shipped folder

#[test]
fn shipped_folder_matches_its_checksums() {
    let dir = shipped();
    builtin::verify(&dir).unwrap();
    // SHA256SUMS lists every other file, sorted by path, in sha256sum format.
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let paths: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    let files: Vec<String> = builtin::list_files(&dir)
        .unwrap()
        .into_iter()
        .filter(|f| f != "SHA256SUMS")
        .collect();
    assert_eq!(paths, files);
    for l in sums.lines() {
        assert_eq!(&l[64..66], "  ", "{l}");
    }
    assert!(paths.contains(&"manifest.csv") && paths.contains(&"README.md"));
    // Under the size budget.
    let bytes: u64 = all_files(&dir).values().map(|b| b.len() as u64).sum();
    assert!(bytes <= builtin::MAX_BYTES, "{bytes} bytes");
    assert_eq!(
        builtin::locate().map(|p| p.join("SHA256SUMS").is_file()),
        Some(true)
    );
}

/// The challenge's counts (2000/374, 150/30, 600/117), less the images left
/// out as duplicates across splits: 16 train images (4 melanomas) and 2
/// validation images (none); 7 of these 18 pairs are in the source's
/// near_duplicates.csv, 11 are the audit's own finds.
const EXPECTED: [(Split, usize, usize); 3] = [
    (Split::Train, 1984, 370),
    (Split::Val, 148, 30),
    (Split::Test, 600, 117),
];

#[test]
fn shipped_folder_opens_with_the_expected_counts() {
    let dir = shipped();
    let ds = Dataset::open(&dir).unwrap();
    assert!(!ds.splits_assigned);
    let c = counts(&ds);
    for (s, n, pos) in EXPECTED {
        assert_eq!(c[&s], (n, pos), "{}", s.as_str());
    }
    ds.check_labeled().unwrap();
    // The verified opener gives the same samples.
    let v = builtin::open_verified(&dir).unwrap();
    assert_eq!(v.samples, ds.samples);
    assert_eq!(
        builtin::open_shipped().unwrap().samples.len(),
        ds.samples.len()
    );

    // The manifest's columns, and one row per image file.
    let mut rdr = csv::Reader::from_path(dir.join("manifest.csv")).unwrap();
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        MANIFEST_COLUMNS
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), ds.samples.len());
    let by_id: HashMap<&str, &csv::StringRecord> = rows.iter().map(|r| (&r[0], r)).collect();
    // Metadata kept: train and val from the source's metadata CSVs, test has none.
    let r = by_id["ISIC_0000000"];
    assert_eq!((&r[5], &r[6], &r[7]), ("0", "55", "female"));
    assert_eq!(
        &by_id["ISIC_0001769"][5], "",
        "val has no seborrheic_keratosis"
    );
    assert_eq!(&by_id["ISIC_0001769"][6], "15");
    assert!(
        rows.iter()
            .filter(|r| &r[3] == "test")
            .all(|r| r[6].is_empty())
    );
    let sk: usize = rows
        .iter()
        .filter(|r| &r[3] == "test" && &r[5] == "1")
        .count();
    assert_eq!(sk, 90);

    // Images: every listed one is a size x size JPEG; no other image files.
    let listed: BTreeSet<PathBuf> = ds.samples.iter().map(|s| s.path.clone()).collect();
    let on_disk: BTreeSet<PathBuf> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(listed, on_disk);
    for s in ds.samples.iter().step_by(97) {
        let d = image::image_dimensions(&s.path).unwrap();
        assert_eq!(
            d,
            (builtin::DEFAULT_SIZE, builtin::DEFAULT_SIZE),
            "{}",
            s.id
        );
        assert_eq!(
            image::ImageFormat::from_path(&s.path).unwrap(),
            image::ImageFormat::Jpeg
        );
    }
}

#[test]
fn shipped_duplicates_are_grouped_or_left_out() {
    let dir = shipped();
    let ds = Dataset::open(&dir).unwrap();
    let by_id: HashMap<&str, &pirlkit::data::Sample> =
        ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let dups = duplicates(&dir);
    // The source lists 12 pairs, 7 across splits; the audit may find more.
    assert!(dups.len() >= 12, "{} pairs", dups.len());
    let mut left_out = BTreeSet::new();
    for [a, sa, b, sb, _, res] in &dups {
        if sa == sb && res.starts_with("grouped") {
            assert_eq!(by_id[a.as_str()].group, by_id[b.as_str()].group, "{a} {b}");
        } else {
            // The image in the earlier split is gone, its duplicate kept.
            let (early, late) = if Split::parse(sa) < Split::parse(sb) {
                (a, b)
            } else {
                (b, a)
            };
            assert!(!by_id.contains_key(early.as_str()), "{early} still there");
            assert!(by_id.contains_key(late.as_str()), "{late} missing");
            assert!(res.contains(&format!("{early} (")) && res.contains("left out"));
            left_out.insert(early.clone());
        }
    }
    // The source's cross-split pairs: the train or val member is left out.
    for id in [
        "ISIC_0000171",
        "ISIC_0012175",
        "ISIC_0012271",
        "ISIC_0012887",
        "ISIC_0012970",
        "ISIC_0012221",
        "ISIC_0012222",
    ] {
        assert!(left_out.contains(id), "{id}");
    }
    // A within-split pair of the source shares a group.
    assert_eq!(by_id["ISIC_0012290"].group, by_id["ISIC_0013594"].group);
    assert_eq!(by_id["ISIC_0014574"].group, by_id["ISIC_0014575"].group);
    assert_ne!(by_id["ISIC_0014574"].group, by_id["ISIC_0012152"].group);
    // The README names every left-out image and the licence.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for id in &left_out {
        assert!(
            readme.contains(&format!("{id} (")),
            "{id} not in the README"
        );
    }
    for s in [
        "CC-0",
        "International Skin Imaging Collaboration",
        "Codella",
        "pirlkit make-builtin --from",
    ] {
        assert!(readme.contains(s), "README lacks {s:?}");
    }
}

#[test]
fn shipped_folder_audit_finds_only_what_the_readme_explains() {
    let dir = shipped();
    let ds = Dataset::open(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let r = pirlkit::data::audit::audit(
        &ds,
        &ImageCache::new(tmp.path().join("cache")),
        &tmp.path().join("audit.csv"),
    )
    .unwrap();
    eprintln!("{}", r.summary());
    assert!(!r.has_leaks());
    let c = &r.counts;
    assert_eq!(
        (
            c.unreadable,
            c.odd_sizes,
            c.missing_images,
            c.unlabeled,
            c.unlisted_images
        ),
        (0, 0, 0, 0, 0)
    );
    // Each reported pair is a grouped pair of duplicates.csv, and back.
    let reported: BTreeSet<(String, String)> = r
        .exact_duplicates
        .iter()
        .chain(&r.near_duplicates)
        .map(|p| {
            (
                p.id_a.clone().min(p.id_b.clone()),
                p.id_a.clone().max(p.id_b.clone()),
            )
        })
        .collect();
    assert!(
        r.exact_duplicates
            .iter()
            .chain(&r.near_duplicates)
            .all(|p| p.same_group && !p.cross_split)
    );
    let grouped: BTreeSet<(String, String)> = duplicates(&dir)
        .into_iter()
        .filter(|d| d[5].starts_with("grouped") && d[4] != "not found")
        .map(|d| (d[0].clone(), d[2].clone()))
        .collect();
    assert_eq!(reported, grouped);
    // The README's audit paragraph has these numbers.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let line = format!(
        "{} images; {} exact and {} near-duplicate pairs, 0 of them across",
        c.images, c.exact_duplicate_pairs, c.near_duplicate_pairs
    );
    assert!(readme.contains(&line), "README lacks {line:?}");
}

// ------------------------------------------------------------------- rebuild

#[test]
fn rebuild_from_isic2017_is_byte_identical() {
    let Some(src) = common::isic_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rebuilt");
    let t = std::time::Instant::now();
    let r = builtin::build(&src, &out, builtin::DEFAULT_SIZE).unwrap();
    eprintln!("rebuilt in {:.1} s", t.elapsed().as_secs_f64());
    let (a, b) = (all_files(&shipped()), all_files(&out));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs from the shipped copy");
    }
    assert_eq!(r.bytes, a.values().map(|v| v.len() as u64).sum::<u64>());
    for (s, n, pos) in EXPECTED {
        assert_eq!(
            (r.counts[&s].images, r.counts[&s].melanoma),
            (n, pos),
            "{}",
            s.as_str()
        );
    }
    assert!(
        !tmp.path()
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with('.') }),
        "scratch folders left behind"
    );
}

// ------------------------------------------------------------------- verify

fn verify_err(dir: &Path) -> String {
    match builtin::verify(dir) {
        Ok(()) => panic!("{} verified", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tampered_copy_fails_verification_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("copy");
    copy_dir(&shipped(), &dir);
    builtin::verify(&dir).unwrap();
    let ds = Dataset::open(&dir).unwrap();
    let victim = ds.samples[ds.samples.len() / 2].path.clone();
    let rel = format!("images/{}", victim.file_name().unwrap().to_string_lossy());

    // One flipped bit in one image.
    let orig = std::fs::read(&victim).unwrap();
    let mut b = orig.clone();
    let k = b.len() / 2;
    b[k] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains(&rel) && e.contains("differs"), "{e}");
    std::fs::write(&victim, &orig).unwrap();
    builtin::verify(&dir).unwrap();

    // An edited label in the manifest.
    let m = dir.join("manifest.csv");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen(",0,train,", ",1,train,", 1)).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains("manifest.csv") && e.contains("differs"), "{e}");
    std::fs::write(&m, &text).unwrap();

    // A missing image.
    std::fs::remove_file(&victim).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains(&rel) && e.contains("missing"), "{e}");
    std::fs::write(&victim, &orig).unwrap();

    // An image that SHA256SUMS does not list; a hidden file is fine.
    std::fs::write(dir.join("images/ISIC_9999999.jpg"), &orig).unwrap();
    let e = verify_err(&dir);
    assert!(
        e.contains("ISIC_9999999.jpg") && e.contains("not listed"),
        "{e}"
    );
    std::fs::remove_file(dir.join("images/ISIC_9999999.jpg")).unwrap();
    std::fs::write(dir.join("images/.DS_Store"), b"x").unwrap();
    builtin::verify(&dir).unwrap();

    // A damaged SHA256SUMS: the line is named.
    let sums = dir.join("SHA256SUMS");
    let s = std::fs::read_to_string(&sums).unwrap();
    let mut lines: Vec<String> = s.lines().map(String::from).collect();
    lines[2] = lines[2].replacen("  ", " ", 1);
    std::fs::write(&sums, lines.join("\n")).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains("SHA256SUMS, line 3"), "{e}");
    let mut lines: Vec<String> = s.lines().map(String::from).collect();
    lines[1] = format!("{}  ../outside.csv", &lines[1][..64]);
    std::fs::write(&sums, lines.join("\n")).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains("line 2") && e.contains("../outside.csv"), "{e}");
    std::fs::remove_file(&sums).unwrap();
    let e = verify_err(&dir);
    assert!(e.contains("SHA256SUMS"), "{e}");
    // The opener refuses what verify refuses.
    assert!(builtin::open_verified(&dir).is_err());
}

// ------------------------------------------- builder on a hand-made folder

/// A smooth random field (sum of blobs) with some texture, `w x h`, from `seed`.
fn field(seed: u64, w: u32, h: u32) -> image::RgbImage {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
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
    let (fx, fy) = (3.0 + 6.0 * rnd(), 3.0 + 6.0 * rnd());
    image::RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f64 / w as f64, y as f64 / h as f64);
        let mut c = [120.0f64; 3];
        for b in &blobs {
            let g = (-((u - b[0]).powi(2) + (v - b[1]).powi(2)) / (b[2] * b[2])).exp();
            for (k, ck) in c.iter_mut().enumerate() {
                *ck += 140.0 * b[3 + k] * g;
            }
        }
        let t = 12.0
            * ((fx * u * std::f64::consts::TAU).sin() * (fy * v * std::f64::consts::TAU).cos());
        image::Rgb(c.map(|ck| (ck + t).clamp(30.0, 210.0) as u8))
    })
}

const FOLDERS: [(&str, &str, &str); 3] = [
    (
        "train",
        "ISIC-2017_Training_Data",
        "ISIC-2017_Training_Part3_GroundTruth.csv",
    ),
    (
        "val",
        "ISIC-2017_Validation_Data",
        "ISIC-2017_Validation_Part3_GroundTruth.csv",
    ),
    (
        "test",
        "ISIC-2017_Test_v2_Data",
        "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
    ),
];

/// A challenge folder: 8 train, 4 val, 6 test images of several sizes and
/// shapes (one a PNG under a .jpg name); test image 100 is a byte copy of
/// train image 0 (a duplicate across splits), train image 2 a re-encoded
/// train image 1 (a duplicate inside a split). Validation's ground truth has
/// no seborrheic_keratosis column; train has metadata.
fn challenge(dir: &Path) {
    let sizes = [(256, 256), (300, 200), (180, 240), (97, 61)];
    let jpeg_of = |i: u64| {
        let (w, h) = sizes[i as usize % sizes.len()];
        common::jpeg_of(&image::DynamicImage::ImageRgb8(field(i, w, h)), 92)
    };
    let ids: [Vec<u64>; 3] = [(0..8).collect(), (50..54).collect(), (100..106).collect()];
    for ((split, folder, gt), ids) in FOLDERS.iter().zip(&ids) {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        let mut csv = if *split == "val" {
            "image_id,melanoma\n".to_string()
        } else {
            "image_id,melanoma,seborrheic_keratosis\n".to_string()
        };
        for &i in ids {
            let id = format!("ISIC_{i:07}");
            let bytes = match i {
                100 => std::fs::read(dir.join(FOLDERS[0].1).join("ISIC_0000000.jpg")).unwrap(),
                2 => common::jpeg_of(&image::DynamicImage::ImageRgb8(field(1, 300, 200)), 70),
                5 => common::png_of(&field(5, 120, 90)),
                _ => jpeg_of(i),
            };
            std::fs::write(dir.join(folder).join(format!("{id}.jpg")), bytes).unwrap();
            let mel = (i % 3 == 0) as u8;
            if *split == "val" {
                csv += &format!("{id},{mel}.0\n");
            } else {
                csv += &format!("{id},{mel}.0,{}.0\n", (i % 3 == 1) as u8);
            }
        }
        std::fs::write(dir.join(gt), csv).unwrap();
    }
    let mut meta = "image_id,age_approximate,sex\n".to_string();
    for i in 0..8 {
        meta += &format!(
            "ISIC_{i:07},{},{}\n",
            30 + i * 5,
            if i % 2 == 0 { "female" } else { "unknown" }
        );
    }
    std::fs::write(dir.join("ISIC-2017_Training_Data_metadata.csv"), meta).unwrap();
}

#[test]
fn builder_on_a_small_challenge_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    challenge(&src);
    let out = tmp.path().join("mini");
    let r = builtin::build(&src, &out, 32).unwrap();
    builtin::verify(&out).unwrap();

    // The cross-split duplicate: the train copy is left out, the test one kept.
    assert_eq!(r.left_out, vec![("ISIC_0000000".to_string(), Split::Train)]);
    let ds = Dataset::open(&out).unwrap();
    let c = counts(&ds);
    assert_eq!(c[&Split::Train].0, 7);
    assert_eq!(c[&Split::Val].0, 4);
    assert_eq!(c[&Split::Test].0, 6);
    assert_eq!(r.counts[&Split::Val].seborrheic_keratosis, None);
    assert_eq!(r.counts[&Split::Test].seborrheic_keratosis, Some(2));
    let by_id: HashMap<&str, &pirlkit::data::Sample> =
        ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    assert!(!by_id.contains_key("ISIC_0000000"));
    // The duplicate inside train shares a group; the others are their own.
    assert_eq!(by_id["ISIC_0000001"].group, "ISIC_0000001");
    assert_eq!(by_id["ISIC_0000002"].group, "ISIC_0000001");
    assert_eq!(by_id["ISIC_0000003"].group, "ISIC_0000003");
    let dups = duplicates(&out);
    assert_eq!(dups.len(), 2, "{dups:?}");
    assert_eq!(dups[0][4], "exact");
    assert!(
        dups[0][5].contains("ISIC_0000000 (train) left out")
            && dups[0][5].contains("ISIC_0000100 (test) kept")
    );
    assert!(dups[1][4].starts_with("near (score"), "{:?}", dups[1]);
    assert_eq!(dups[1][5], "grouped as ISIC_0000001");
    assert_eq!(
        r.audit.near_duplicate_pairs + r.audit.exact_duplicate_pairs,
        1
    );

    // Every image, whatever its size, shape or format, is a 32x32 JPEG.
    for s in &ds.samples {
        assert_eq!(
            image::image_dimensions(&s.path).unwrap(),
            (32, 32),
            "{}",
            s.id
        );
        assert_eq!(&std::fs::read(&s.path).unwrap()[..2], &[0xFF, 0xD8]);
    }
    // Metadata and the extra label column, where the source has them.
    let m = std::fs::read_to_string(out.join("manifest.csv")).unwrap();
    assert!(m.starts_with("id,path,label,split,group,seborrheic_keratosis,age_approximate,sex\n"));
    assert!(
        m.contains("\nISIC_0000001,images/ISIC_0000001.jpg,0,train,ISIC_0000001,1,35,unknown\n"),
        "{m}"
    );
    assert!(
        m.contains("\nISIC_0000052,images/ISIC_0000052.jpg,0,val,ISIC_0000052,,,\n"),
        "{m}"
    );
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("pirlkit make-builtin --from ISIC-2017 --size 32"));
    assert!(
        readme.contains("5 different sizes, 97x61 to 300x200"),
        "{readme}"
    );
    assert!(
        !readme.contains(&tmp.path().display().to_string()),
        "a local path in the README"
    );

    // Deterministic: a second build elsewhere, and over the first, are the same bytes.
    let out2 = tmp.path().join("again");
    builtin::build(&src, &out2, 32).unwrap();
    assert_eq!(all_files(&out), all_files(&out2));
    let before = all_files(&out);
    builtin::build(&src, &out, 32).unwrap();
    assert_eq!(before, all_files(&out));
    // Another size gives other images, with the size in the README.
    let out3 = tmp.path().join("size48");
    builtin::build(&src, &out3, 48).unwrap();
    let p = out3.join("images/ISIC_0000003.jpg");
    assert_eq!(image::image_dimensions(&p).unwrap(), (48, 48));
    assert!(
        std::fs::read_to_string(out3.join("README.md"))
            .unwrap()
            .contains("48x48")
    );
}

#[test]
fn builder_refuses_bad_input_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    challenge(&src);
    let err = |from: &Path, out: &Path, size: u32| match builtin::build(from, out, size) {
        Ok(_) => panic!("built {}", out.display()),
        Err(e) => e.to_string(),
    };

    // A folder that holds other things is not replaced.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "keep me").unwrap();
    let e = err(&src, &busy, 32);
    assert!(
        e.contains("busy") && e.contains("not an earlier build"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("notes.txt")).unwrap(),
        "keep me"
    );
    // Sizes out of range; not a challenge folder.
    let out = tmp.path().join("out");
    assert!(err(&src, &out, 4).contains("size 4"));
    let e = err(&busy, &out, 32);
    assert!(e.contains("not the ISIC 2017 challenge layout"), "{e}");

    // A truncated image: the error names it, nothing is written.
    let victim = src.join("ISIC-2017_Validation_Data/ISIC_0000052.jpg");
    let b = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &b[..b.len() / 2]).unwrap();
    let e = err(&src, &out, 32);
    assert!(
        e.contains("ISIC_0000052.jpg") && e.contains("truncated"),
        "{e}"
    );
    assert!(!out.exists());
    std::fs::write(&victim, &b).unwrap();

    // A bad label value: the CSV and its line.
    let gt = src.join("ISIC-2017_Test_v2_Part3_GroundTruth.csv");
    let text = std::fs::read_to_string(&gt).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let bad = format!(
        "{}\n{}\n{},0.0,maybe\n",
        lines[0],
        lines[1],
        &lines[2][..12]
    );
    std::fs::write(&gt, bad).unwrap();
    let e = err(&src, &out, 32);
    assert!(e.contains("Test_v2_Part3_GroundTruth.csv, line 3"), "{e}");
    std::fs::write(&gt, &text).unwrap();
    builtin::build(&src, &out, 32).unwrap();
}

#[test]
fn make_builtin_command_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    challenge(&src);
    let out = tmp.path().join("mini");
    let run = |out: &Path| {
        std::process::Command::new(common::bin())
            .args(["-q", "make-builtin", "--from"])
            .arg(&src)
            .args(["--size", "24", "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let o = run(&out);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("train: 7 images"), "{stdout}");
    assert!(
        stdout.contains("2 duplicate pairs (1 across splits, 1 images left out)"),
        "{stdout}"
    );
    builtin::verify(&out).unwrap();
    let p = out.join("images/ISIC_0000001.jpg");
    assert_eq!(image::image_dimensions(&p).unwrap(), (24, 24));
    // The folder as --data: the audit command finds no leak.
    let o = std::process::Command::new(common::bin())
        .args(["-q", "audit", "--fail-on-leak", "--out"])
        .arg(tmp.path().join("audit.csv"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // A folder with other files: refused, exit 1, the folder named.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "x").unwrap();
    let o = run(&busy);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("busy") && stderr.contains("not an earlier build"),
        "{stderr}"
    );
}
