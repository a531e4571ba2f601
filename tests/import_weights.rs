//! `import-weights --from keras-resnet50`: a tiny fake TF.js Keras ResNet
//! (1 block per stage, a few channels, deterministic values, split across
//! shards and groups) is imported, and the folds are checked against values
//! computed here independently.

use std::collections::HashMap;
use std::path::Path;

use pirlkit::import::{Source, import};

const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];
const CAFFE_RGB: [f64; 3] = [123.68, 116.779, 103.939];

/// Keras tensors of the fake model, in manifest order.
struct Fake {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Fake {
    fn new() -> Self {
        let mut f = Fake {
            tensors: Vec::new(),
        };
        // Stem: 3 -> 4 channels, a non-square 3x2 kernel (catches kh/kw mix-ups).
        f.conv("conv1", [3, 2, 3, 4]);
        f.bn("bn_conv1", 4);
        let mut cin = 4;
        for stage in 2..=5 {
            let (w, cout) = (2, 4 + stage);
            let p = format!("{stage}a");
            f.conv(&format!("res{p}_branch2a"), [1, 1, cin, w]);
            f.bn(&format!("bn{p}_branch2a"), w);
            f.conv(&format!("res{p}_branch2b"), [3, 2, w, w]);
            f.bn(&format!("bn{p}_branch2b"), w);
            f.conv(&format!("res{p}_branch2c"), [1, 1, w, cout]);
            f.bn(&format!("bn{p}_branch2c"), cout);
            f.conv(&format!("res{p}_branch1"), [1, 1, cin, cout]);
            f.bn(&format!("bn{p}_branch1"), cout);
            cin = cout;
        }
        f.add("fc1000/kernel", vec![cin, 5], 0.1);
        f.add("fc1000/bias", vec![5], 0.0);
        f
    }
    /// Deterministic, distinct values: a small LCG per tensor index.
    fn add(&mut self, name: &str, shape: Vec<usize>, offset: f32) {
        let n: usize = shape.iter().product();
        let mut s: u32 = 2_654_435_761u32.wrapping_mul(self.tensors.len() as u32 + 1);
        let data = (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                offset + ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            })
            .collect();
        self.tensors.push((name.to_string(), shape, data));
    }
    fn conv(&mut self, name: &str, shape: [usize; 4]) {
        self.add(&format!("{name}/kernel"), shape.to_vec(), 0.0);
        self.add(&format!("{name}/bias"), vec![shape[3]], 0.0);
    }
    fn bn(&mut self, name: &str, c: usize) {
        self.add(&format!("{name}/gamma"), vec![c], 1.0);
        self.add(&format!("{name}/beta"), vec![c], 0.0);
        self.add(&format!("{name}/moving_mean"), vec![c], 0.0);
        self.add(&format!("{name}/moving_variance"), vec![c], 1.0);
    }
    fn get(&self, name: &str) -> (&[usize], &[f32]) {
        let (_, s, d) = self
            .tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no fake tensor {name}"));
        (s, d)
    }

    /// Writes model.json + shards: group 1 = everything but the classifier,
    /// split unevenly (mid-tensor) across 2 shards; group 2 = the classifier.
    fn write(&self, dir: &Path) {
        let entry = |(n, s, _): &(String, Vec<usize>, Vec<f32>)| serde_json::json!({"name": n, "shape": s, "dtype": "float32"});
        let bytes = |ts: &[(String, Vec<usize>, Vec<f32>)]| -> Vec<u8> {
            ts.iter()
                .flat_map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()))
                .collect()
        };
        let n1 = self.tensors.len() - 2;
        let (g1, g2) = self.tensors.split_at(n1);
        let b1 = bytes(g1);
        let cut = b1.len() / 2 + 3;
        std::fs::write(dir.join("group1-shard1of2.bin"), &b1[..cut]).unwrap();
        std::fs::write(dir.join("group1-shard2of2.bin"), &b1[cut..]).unwrap();
        std::fs::write(dir.join("group2-shard1of1.bin"), bytes(g2)).unwrap();
        let conv = |name: &str, s: u64| serde_json::json!({"class_name": "Conv2D", "config": {"name": name, "strides": [s, s]}});
        let model = serde_json::json!({
            "format": "layers-model",
            "generatedBy": "test",
            "modelTopology": {"model_config": {"class_name": "Model", "config": {"layers": [
                conv("conv1", 2),
                conv("res3a_branch2a", 2),
                conv("res3a_branch2b", 1),
                {"class_name": "BatchNormalization",
                 "config": {"name": "bn3a_branch2b", "epsilon": 2e-3}},
            ]}}},
            "weightsManifest": [
                {"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
                 "weights": g1.iter().map(entry).collect::<Vec<_>>()},
                {"paths": ["group2-shard1of1.bin"],
                 "weights": g2.iter().map(entry).collect::<Vec<_>>()},
            ],
        });
        std::fs::write(
            dir.join("model.json"),
            serde_json::to_vec_pretty(&model).unwrap(),
        )
        .unwrap();
    }
}

fn load(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(k, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k, (v.shape().to_vec(), d))
        })
        .collect()
}

/// Index of [a, b, c, d] in a row-major 4-d shape.
fn at(shape: &[usize], i: [usize; 4]) -> usize {
    ((i[0] * shape[1] + i[1]) * shape[2] + i[2]) * shape[3] + i[3]
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * (1.0 + b.abs()),
        "{what}: {a} vs {b} (|d| = {})",
        (a - b).abs()
    );
}

fn imported() -> (
    tempfile::TempDir,
    Fake,
    HashMap<String, (Vec<usize>, Vec<f32>)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let src = dir.path().join("tfjs");
    std::fs::create_dir(&src).unwrap();
    fake.write(&src);
    let out = dir.path().join("out/w.safetensors");
    let s = import(Source::KerasResnet50, &src, &out).unwrap();
    assert_eq!(s.blocks, vec![1, 1, 1, 1]);
    assert_eq!(s.input_tensors, fake.tensors.len());
    // 17 convs' BNs x 5 + 17 conv weights + fc (2)
    assert_eq!(s.tensors, 17 * 5 + 17 + 2);
    assert!(s.has_fc);
    assert_eq!(s.stride_in_1x1, Some(true));
    assert!(s.report().contains("model.stride_in_1x1 = true"));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(s.bytes, bytes.len());
    let t = load(&out);
    (dir, fake, t)
}

#[test]
fn names_shapes_and_candle_load() {
    let (dir, _fake, t) = imported();
    let out = dir.path().join("out/w.safetensors");
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.conv3.weight",
        "layer1.0.bn3.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer4.0.conv2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(t.contains_key(name), "missing {name}");
    }
    assert_eq!(t["conv1.weight"].0, vec![4, 3, 3, 2]);
    assert_eq!(t["layer2.0.conv2.weight"].0, vec![2, 2, 3, 2]);
    assert_eq!(t["layer4.0.conv3.weight"].0, vec![9, 2, 1, 1]);
    assert_eq!(t["fc.weight"].0, vec![5, 9]);
    // What finetune's load_encoder reads: candle's loader, num_batches_tracked i64.
    let c = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        c["bn1.num_batches_tracked"].dtype(),
        candle_core::DType::I64
    );
    assert_eq!(c["layer3.0.bn2.weight"].dims(), &[2]);
    let meta = {
        let bytes = std::fs::read(&out).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        m.metadata().clone().unwrap()
    };
    assert!(meta["note"].contains("stride_in_1x1"));
    assert!(meta["preprocessing"].contains("0.485"));
}

#[test]
fn transposition_and_bn_folds() {
    let (_dir, fake, t) = imported();
    // HWIO -> OIHW on a non-square kernel.
    let (ks, k) = fake.get("res3a_branch2b/kernel");
    let (ts, w) = &t["layer2.0.conv2.weight"];
    for (y, x, i, o) in [(2, 1, 0, 1), (1, 0, 1, 0), (0, 1, 1, 1)] {
        assert_eq!(w[at(ts, [o, i, y, x])], k[at(ks, [y, x, i, o])]);
    }
    // Dense (in, out) -> (out, in).
    let (_, fk) = fake.get("fc1000/kernel");
    assert_eq!(t["fc.weight"].1[3 * 9 + 7], fk[7 * 5 + 3]);
    // Conv bias into the running mean; eps 1e-3 -> 1e-5 in the variance.
    let (_, bias) = fake.get("res2a_branch2a/bias");
    let (_, mm) = fake.get("bn2a_branch2a/moving_mean");
    let (_, mv) = fake.get("bn2a_branch2a/moving_variance");
    let (_, g) = fake.get("bn2a_branch2a/gamma");
    for c in 0..2 {
        assert_eq!(t["layer1.0.bn1.running_mean"].1[c], mm[c] - bias[c]);
        close(
            t["layer1.0.bn1.running_var"].1[c] as f64,
            mv[c] as f64 + 1e-3 - 1e-5,
            1e-7,
            "var",
        );
        assert_eq!(t["layer1.0.bn1.weight"].1[c], g[c]);
    }
    // A layer whose epsilon the topology gives (2e-3).
    let (_, mv) = fake.get("bn3a_branch2b/moving_variance");
    close(
        t["layer2.0.bn2.running_var"].1[1] as f64,
        mv[1] as f64 + 2e-3 - 1e-5,
        1e-7,
        "var (topology eps)",
    );
    // The downsample branch too.
    let (_, bias) = fake.get("res5a_branch1/bias");
    let (_, mm) = fake.get("bn5a_branch1/moving_mean");
    assert_eq!(
        t["layer4.0.downsample.1.running_mean"].1[8],
        mm[8] - bias[8]
    );
}

#[test]
fn caffe_preprocessing_fold_into_conv1() {
    let (_dir, fake, t) = imported();
    let (ks, k) = fake.get("conv1/kernel"); // [3, 2, 3 (BGR), 4]
    let (_, b) = fake.get("conv1/bias");
    let (_, mm) = fake.get("bn_conv1/moving_mean");
    let (ws, w) = &t["conv1.weight"];
    // RGB channel c = Keras (BGR) channel 2 - c, scaled by 255 * std[c].
    for o in 0..4 {
        for (y, x) in [(0, 0), (2, 1), (1, 1)] {
            for c in 0..3 {
                let want = k[at(ks, [y, x, 2 - c, o])] as f64 * 255.0 * STD[c];
                close(w[at(ws, [o, c, y, x])] as f64, want, 1e-6, "conv1 weight");
            }
        }
        // bias(+ caffe offset of a torchvision 0) into bn1's running mean.
        let mut z = b[o] as f64;
        for y in 0..3 {
            for x in 0..2 {
                for c in 0..3 {
                    z += k[at(ks, [y, x, 2 - c, o])] as f64 * (255.0 * MEAN[c] - CAFFE_RGB[c]);
                }
            }
        }
        close(
            t["bn1.running_mean"].1[o] as f64,
            mm[o] as f64 - z,
            1e-5,
            "bn1 mean",
        );
    }
    // Whole stem on one patch: Keras (caffe input, eps 1e-3) == torchvision
    // (normalised RGB input, eps 1e-5), after BatchNorm.
    let (_, g) = fake.get("bn_conv1/gamma");
    let (_, be) = fake.get("bn_conv1/beta");
    let (_, mv) = fake.get("bn_conv1/moving_variance");
    let rgb = |y: usize, x: usize, c: usize| ((y * 37 + x * 11 + c * 101) % 256) as f64;
    for o in 0..4 {
        let mut zk = b[o] as f64;
        let mut zt = 0f64;
        for y in 0..3 {
            for x in 0..2 {
                for cb in 0..3 {
                    let c = 2 - cb; // BGR channel cb is RGB channel c
                    zk += k[at(ks, [y, x, cb, o])] as f64 * (rgb(y, x, c) - CAFFE_RGB[c]);
                }
                for c in 0..3 {
                    let tv = (rgb(y, x, c) / 255.0 - MEAN[c]) / STD[c];
                    zt += w[at(ws, [o, c, y, x])] as f64 * tv;
                }
            }
        }
        let keras = g[o] as f64 * (zk - mm[o] as f64) / (mv[o] as f64 + 1e-3).sqrt() + be[o] as f64;
        let torch = t["bn1.weight"].1[o] as f64 * (zt - t["bn1.running_mean"].1[o] as f64)
            / (t["bn1.running_var"].1[o] as f64 + 1e-5).sqrt()
            + t["bn1.bias"].1[o] as f64;
        close(torch, keras, 1e-4, "stem output");
    }
}

fn corrupt(f: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    Fake::new().write(dir.path());
    f(dir.path());
    let out = dir.path().join("w.safetensors");
    let e = import(Source::KerasResnet50, dir.path(), &out)
        .expect_err("corrupt input imported")
        .to_string();
    assert!(!out.exists(), "output written despite: {e}");
    e
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("model.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn corrupt_inputs_name_the_file_or_tensor() {
    // Truncated shard: the size mismatch lists the shards.
    let e = corrupt(|d| {
        let p = d.join("group1-shard2of2.bin");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 8]).unwrap();
    });
    assert!(
        e.contains("group1-shard2of2.bin") && e.contains("bytes"),
        "{e}"
    );
    // Missing shard.
    let e = corrupt(|d| std::fs::remove_file(d.join("group2-shard1of1.bin")).unwrap());
    assert!(
        e.contains("group2-shard1of1.bin") && e.contains("missing"),
        "{e}"
    );
    // A tensor renamed: the expected one is missing.
    let e = corrupt(|d| {
        edit_json(d, |v| {
            v["weightsManifest"][0]["weights"][20]["name"] = "renamed/kernel".into()
        })
    });
    let (n, _, _) = &Fake::new().tensors[20];
    assert!(e.contains(&format!("no tensor {n}")), "{e}");
    // A leftover tensor (same bytes, unknown name at the end of group 2).
    let e = corrupt(|d| {
        let n = Fake::new().tensors.last().unwrap().0.clone();
        edit_json(d, |v| {
            let w = &mut v["weightsManifest"][1]["weights"];
            let last = w.as_array().unwrap().len() - 1;
            assert_eq!(w[last]["name"], n.as_str());
            w[last]["name"] = "extra_head/bias".into();
            // fc1000/bias is now missing, so give the classifier none at all:
            w[last - 1]["name"] = "extra_head/kernel".into();
        })
    });
    assert!(
        e.contains("extra_head/bias")
            && e.contains("extra_head/kernel")
            && e.contains("not converted"),
        "{e}"
    );
    // Unexpected dtype.
    let e = corrupt(|d| {
        edit_json(d, |v| {
            v["weightsManifest"][0]["weights"][1]["dtype"] = "int32".into()
        })
    });
    assert!(e.contains("conv1/bias") && e.contains("int32"), "{e}");
    // No model.json at all.
    let e = corrupt(|d| std::fs::remove_file(d.join("model.json")).unwrap());
    assert!(e.contains("model.json"), "{e}");
}

#[test]
fn cli_prints_summary_and_sha256() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    Fake::new().write(dir.path());
    let out = dir.path().join("w.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pirlkit"))
        .args(["import-weights", "--from", "keras-resnet50"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&out).unwrap()));
    assert!(stdout.contains(&format!("sha256 {sha}")), "{stdout}");
    assert!(stdout.contains("104 tensors"), "{stdout}");
    assert!(stdout.contains("stride_in_1x1 = true"), "{stdout}");
}

#[test]
fn output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    Fake::new().write(dir.path());
    let (a, b) = (dir.path().join("a.st"), dir.path().join("b.st"));
    let sa = import(Source::KerasResnet50, dir.path(), &a).unwrap();
    let sb = import(Source::KerasResnet50, dir.path(), &b).unwrap();
    assert_eq!(sa.sha256, sb.sha256);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
