//! Linear probing, then fine-tuning (finetune.head_epochs): during the head
//! epochs the encoder does not move (weights and BatchNorm statistics), the
//! head does; after them the encoder trains too. Its own test binary: it
//! uses the process-wide stop flag to end the run after the first epoch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use candle_core::{Device, Tensor};
use pirlkit::data::RgbImage;
use pirlkit::train::finetune::{Init, Labeled, Splits, finetune};

fn images(n: usize, seed: u64) -> (Vec<RgbImage>, Vec<u8>) {
    (0..n)
        .map(|i| {
            let mut rng = pirlkit::rng::stream(seed, "lpft-test", i as u64, 0);
            let (data, abcd) = pirlkit::data::synthetic::render(32, &mut rng);
            (RgbImage { size: 32, data }, (abcd.tds() > 5.45) as u8)
        })
        .unzip()
}

fn tensors(dir: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
    candle_core::safetensors::load(
        dir.join(latest.trim()).join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
    .collect()
}

#[test]
fn head_epochs_train_the_head_alone_then_the_encoder() {
    let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
    cfg.finetune.epochs = 2;
    cfg.finetune.head_epochs = 1;
    cfg.finetune.batch_size = 8;
    let (tr, ty) = images(48, 1);
    let (va, vy) = images(24, 2);
    let (mut ty, mut vy) = (ty, vy);
    ty[0] = 1 - ty[0]; // both classes for sure
    ty[1] = 1 - ty[0];
    vy[0] = 1;
    vy[1] = 0;
    fn lab<'a>(i: &'a [RgbImage], y: &[u8]) -> Labeled<'a> {
        Labeled {
            images: i.iter().collect(),
            labels: y.to_vec(),
            aux: None,
        }
    }
    let (train, val) = (lab(&tr, &ty), lab(&va, &vy));
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ft");
    // The seeded random encoder the run starts from.
    let (vm0, _) =
        pirlkit::model::build_encoder(&cfg.model, 0, candle_core::DType::F32, &Device::Cpu)
            .unwrap();
    let init: HashMap<String, Vec<f32>> = vm0
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();

    // Stop after the first (head-only) epoch.
    pirlkit::train::pretrain::STOP.store(true, Ordering::SeqCst);
    let r = finetune(
        &cfg,
        &Init::Random,
        Splits::new(&train, &val, None),
        0,
        Some((&ck, "id")),
    );
    pirlkit::train::pretrain::STOP.store(false, Ordering::SeqCst);
    assert!(
        r.is_err(),
        "the stop flag ends the run after its first epoch"
    );
    let after1 = tensors(&ck);
    let enc_same = init.iter().all(|(k, v)| {
        after1[k]
            .iter()
            .zip(v)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    });
    assert!(
        enc_same,
        "the encoder (weights and BatchNorm statistics) moved during the head epoch"
    );
    assert!(after1.keys().any(|k| k.starts_with("head.")));

    // The second epoch trains the encoder too.
    finetune(
        &cfg,
        &Init::Random,
        Splits::new(&train, &val, None),
        0,
        Some((&ck, "id")),
    )
    .unwrap();
    let after2 = tensors(&ck);
    let moved = init
        .iter()
        .filter(|(k, _)| k.ends_with("conv1.weight"))
        .any(|(k, v)| after2[k] != *v);
    assert!(moved, "the encoder did not train after the head epochs");
    assert_ne!(after1["head.weight"], after2["head.weight"]);
}
