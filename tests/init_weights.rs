//! The third init: an encoder from a safetensors file in torchvision naming
//! (`conv1.weight`, `layer1.0.bn1.running_mean`, ..., `fc.*` ignored), as an
//! ImageNet-pretrained ResNet a user downloaded would be.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pirlkit::model::{Arch, ResNet, ResNetConfig, seeded_init};
use pirlkit::train::finetune::{Init, load_encoder};

fn cfg() -> ResNetConfig {
    ResNetConfig {
        arch: Arch::Resnet18,
        width: 0.125,
        bn_momentum: 0.1,
        ..Default::default()
    }
}

/// A torchvision-named file with distinct values, plus a classifier `fc`.
fn torchvision_file(dir: &std::path::Path) -> (std::path::PathBuf, HashMap<String, Tensor>) {
    let vm = VarMap::new();
    ResNet::new(
        &cfg(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seeded_init(&vm, 77).unwrap();
    let mut tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    // Running statistics that are not the defaults, to see them loaded too.
    tensors.insert(
        "bn1.running_mean".into(),
        Tensor::full(0.25f32, 8, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.join("resnet18-tv.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    (p, tensors)
}

#[test]
fn torchvision_named_weights_load_into_the_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = torchvision_file(tmp.path());
    let vm = VarMap::new();
    let (_, _model) = {
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let enc = ResNet::new(&cfg(), vb.pp("encoder")).unwrap();
        let head = candle_nn::linear(cfg().feature_dim(), 1, vb.pp("classifier")).unwrap();
        (enc, head)
    };
    seeded_init(&vm, 1).unwrap();
    load_encoder(&vm, &Init::Torchvision(path)).unwrap();
    let data = vm.data().lock().unwrap();
    let mut n = 0;
    for (name, var) in data.iter().filter(|(k, _)| k.starts_with("encoder.")) {
        let w = &want[&name["encoder.".len()..]];
        let a = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name}");
        n += 1;
    }
    assert_eq!(n, want.len() - 2); // everything but fc.*
    assert_eq!(
        data["encoder.bn1.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()[0],
        0.25
    );
}

#[test]
fn a_missing_or_misshapen_tensor_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut tensors) = torchvision_file(tmp.path());
    tensors.remove("layer2.0.conv1.weight");
    let p = tmp.path().join("incomplete.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let vm = VarMap::new();
    ResNet::new(
        &cfg(),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("encoder"),
    )
    .unwrap();
    let e = load_encoder(&vm, &Init::Torchvision(p))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer2.0.conv1.weight") && e.contains("incomplete.safetensors"),
        "{e}"
    );

    let (_, mut tensors) = torchvision_file(tmp.path());
    tensors.insert(
        "conv1.weight".into(),
        Tensor::zeros((8, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = tmp.path().join("wrong.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let e = load_encoder(&vm, &Init::Torchvision(p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
}
