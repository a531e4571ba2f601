//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data/isic2017` beside the checkout, if present. Without it the
/// calling test is skipped with a message, except under `CI=true`, where a
/// missing data set fails the test so CI never silently skips it.
pub fn isic_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/isic2017");
    if p.join("ISIC-2017_Training_Part3_GroundTruth.csv").is_file() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but {} is missing: the ISIC 2017 data must be beside the checkout",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (tests that need the ISIC 2017 data are skipped outside CI)",
        p.display()
    );
    None
}

/// The pirlkit binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pirlkit"))
}

/// `pirlkit reproduce PROTOCOL` into `reports`, with its own image cache.
pub fn run_protocol(
    protocol: &std::path::Path,
    reports: &std::path::Path,
    cache: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("reproduce")
        .arg(protocol)
        .args(["--no-progress", "--reports"])
        .arg(reports)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap()
}

/// A baseline JPEG built by hand: `nc` components, no subsampling, every
/// 8x8 block flat (DC only) with component `c` of block `(bx, by)` at
/// `val(bx, by, c)`; an Adobe APP14 marker with `adobe` as its colour
/// transform (0 with four components: CMYK).
pub fn flat_jpeg(
    w: u16,
    h: u16,
    nc: usize,
    adobe: Option<u8>,
    val: impl Fn(usize, usize, usize) -> u8,
) -> Vec<u8> {
    fn seg(o: &mut Vec<u8>, m: u8, body: &[u8]) {
        o.extend([0xFF, m]);
        o.extend(((body.len() + 2) as u16).to_be_bytes());
        o.extend(body);
    }
    let mut o = vec![0xFF, 0xD8];
    if let Some(t) = adobe {
        seg(
            &mut o,
            0xEE,
            &[b'A', b'd', b'o', b'b', b'e', 0, 100, 0, 0, 0, 0, t],
        );
    }
    let mut dqt = vec![0u8];
    dqt.extend([1u8; 64]);
    seg(&mut o, 0xDB, &dqt);
    let mut sof = vec![8u8];
    sof.extend(h.to_be_bytes());
    sof.extend(w.to_be_bytes());
    sof.push(nc as u8);
    for c in 0..nc {
        sof.extend([c as u8 + 1, 0x11, 0]);
    }
    seg(&mut o, 0xC0, &sof);
    let dc_counts = [0u8, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    let mut dht = vec![0x00];
    dht.extend(dc_counts);
    dht.extend(0u8..12);
    seg(&mut o, 0xC4, &dht);
    let mut dht = vec![0x10, 1];
    dht.extend([0u8; 15]);
    dht.push(0x00); // the one AC symbol: end of block, code "0"
    seg(&mut o, 0xC4, &dht);
    let mut sos = vec![nc as u8];
    for c in 0..nc {
        sos.extend([c as u8 + 1, 0x00]);
    }
    sos.extend([0, 63, 0]);
    seg(&mut o, 0xDA, &sos);
    // Canonical DC codes, by category.
    let mut codes = Vec::new();
    let mut code = 0u32;
    for (len, &count) in dc_counts.iter().enumerate() {
        for _ in 0..count {
            codes.push((code, len as u32 + 1));
            code += 1;
        }
        code <<= 1;
    }
    let (mut acc, mut nbits) = (0u32, 0u32);
    let mut put = |o: &mut Vec<u8>, bits: u32, n: u32| {
        for i in (0..n).rev() {
            acc = (acc << 1) | ((bits >> i) & 1);
            nbits += 1;
            if nbits == 8 {
                o.push(acc as u8);
                if acc == 0xFF {
                    o.push(0);
                }
                acc = 0;
                nbits = 0;
            }
        }
    };
    let mut prev = vec![0i32; nc];
    for by in 0..(h as usize).div_ceil(8) {
        for bx in 0..(w as usize).div_ceil(8) {
            for c in 0..nc {
                let dc = (val(bx, by, c) as i32 - 128) * 8;
                let diff = dc - prev[c];
                prev[c] = dc;
                let cat = 32 - diff.unsigned_abs().leading_zeros();
                let (cd, len) = codes[cat as usize];
                put(&mut o, cd, len);
                if cat > 0 {
                    let v = if diff > 0 {
                        diff
                    } else {
                        diff + (1 << cat) - 1
                    };
                    put(&mut o, v as u32, cat);
                }
                put(&mut o, 0, 1);
            }
        }
    }
    put(&mut o, 0x7F, 7); // pad with ones
    o.extend([0xFF, 0xD9]);
    o
}

/// PNG encoding of any image buffer.
pub fn png_of<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Vec<u8>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// JPEG encoding at `quality`.
pub fn jpeg_of(img: &image::DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

/// `n` synthetic lesions at 32 px from `seed`'s stream, labelled by their
/// ABCD score, the first two forced to 1 and 0 so both classes are present.
#[allow(dead_code)]
pub fn labelled_lesions(n: usize, seed: u64) -> (Vec<pirlkit::data::RgbImage>, Vec<u8>) {
    let (imgs, mut y): (Vec<pirlkit::data::RgbImage>, Vec<u8>) = (0..n)
        .map(|i| {
            let mut rng = pirlkit::rng::stream(seed, "labelled-lesions", i as u64, 0);
            let (data, abcd) = pirlkit::data::synthetic::render(32, &mut rng);
            (
                pirlkit::data::RgbImage { size: 32, data },
                (abcd.tds() > 5.45) as u8,
            )
        })
        .unzip();
    y[0] = 1;
    y[1] = 0;
    (imgs, y)
}

/// A fine-tuning small enough for a test: the tiny preset with 3 epochs of
/// batch 8 and the last epoch selected, on labelled lesions (32 training,
/// 24 validation, 24 test images), from random init with seed 0.
pub struct SmallFinetune {
    pub cfg: pirlkit::Config,
    train: (Vec<pirlkit::data::RgbImage>, Vec<u8>),
    val: (Vec<pirlkit::data::RgbImage>, Vec<u8>),
    test: (Vec<pirlkit::data::RgbImage>, Vec<u8>),
}

impl SmallFinetune {
    pub fn new() -> Self {
        let mut cfg = pirlkit::Config::preset(pirlkit::Preset::Tiny);
        cfg.finetune.epochs = 3;
        cfg.finetune.batch_size = 8;
        cfg.finetune.selection = pirlkit::config::Selection::Last;
        Self {
            cfg,
            train: labelled_lesions(32, 1),
            val: labelled_lesions(24, 2),
            test: labelled_lesions(24, 3),
        }
    }

    /// Fine-tunes with `cfg`, checkpointed in `ck` (identity "id") if given.
    pub fn run(
        &self,
        cfg: &pirlkit::Config,
        ck: Option<&std::path::Path>,
    ) -> pirlkit::Result<pirlkit::train::finetune::FinetuneResult> {
        use pirlkit::train::finetune::{Init, Labeled, Splits, finetune};
        fn lab((i, y): &(Vec<pirlkit::data::RgbImage>, Vec<u8>)) -> Labeled<'_> {
            Labeled {
                images: i.iter().collect(),
                labels: y.clone(),
                aux: None,
            }
        }
        let (train, val, test) = (lab(&self.train), lab(&self.val), lab(&self.test));
        let data = Splits::new(&train, &val, Some(&test));
        finetune(cfg, &Init::Random, data, 0, ck.map(|c| (c, "id")))
    }

    /// A run with `cfg` in `ck` stopped by the process-wide stop flag after
    /// its first epoch (an error), the flag cleared again.
    pub fn stopped_after_one_epoch(&self, cfg: &pirlkit::Config, ck: &std::path::Path) {
        use std::sync::atomic::Ordering;
        pirlkit::train::pretrain::STOP.store(true, Ordering::SeqCst);
        let stopped = self.run(cfg, Some(ck));
        pirlkit::train::pretrain::STOP.store(false, Ordering::SeqCst);
        assert!(
            stopped.is_err(),
            "the stop flag ends the run after its first epoch"
        );
    }
}

/// A `finetune` option `key` is left out of the saved config (and so of
/// the run keys) at its default, written as the value `on` sets and
/// returns, and refused by the check, naming it, when `bad` sets it.
pub fn keyed_only_when_on(
    key: &str,
    on: impl Fn(&mut pirlkit::config::FinetuneConfig) -> serde_json::Value,
    bad: impl Fn(&mut pirlkit::config::FinetuneConfig),
) {
    let mut ft = pirlkit::config::FinetuneConfig::default();
    let off = serde_json::to_value(&ft).unwrap();
    assert!(
        off.get(key).is_none(),
        "{key} at its default changed the run keys: {off}"
    );
    let set = on(&mut ft);
    assert_eq!(serde_json::to_value(&ft).unwrap()[key], set, "{key}");
    bad(&mut ft);
    let e = ft.check().unwrap_err();
    assert!(e.contains(&format!("finetune.{key}")), "{e}");
}
