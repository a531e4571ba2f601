//! `pirlkit bench --profile`: the kernel timers record under their keys
//! when on, and nothing when off. (One test: the switch is process-wide.)

use candle_core::{Device, Tensor, Var};
use pirlkit::ops::{MaxPool2d, conv2d, profile};

fn step() {
    let x = Var::from_tensor(
        &Tensor::ones((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let w = Var::from_tensor(
        &Tensor::ones((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let y = conv2d(x.as_tensor(), w.as_tensor(), 1, 1).unwrap();
    let y = MaxPool2d::new(3, 2, 1).forward(&y).unwrap();
    y.sum_all().unwrap().backward().unwrap();
}

#[test]
fn timers_record_only_when_on() {
    profile::enable(false);
    step();
    assert!(profile::take().is_empty(), "timers recorded while off");

    profile::enable(true);
    step();
    step();
    let t = profile::take();
    profile::enable(false);
    let keys: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "conv forward",
        "conv forward 2x3x8x8 -> 4, 3x3/1",
        "conv backward",
        "conv backward 2x3x8x8 -> 4, 3x3/1",
        "max-pool forward",
        "max-pool backward",
    ] {
        assert!(keys.contains(&k), "no {k:?} in {keys:?}");
    }
    assert!(t.iter().all(|(_, v)| *v > 0.0), "{t:?}");
    let get = |k: &str| t.iter().find(|(n, _)| n == k).unwrap().1;
    let (conv, shape) = (get("conv forward"), get("conv forward 2x3x8x8 -> 4, 3x3/1"));
    assert!(
        shape <= conv,
        "one shape's time {shape} above the conv total {conv}"
    );
    assert!(profile::take().is_empty(), "take() does not clear");
}
