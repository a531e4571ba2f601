//! Reading data: the ISIC challenge layout, manifest CSVs, the image cache,
//! and bad input that must be reported with the file's name.

mod common;

use std::path::Path;

use pirlkit::data::{Dataset, ImageCache, Split};

fn write_png(path: &Path, w: u32, h: u32, shade: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([shade, (x * 3) as u8, (y * 5) as u8])
    });
    img.save(path).unwrap();
}

#[test]
fn isic2017_layout_as_shipped() {
    let Some(dir) = common::isic_dir() else {
        return;
    };
    let ds = Dataset::open(&dir).unwrap();
    let count = |s: Split| ds.split(s).len();
    let pos = |s: Split| ds.split(s).iter().filter(|x| x.label == Some(1)).count();
    assert_eq!(
        (count(Split::Train), count(Split::Val), count(Split::Test)),
        (2000, 150, 600)
    );
    // The data README: 374, 30 and 117 melanomas.
    assert_eq!(
        (pos(Split::Train), pos(Split::Val), pos(Split::Test)),
        (374, 30, 117)
    );
    assert!(ds.samples.iter().all(|s| s.path.is_file()));
    ds.check_labeled().unwrap();
}

fn manifest_dir(csv: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_png(&d.path().join(format!("img{i}.png")), 20, 16, i as u8 * 40);
    }
    std::fs::write(d.path().join("manifest.csv"), csv).unwrap();
    d
}

#[test]
fn manifest_reads_paths_labels_splits_groups() {
    let d = manifest_dir(
        "path,label,split,group\nimg0.png,1,train,a\nimg1.png,0.0,train,a\nimg2.png,true,val,b\nimg3.png,0,test,c\n",
    );
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.samples.len(), 4);
    assert_eq!(ds.samples[0].label, Some(1));
    assert_eq!(ds.samples[1].label, Some(0));
    assert_eq!(ds.samples[2].split, Split::Val);
    assert_eq!(ds.samples[1].group, "a");
}

#[test]
fn manifest_errors_name_file_and_line() {
    let d = manifest_dir("path,label\nimg0.png,1\nimg1.png,maybe\n");
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("manifest.csv") && e.contains("line 3") && e.contains("maybe"),
        "{e}"
    );

    let d = manifest_dir("file,label\nimg0.png,1\n");
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("path"), "{e}");

    let d = manifest_dir("path,label\nimg0.png,1\nimg0.png,0\n");
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("duplicate"), "{e}");

    let d = manifest_dir("path,label,split,group\nimg0.png,1,train,p1\nimg1.png,0,test,p1\n");
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("group p1"), "{e}");
}

#[test]
fn manifest_without_splits_keeps_groups_together() {
    let d = tempfile::tempdir().unwrap();
    let mut csv = String::from("path,label,group\n");
    for i in 0..60 {
        write_png(&d.path().join(format!("i{i}.png")), 12, 12, i as u8);
        csv.push_str(&format!("i{i}.png,{},{}\n", (i % 4 == 0) as u8, i / 3));
    }
    std::fs::write(d.path().join("manifest.csv"), csv).unwrap();
    let ds = Dataset::open(d.path()).unwrap();
    for s in [Split::Train, Split::Val, Split::Test] {
        assert!(!ds.split(s).is_empty(), "{s:?} empty");
    }
    for g in 0..20 {
        let splits: std::collections::HashSet<_> = ds
            .samples
            .iter()
            .filter(|s| s.group == g.to_string())
            .map(|s| s.split)
            .collect();
        assert_eq!(splits.len(), 1, "group {g} split across {splits:?}");
    }
}

#[test]
fn cache_is_reused_and_invalidated_by_content() {
    let d = manifest_dir(
        "path,label,split\nimg0.png,1,train\nimg1.png,0,train\nimg2.png,1,test\nimg3.png,0,test\n",
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_dir.path());
    let ds = Dataset::open(d.path()).unwrap();
    let a = cache.load_all(&ds.samples, 12).unwrap();
    assert_eq!(a[0].data.len(), 12 * 12 * 3);
    let entries = std::fs::read_dir(cache_dir.path().join("12"))
        .unwrap()
        .count();
    assert_eq!(entries, 4);
    let b = cache.load_all(&ds.samples, 12).unwrap();
    assert_eq!(a, b);
    // A changed file gets a new entry and new pixels.
    write_png(&d.path().join("img0.png"), 20, 16, 250);
    let c = cache.load_all(&ds.samples, 12).unwrap();
    assert_ne!(a[0], c[0]);
    assert_eq!(a[1], c[1]);
    assert_eq!(
        std::fs::read_dir(cache_dir.path().join("12"))
            .unwrap()
            .count(),
        5
    );
    // Non-square images are resized on the short side and centre-cropped.
    assert_eq!(c[2].size, 12);
}

#[test]
fn bad_images_are_errors_that_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("empty.png"), b"").unwrap();
    std::fs::write(d.path().join("text.jpg"), b"this is not an image at all").unwrap();
    write_png(&d.path().join("good.png"), 40, 40, 9);
    let bytes = std::fs::read(d.path().join("good.png")).unwrap();
    std::fs::write(d.path().join("truncated.png"), &bytes[..bytes.len() / 2]).unwrap();
    write_png(&d.path().join("tiny.png"), 3, 3, 9);
    let cache = ImageCache::new(d.path().join("cache"));
    for name in [
        "empty.png",
        "text.jpg",
        "truncated.png",
        "tiny.png",
        "missing.png",
    ] {
        let s = pirlkit::data::Sample {
            id: name.into(),
            path: d.path().join(name),
            label: Some(0),
            aux: None,
            split: Split::Train,
            group: name.into(),
        };
        let e = cache.load_all(&[s], 16).unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
    // A PNG with a .jpg name still decodes (format from content).
    std::fs::copy(d.path().join("good.png"), d.path().join("really_png.jpg")).unwrap();
    let s = pirlkit::data::Sample {
        id: "x".into(),
        path: d.path().join("really_png.jpg"),
        label: Some(0),
        aux: None,
        split: Split::Train,
        group: "x".into(),
    };
    assert!(cache.load_all(&[s], 16).is_ok());
}

#[test]
fn config_rejects_unknown_keys_and_bad_values() {
    use pirlkit::{Config, Preset};
    let e = Config::from_toml_over(Preset::Tiny, "[train]\nepochz = 3\n").unwrap_err();
    assert!(e.contains("epochz"), "{e}");
    let e = Config::from_toml_over(Preset::Tiny, "[pirl]\ntau = -1.0\n").unwrap_err();
    assert!(e.contains("tau"), "{e}");
    let c = Config::from_toml_over(Preset::Tiny, "seed = 9\n[train]\nepochs = 5\n").unwrap();
    assert_eq!(
        (c.seed, c.train.epochs, c.train.batch_size),
        (9, 5, Config::preset(Preset::Tiny).train.batch_size)
    );
}

#[test]
fn splits_made_by_pirlkit_keep_duplicates_together() {
    // 40 distinct images, each also present as an exact copy and as a
    // brightened re-encode under another name; no split column, no groups.
    let d = tempfile::tempdir().unwrap();
    let mut csv = String::from("path,label\n");
    for i in 0..40u32 {
        let img = image::RgbImage::from_fn(48, 48, |x, y| {
            let v = ((x * (i % 7 + 1) + y * (i / 7 + 2) + i * 13) % 256) as u8;
            image::Rgb([v, v.wrapping_mul(3), ((x ^ y) * 4 + i) as u8])
        });
        img.save(d.path().join(format!("a{i}.png"))).unwrap();
        std::fs::copy(
            d.path().join(format!("a{i}.png")),
            d.path().join(format!("b{i}.png")),
        )
        .unwrap();
        let bright = image::RgbImage::from_fn(48, 48, |x, y| {
            let p = img.get_pixel(x, y);
            image::Rgb([
                p[0].saturating_add(12),
                p[1].saturating_add(12),
                p[2].saturating_add(12),
            ])
        });
        bright.save(d.path().join(format!("c{i}.png"))).unwrap();
        let l = (i % 4 == 0) as u8;
        csv.push_str(&format!("a{i}.png,{l}\nb{i}.png,{l}\nc{i}.png,{l}\n"));
    }
    std::fs::write(d.path().join("manifest.csv"), csv).unwrap();
    let cache = ImageCache::new(d.path().join("cache"));
    let plain = Dataset::open(d.path()).unwrap();
    let ds = pirlkit::data::load::open_dataset(Some(d.path()), &cache, 0).unwrap();
    let split_of = |ds: &Dataset, id: &str| ds.samples.iter().find(|s| s.id == id).unwrap().split;
    let straddle = |ds: &Dataset| {
        (0..40)
            .filter(|i| {
                let s = [
                    split_of(ds, &format!("a{i}")),
                    split_of(ds, &format!("b{i}")),
                    split_of(ds, &format!("c{i}")),
                ];
                s[0] != s[1] || s[0] != s[2]
            })
            .count()
    };
    assert!(
        straddle(&plain) > 0,
        "the test needs duplicates that a plain split would separate"
    );
    assert_eq!(straddle(&ds), 0);
    for s in [Split::Train, Split::Val, Split::Test] {
        assert!(!ds.split(s).is_empty());
    }
}

/// `data.val_from_train`: a stratified share of the training groups moves to
/// validation, whole groups at a time, the same for the same seed; test and
/// the original validation images stay where they were.
#[test]
fn val_from_train_moves_whole_groups_stratified() {
    use pirlkit::data::{Dataset, Sample, Split};
    let mut samples = Vec::new();
    for i in 0..200 {
        let split = if i < 160 {
            Split::Train
        } else if i < 180 {
            Split::Val
        } else {
            Split::Test
        };
        samples.push(Sample {
            id: format!("im{i}"),
            path: format!("im{i}.png").into(),
            label: Some((i % 5 == 0) as u8),
            aux: None,
            split,
            // Pairs of images share a group (a lesion photographed twice).
            group: format!("g{}", i / 2),
        });
    }
    let ds0 = Dataset {
        name: "t".into(),
        root: ".".into(),
        samples,
        splits_assigned: false,
    };
    let moved = |seed| {
        let mut ds = ds0.clone();
        let n = pirlkit::data::splits::move_train_to_val(&mut ds, 0.25, seed);
        (n, ds)
    };
    let (n, ds) = moved(3);
    assert_eq!(n, 40, "a quarter of 160 training images");
    let was_val = |id: &str| ds0.samples.iter().find(|s| s.id == id).unwrap().split;
    let new_val: Vec<&Sample> = ds
        .samples
        .iter()
        .filter(|s| s.split == Split::Val && was_val(&s.id) == Split::Train)
        .collect();
    assert_eq!(new_val.len(), 40);
    // Stratified: 32 of the 160 training images are positive, 8 of the moved.
    assert_eq!(new_val.iter().filter(|s| s.label == Some(1)).count(), 8);
    // Whole groups: no group on both sides.
    for s in &new_val {
        assert!(
            ds.samples
                .iter()
                .filter(|t| t.group == s.group)
                .all(|t| t.split == Split::Val)
        );
    }
    assert!(
        ds.samples
            .iter()
            .zip(&ds0.samples)
            .all(|(a, b)| b.split == Split::Train || a.split == b.split)
    );
    // Deterministic per seed, different across seeds.
    assert_eq!(moved(3).1.samples, ds.samples);
    assert_ne!(moved(4).1.samples, ds.samples);
}

/// Metadata for subgroups: the ISIC challenge's metadata CSVs (training and
/// validation only; the shared copy has none for test) and the built-in
/// set's manifest columns, by image id; labels and identifiers are not
/// metadata.
#[test]
fn metadata_comes_from_the_metadata_csvs_and_manifest_columns() {
    let ds = pirlkit::data::builtin::open_shipped().unwrap();
    let m = pirlkit::data::metadata::load(&ds).unwrap();
    let first = &m["ISIC_0000000"];
    assert_eq!(first.get("age_approximate").map(String::as_str), Some("55"));
    assert_eq!(first.get("sex").map(String::as_str), Some("female"));
    assert!(
        first
            .keys()
            .all(|k| ["age_approximate", "sex"].contains(&k.as_str())),
        "{first:?}"
    );
    let test_with_meta = ds
        .samples
        .iter()
        .filter(|s| s.split == pirlkit::data::Split::Test && m.contains_key(&s.id))
        .count();
    assert_eq!(test_with_meta, 0);
    assert!(m.len() > 1900, "{}", m.len());
    if let Some(isic) = common::isic_dir() {
        let ds = pirlkit::data::Dataset::open(&isic).unwrap();
        let m = pirlkit::data::metadata::load(&ds).unwrap();
        assert_eq!(m["ISIC_0000001"]["sex"], "female");
        assert_eq!(m["ISIC_0000001"]["age_approximate"], "30");
    }
}
