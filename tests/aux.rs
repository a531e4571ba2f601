//! An auxiliary fine-tuning target (`finetune.aux_weight`): the ISIC layout
//! reads the second label where a split's CSV has it and a manifest from its
//! `aux_label` column, a bad value names its file and line, a run with the target is reproducible and trains
//! differently from one without, data without the label is refused, and the
//! setting stays out of run keys while it is off.

mod common;

use std::path::Path;

use pirlkit::data::{Dataset, Split};
use pirlkit::train::finetune::{Init, Labeled, Splits, finetune};

use common::labelled_lesions as images;

/// A one-image-per-split ISIC 2017 folder whose training CSV has `train_gt`
/// as its rows (after the header with both diagnoses).
fn isic_folder(dir: &Path, train_gt: &str) {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([150, 100, 80]));
    for (folder, csv, header, rows) in [
        (
            "ISIC-2017_Training_Data",
            "ISIC-2017_Training_Part3_GroundTruth.csv",
            "image_id,melanoma,seborrheic_keratosis",
            train_gt,
        ),
        (
            "ISIC-2017_Validation_Data",
            "ISIC-2017_Validation_Part3_GroundTruth.csv",
            "image_id,melanoma",
            "ISIC_9000001,1.0\n",
        ),
        (
            "ISIC-2017_Test_v2_Data",
            "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
            "image_id,melanoma,seborrheic_keratosis",
            "ISIC_9000002,0.0,1.0\n",
        ),
    ] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::write(dir.join(csv), format!("{header}\n{rows}")).unwrap();
        for line in rows.lines() {
            let id = line.split(',').next().unwrap();
            img.save(dir.join(folder).join(format!("{id}.jpg")))
                .unwrap();
        }
    }
}

#[test]
fn the_isic_layout_reads_the_second_label_where_its_csv_has_it() {
    let d = tempfile::tempdir().unwrap();
    isic_folder(d.path(), "ISIC_0000001,0.0,1.0\nISIC_0000002,1.0,0.0\n");
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.aux_labels(Split::Train), Some(vec![1, 0]));
    assert_eq!(ds.aux_labels(Split::Test), Some(vec![1]));
    // The validation CSV has no keratosis column: no auxiliary labels.
    assert_eq!(ds.aux_labels(Split::Val), None);
    let h = ds.aux_sha256();
    // A changed auxiliary label changes its hash.
    isic_folder(d.path(), "ISIC_0000001,0.0,0.0\nISIC_0000002,1.0,0.0\n");
    let ds2 = Dataset::open(d.path()).unwrap();
    assert_ne!(ds2.aux_sha256(), h);

    // A value that is not 0/1 names the file, the line and the column.
    isic_folder(d.path(), "ISIC_0000001,0.0,1.0\nISIC_0000002,1.0,0.5\n");
    let e = Dataset::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("ISIC-2017_Training_Part3_GroundTruth.csv")
            && e.contains('3')
            && e.contains("seborrheic_keratosis"),
        "{e}"
    );
}

#[test]
fn a_manifest_gives_the_second_label_in_its_aux_label_column() {
    let d = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([150, 100, 80]));
    for i in 0..4 {
        img.save(d.path().join(format!("a{i}.png"))).unwrap();
    }
    let m = d.path().join("manifest.csv");
    std::fs::write(
        &m,
        "path,label,split,aux_label\na0.png,1,train,0\na1.png,0,train,1\na2.png,0,val,\na3.png,1,test,0\n",
    )
    .unwrap();
    let ds = Dataset::open(&m).unwrap();
    assert_eq!(ds.aux_labels(Split::Train), Some(vec![0, 1]));
    // An empty cell is an unknown label: the split has no auxiliary labels.
    assert_eq!(ds.aux_labels(Split::Val), None);
    // Without the column, none.
    std::fs::write(&m, "path,label,split\na0.png,1,train\na1.png,0,train\n").unwrap();
    assert_eq!(Dataset::open(&m).unwrap().aux_labels(Split::Train), None);
    // A bad value names the line and the column.
    std::fs::write(
        &m,
        "path,label,split,aux_label\na0.png,1,train,0\na1.png,0,train,maybe\n",
    )
    .unwrap();
    let e = Dataset::open(&m).unwrap_err().to_string();
    assert!(
        e.contains("manifest.csv") && e.contains('3') && e.contains("aux_label"),
        "{e}"
    );
}

#[test]
fn the_real_training_split_has_its_254_keratoses() {
    let Some(dir) = common::isic_dir() else {
        return;
    };
    let ds = Dataset::open(&dir).unwrap();
    let aux = ds.aux_labels(Split::Train).expect("every training image");
    assert_eq!(aux.len(), 2000);
    assert_eq!(aux.iter().filter(|&&a| a == 1).count(), 254);
    // No image is both a melanoma and a keratosis.
    let mel: Vec<u8> = ds
        .split(Split::Train)
        .iter()
        .map(|s| s.label.unwrap())
        .collect();
    assert!(aux.iter().zip(&mel).all(|(a, m)| a + m <= 1));
}

#[test]
fn auxiliary_runs_are_reproducible_differ_from_plain_ones_and_need_the_labels() {
    let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
    cfg.finetune.epochs = 2;
    cfg.finetune.batch_size = 8;
    let (tr, ty) = images(32, 1);
    let (va, vy) = images(16, 2);
    // A second label: every third image, never a positive of the first.
    let aux: Vec<u8> = ty
        .iter()
        .enumerate()
        .map(|(i, &y)| (y == 0 && i % 3 == 0) as u8)
        .collect();
    let val = Labeled {
        images: va.iter().collect(),
        labels: vy,
        aux: None,
    };
    let run = |cfg: &pirlkit::Config, aux: Option<Vec<u8>>| {
        let train = Labeled {
            images: tr.iter().collect(),
            labels: ty.clone(),
            aux,
        };
        finetune(cfg, &Init::Random, Splits::new(&train, &val, None), 0, None)
    };
    // Off, the labels are not read: the same run with or without them.
    let plain = run(&cfg, None).unwrap().train_losses;
    assert_eq!(run(&cfg, Some(aux.clone())).unwrap().train_losses, plain);

    cfg.finetune.aux_weight = 0.5;
    let a = run(&cfg, Some(aux.clone())).unwrap();
    let b = run(&cfg, Some(aux.clone())).unwrap();
    assert_eq!(
        a.train_losses, b.train_losses,
        "the same seed gave different runs"
    );
    assert_eq!(a.val_scores, b.val_scores);
    assert!(a.train_losses.iter().all(|l| l.is_finite()));
    assert_ne!(
        a.train_losses, plain,
        "the auxiliary target changed nothing"
    );

    let e = run(&cfg, None).unwrap_err().to_string();
    assert!(e.contains("finetune.aux_weight"), "{e}");
    let e = run(&cfg, Some(vec![0; aux.len()])).unwrap_err().to_string();
    assert!(e.contains("both classes"), "{e}");
    let e = run(&cfg, Some(vec![0, 1])).unwrap_err().to_string();
    assert!(e.contains("2 auxiliary labels for 32"), "{e}");
}

#[test]
fn the_auxiliary_weight_is_keyed_only_when_on_and_checked() {
    let mut ft = pirlkit::config::FinetuneConfig::default();
    let off = serde_json::to_value(&ft).unwrap();
    assert!(
        off.get("aux_weight").is_none(),
        "aux_weight = 0 changed the run keys: {off}"
    );
    ft.aux_weight = 0.5;
    assert_eq!(serde_json::to_value(&ft).unwrap()["aux_weight"], 0.5);
    ft.aux_weight = f64::NAN;
    let e = ft.check().unwrap_err();
    assert!(e.contains("finetune.aux_weight"), "{e}");
}
