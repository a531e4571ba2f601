//! A Keras (v1, bottleneck) ResNet's tensors in torchvision naming: the
//! kernels transposed, conv biases, BatchNorm epsilons and Keras' caffe
//! preprocessing folded into the weights (see the parent module).

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    CAFFE_MEAN_RGB, KERAS_BN_EPS, KerasTensor, OutTensor, TORCH_BN_EPS, TORCH_MEAN, TORCH_STD,
    TfjsModel, err,
};
use crate::error::{Error, Result};

/// The tensors of a Keras ResNet in torchvision naming, and the blocks per stage.
pub struct Converted {
    pub tensors: BTreeMap<String, OutTensor>,
    pub blocks: Vec<usize>,
    pub has_fc: bool,
    pub stride_in_1x1: Option<bool>,
}

struct Take<'a> {
    w: BTreeMap<String, KerasTensor>,
    json: &'a Path,
}

impl Take<'_> {
    fn get(&mut self, name: &str, what: &str) -> Result<KerasTensor> {
        self.w
            .remove(name)
            .ok_or_else(|| err(self.json, format!("no tensor {name} ({what})")))
    }
    fn shape_err(&self, name: &str, shape: &[usize], want: &str) -> Error {
        err(
            self.json,
            format!("tensor {name} has shape {shape:?}, expected {want}"),
        )
    }
    /// A conv's kernel (HWIO) and bias; returns (OIHW kernel, shape, bias).
    fn conv(&mut self, layer: &str) -> Result<(Vec<f32>, [usize; 4], Vec<f32>)> {
        let kn = format!("{layer}/kernel");
        let k = self.get(&kn, "conv kernel")?;
        let &[kh, kw, ci, co] = k.shape.as_slice() else {
            return Err(self.shape_err(&kn, &k.shape, "[kh, kw, in, out]"));
        };
        let bn = format!("{layer}/bias");
        let b = self.get(&bn, "conv bias")?;
        if b.shape != [co] {
            return Err(self.shape_err(&bn, &b.shape, &format!("[{co}]")));
        }
        let mut t = vec![0f32; k.data.len()];
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    for o in 0..co {
                        t[((o * ci + i) * kh + y) * kw + x] =
                            k.data[((y * kw + x) * ci + i) * co + o];
                    }
                }
            }
        }
        Ok((t, [co, ci, kh, kw], b.data))
    }
    /// A BatchNorm after a conv with `bias` (f32), folded for eps `eps`.
    fn bn(
        &mut self,
        out: &mut BTreeMap<String, OutTensor>,
        tname: &str,
        layer: &str,
        bias: &[f32],
        eps: f64,
    ) -> Result<()> {
        let c = bias.len();
        let mut p = |suffix: &str| -> Result<Vec<f32>> {
            let n = format!("{layer}/{suffix}");
            let t = self.get(&n, "BatchNorm")?;
            if t.shape != [c] {
                return Err(self.shape_err(&n, &t.shape, &format!("[{c}]")));
            }
            Ok(t.data)
        };
        let gamma = p("gamma")?;
        let beta = p("beta")?;
        let mean = p("moving_mean")?;
        let var = p("moving_variance")?;
        // As numpy does it: f32 arrays, the eps difference rounded to f32.
        let de = (eps - TORCH_BN_EPS) as f32;
        let mean: Vec<f32> = mean.iter().zip(bias).map(|(m, b)| m - b).collect();
        let var: Vec<f32> = var.iter().map(|v| v + de).collect();
        out.insert(format!("{tname}.weight"), OutTensor::f32(vec![c], gamma));
        out.insert(format!("{tname}.bias"), OutTensor::f32(vec![c], beta));
        out.insert(
            format!("{tname}.running_mean"),
            OutTensor::f32(vec![c], mean),
        );
        out.insert(format!("{tname}.running_var"), OutTensor::f32(vec![c], var));
        out.insert(
            format!("{tname}.num_batches_tracked"),
            OutTensor::I64Scalar(0),
        );
        Ok(())
    }
}

/// Parses `res{stage}{letter}_branch...` into (stage, block index).
fn parse_block(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("res")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let stage: usize = digits.parse().ok()?;
    let rest = &rest[digits.len()..];
    let letter = rest.chars().next()?;
    if !letter.is_ascii_lowercase() || !rest[1..].starts_with("_branch") {
        return None;
    }
    Some((stage, (letter as u8 - b'a') as usize))
}

/// Converts Keras ResNet tensors (bottleneck blocks, Keras ResNet50 naming) to
/// torchvision naming, folding biases, BatchNorm eps and the caffe preprocessing.
pub fn convert_keras_resnet(model: TfjsModel, json: &Path) -> Result<Converted> {
    let eps_of = |layer: &str| model.bn_eps.get(layer).copied().unwrap_or(KERAS_BN_EPS);
    let stride_in_1x1 = model.strides.get("res3a_branch2a").map(|s| s.contains(&2));
    let blocks = keras_blocks(&model.tensors, json)?;
    let mut w = Take {
        w: model.tensors,
        json,
    };
    let mut out = BTreeMap::new();

    stem(&mut w, &mut out, eps_of("bn_conv1"))?;

    for (si, &nb) in blocks.iter().enumerate() {
        let stage = si + 2;
        for i in 0..nb {
            let letter = (b'a' + i as u8) as char;
            let t = format!("layer{}.{i}", si + 1);
            for (j, br) in ["a", "b", "c"].iter().enumerate() {
                let cl = format!("res{stage}{letter}_branch2{br}");
                let (k, shape, b) = w.conv(&cl)?;
                out.insert(
                    format!("{t}.conv{}.weight", j + 1),
                    OutTensor::f32(shape.to_vec(), k),
                );
                let bl = format!("bn{stage}{letter}_branch2{br}");
                w.bn(&mut out, &format!("{t}.bn{}", j + 1), &bl, &b, eps_of(&bl))?;
            }
            // The projection shortcut: always in a stage's first block
            // (bottlenecks change the width there), elsewhere if present.
            let dl = format!("res{stage}{letter}_branch1");
            if i == 0 || w.w.contains_key(&format!("{dl}/kernel")) {
                let (k, shape, b) = w.conv(&dl)?;
                out.insert(
                    format!("{t}.downsample.0.weight"),
                    OutTensor::f32(shape.to_vec(), k),
                );
                let bl = format!("bn{stage}{letter}_branch1");
                w.bn(&mut out, &format!("{t}.downsample.1"), &bl, &b, eps_of(&bl))?;
            }
        }
    }

    let has_fc = classifier(&mut w, &mut out)?;
    if !w.w.is_empty() {
        let left: Vec<&String> = w.w.keys().collect();
        return Err(err(
            json,
            format!(
                "{} tensor(s) not converted (unknown to the keras-resnet50 mapping): {}",
                left.len(),
                left.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(Converted {
        tensors: out,
        blocks,
        has_fc,
        stride_in_1x1,
    })
}

/// Blocks per stage of a Keras ResNet, from the `res<stage><block>_...`
/// names present: stages 2, 3, ... and blocks a, b, ... without gaps.
fn keras_blocks(tensors: &BTreeMap<String, KerasTensor>, json: &Path) -> Result<Vec<usize>> {
    // Stages and blocks from the names present.
    let mut present: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for name in tensors.keys() {
        if let Some((s, b)) = parse_block(name) {
            let v = present.entry(s).or_default();
            if !v.contains(&b) {
                v.push(b);
            }
        }
    }
    let mut blocks = Vec::new();
    for (k, (&stage, bs)) in present.iter_mut().enumerate() {
        if stage != k + 2 {
            return Err(err(
                json,
                format!(
                    "stages {:?} (from res<stage>... names): expected 2, 3, ... without gaps",
                    present.keys().collect::<Vec<_>>()
                ),
            ));
        }
        bs.sort();
        if bs.iter().enumerate().any(|(i, &b)| i != b) || bs.len() > 26 {
            let letters: String = bs.iter().map(|&b| (b'a' + b as u8) as char).collect();
            return Err(err(
                json,
                format!("stage res{stage} has blocks {letters:?}: expected a, b, ... without gaps"),
            ));
        }
        blocks.push(bs.len());
    }
    if blocks.is_empty() {
        return Err(err(
            json,
            "no res<stage><block>_branch... tensors: not a Keras ResNet",
        ));
    }
    Ok(blocks)
}

/// The stem conv and its BatchNorm, with the caffe preprocessing (BGR,
/// mean subtraction on 0-255 pixels) folded into torchvision's (RGB,
/// normalised 0-1 pixels), in f64 as the reference does.
fn stem(w: &mut Take, out: &mut BTreeMap<String, OutTensor>, eps: f64) -> Result<()> {
    let (k, [co, ci, kh, kw], b) = w.conv("conv1")?;
    if ci != 3 {
        return Err(err(
            w.json,
            format!("conv1/kernel has {ci} input channels; the caffe fold needs 3"),
        ));
    }
    let d: Vec<f64> = (0..3)
        .map(|c| 255.0 * TORCH_MEAN[c] - CAFFE_MEAN_RGB[c])
        .collect();
    let hw = kh * kw;
    let mut wt = vec![0f32; k.len()];
    let mut bias = vec![0f32; co];
    for o in 0..co {
        let mut acc = 0f64;
        for c in 0..3 {
            // torchvision channel c (RGB) is Keras channel 2 - c (BGR).
            let src = &k[(o * 3 + (2 - c)) * hw..][..hw];
            let dst = &mut wt[(o * 3 + c) * hw..][..hw];
            for (dv, &sv) in dst.iter_mut().zip(src) {
                let v = sv as f64;
                acc += v * d[c];
                *dv = (v * (255.0 * TORCH_STD[c])) as f32;
            }
        }
        bias[o] = (b[o] as f64 + acc) as f32;
    }
    out.insert(
        "conv1.weight".to_string(),
        OutTensor::f32(vec![co, 3, kh, kw], wt),
    );
    w.bn(out, "bn1", "bn_conv1", &bias, eps)
}

/// The classifier (`fc1000`), if the model has one: whether it had.
fn classifier(w: &mut Take, out: &mut BTreeMap<String, OutTensor>) -> Result<bool> {
    let has_fc = w.w.contains_key("fc1000/kernel") || w.w.contains_key("fc1000/bias");
    if has_fc {
        let kn = "fc1000/kernel";
        let k = w.get(kn, "classifier")?;
        let &[fi, fo] = k.shape.as_slice() else {
            return Err(w.shape_err(kn, &k.shape, "[in, out]"));
        };
        let b = w.get("fc1000/bias", "classifier")?;
        if b.shape != [fo] {
            return Err(w.shape_err("fc1000/bias", &b.shape, &format!("[{fo}]")));
        }
        let mut t = vec![0f32; fi * fo];
        for i in 0..fi {
            for o in 0..fo {
                t[o * fi + i] = k.data[i * fo + o];
            }
        }
        out.insert("fc.weight".into(), OutTensor::f32(vec![fo, fi], t));
        out.insert("fc.bias".into(), OutTensor::f32(vec![fo], b.data));
    }
    Ok(has_fc)
}
