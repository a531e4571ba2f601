//! Reading a TensorFlow.js layers model: `model.json`, its weight manifest
//! and binary shards, and what its topology says (BatchNorm epsilons, conv
//! strides).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::err;
use crate::error::{Result, io};

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
