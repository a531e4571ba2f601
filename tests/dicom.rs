//! DICOM in: fixtures are built here with dicom-rs from real ISIC JPEG pixels
//! (uncompressed RGB, JPEG baseline encapsulated, MONOCHROME2 8/16-bit,
//! multi-frame, no pixel data), decoded through `decode_dicom` and through
//! the image cache; patient identifiers must reach no error, cache file name
//! or log line.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pirlkit::data::dicom::{decode_dicom, is_dicom};
use pirlkit::data::{ImageCache, Sample, Split};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const VL_PHOTOGRAPHIC: &str = "1.2.840.10008.5.1.4.1.1.77.1.4";
const NAME: &str = "DOE^JOHN";
const PID: &str = "SECRET123";

// ---- log capture: every log line of this test binary, at every level ----

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .init();
        tracing::info!("log capture on");
        buf
    })
}

// ---- fixtures ----

struct Src {
    jpeg: Vec<u8>,
    rgb: image::RgbImage,
}

fn sources() -> Option<Vec<Src>> {
    let dir = common::isic_dir()?.join("ISIC-2017_Training_Data");
    Some(
        ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
            .iter()
            .map(|id| {
                let p = dir.join(format!("{id}.jpg"));
                let jpeg = std::fs::read(&p).unwrap();
                let rgb = image::load_from_memory(&jpeg).unwrap().to_rgb8();
                Src { jpeg, rgb }
            })
            .collect(),
    )
}

fn el(tag: dicom_core::Tag, vr: VR, v: PrimitiveValue) -> InMemElement {
    DataElement::new(tag, vr, v)
}

/// The attributes every fixture has, with the patient identifiers.
fn base(w: u32, h: u32, spp: u16, pi: &str, bits: u16) -> Vec<InMemElement> {
    vec![
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(VL_PHOTOGRAPHIC),
        ),
        el(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.1234567890"),
        ),
        el(tags::MODALITY, VR::CS, PrimitiveValue::from("XC")),
        el(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from(NAME)),
        el(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(PID)),
        el(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            PrimitiveValue::from("19700101"),
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(spp)),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(pi),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(h as u16)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(w as u16)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(bits - 1)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
    ]
}

fn write(ts: &str, mut elements: Vec<InMemElement>, extra: Vec<InMemElement>) -> Vec<u8> {
    elements.extend(extra);
    let obj = InMemDicomObject::from_element_iter(elements);
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(VL_PHOTOGRAPHIC)
                .media_storage_sop_instance_uid("2.25.1234567890")
                .transfer_syntax(ts),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

/// (a) uncompressed RGB, explicit VR little endian; `frames` stacked.
fn uncompressed_rgb(frames: &[&image::RgbImage]) -> Vec<u8> {
    let (w, h) = frames[0].dimensions();
    let mut px = Vec::new();
    for f in frames {
        px.extend_from_slice(f.as_raw());
    }
    let mut extra = vec![el(
        tags::PLANAR_CONFIGURATION,
        VR::US,
        PrimitiveValue::from(0u16),
    )];
    if frames.len() > 1 {
        extra.push(el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames.len().to_string()),
        ));
    }
    extra.push(el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(px)));
    write(EXPLICIT_LE, base(w, h, 3, "RGB", 8), extra)
}

/// (b) JPEG baseline: each JPEG file is one frame's single fragment.
fn jpeg_baseline(jpegs: &[&[u8]], w: u32, h: u32) -> Vec<u8> {
    let frags: Vec<Vec<u8>> = jpegs.iter().map(|j| j.to_vec()).collect();
    jpeg_fragments(frags, Vec::new(), jpegs.len(), w, h)
}

/// JPEG baseline with the fragments and basic offset table given.
fn jpeg_fragments(
    frags: Vec<Vec<u8>>,
    offsets: Vec<u32>,
    frames: usize,
    w: u32,
    h: u32,
) -> Vec<u8> {
    let mut extra = vec![el(
        tags::PLANAR_CONFIGURATION,
        VR::US,
        PrimitiveValue::from(0u16),
    )];
    if frames > 1 {
        extra.push(el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames.to_string()),
        ));
    }
    extra.push(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(offsets, frags)),
    ));
    write(JPEG_BASELINE, base(w, h, 3, "YBR_FULL_422", 8), extra)
}

/// `bytes` cut into `n` even-length fragments.
fn split_even(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut b = bytes.to_vec();
    if b.len() % 2 == 1 {
        b.push(0);
    }
    let step = (b.len() / n + 1) & !1;
    b.chunks(step).map(|c| c.to_vec()).collect()
}

/// (c) MONOCHROME2, 8 or 16 bits.
fn mono(grey: &image::GrayImage, bits: u16) -> Vec<u8> {
    let (w, h) = grey.dimensions();
    let px = if bits == 8 {
        el(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(grey.as_raw().clone()),
        )
    } else {
        let v: Vec<u16> = grey.as_raw().iter().map(|&g| g as u16 * 257).collect();
        el(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(v.into()))
    };
    write(EXPLICIT_LE, base(w, h, 1, "MONOCHROME2", bits), vec![px])
}

fn grey_as_rgb(g: &image::GrayImage) -> image::RgbImage {
    image::RgbImage::from_fn(g.width(), g.height(), |x, y| {
        let v = g.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

fn sample(path: PathBuf) -> Sample {
    let id = path.file_stem().unwrap().to_string_lossy().into_owned();
    Sample {
        group: id.clone(),
        id,
        path,
        label: Some(0),
        aux: None,
        split: Split::Train,
    }
}

fn no_secret(what: &str, s: &str) {
    for secret in [NAME, PID, "DOE", "JOHN", "19700101"] {
        assert!(
            !s.contains(secret),
            "{what} holds the patient identifier {secret:?}: {s}"
        );
    }
}

fn all_names(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.path().is_dir() {
            all_names(&e.path(), out);
        }
    }
}

// ---- tests ----

#[test]
fn uncompressed_rgb_equals_the_jpeg_decode() {
    logs();
    let Some(src) = sources() else { return };
    for s in &src {
        let dcm = uncompressed_rgb(&[&s.rgb]);
        assert!(is_dicom(&dcm));
        assert!(!is_dicom(&s.jpeg));
        let got = decode_dicom(&dcm).unwrap();
        assert_eq!(got.dimensions(), s.rgb.dimensions());
        assert!(
            got == s.rgb,
            "decoded uncompressed DICOM differs from the JPEG's pixels"
        );
    }
}

#[test]
fn jpeg_baseline_encapsulated_equals_the_jpeg_decode() {
    logs();
    let Some(src) = sources() else { return };
    for s in &src {
        let (w, h) = s.rgb.dimensions();
        let dcm = jpeg_baseline(&[&s.jpeg], w, h);
        let got = decode_dicom(&dcm).unwrap();
        assert!(
            got == s.rgb,
            "decoded JPEG-baseline DICOM differs from the JPEG's pixels"
        );
    }
}

#[test]
fn monochrome2_8_and_16_bit_become_grey_rgb() {
    logs();
    let Some(src) = sources() else { return };
    for s in &src {
        let grey = image::DynamicImage::ImageRgb8(s.rgb.clone()).to_luma8();
        let want = grey_as_rgb(&grey);
        assert!(
            decode_dicom(&mono(&grey, 8)).unwrap() == want,
            "MONOCHROME2 8-bit"
        );
        // 16-bit samples g * 257 scale back to exactly g.
        assert!(
            decode_dicom(&mono(&grey, 16)).unwrap() == want,
            "MONOCHROME2 16-bit"
        );
    }
}

#[test]
fn multi_frame_gives_the_first_frame() {
    logs();
    let Some(src) = sources() else { return };
    let (a, b) = (&src[0], &src[1]);
    assert_eq!(a.rgb.dimensions(), b.rgb.dimensions());
    let dcm = uncompressed_rgb(&[&a.rgb, &b.rgb]);
    assert!(
        decode_dicom(&dcm).unwrap() == a.rgb,
        "uncompressed 2-frame: not frame 1"
    );
    let dcm = uncompressed_rgb(&[&b.rgb, &a.rgb]);
    assert!(
        decode_dicom(&dcm).unwrap() == b.rgb,
        "uncompressed 2-frame (swapped): not frame 1"
    );
    let (w, h) = a.rgb.dimensions();
    let dcm = jpeg_baseline(&[&a.jpeg, &b.jpeg], w, h);
    assert!(
        decode_dicom(&dcm).unwrap() == a.rgb,
        "JPEG 2-frame: not frame 1"
    );
    // One frame in three fragments.
    let dcm = jpeg_fragments(split_even(&a.jpeg, 3), Vec::new(), 1, w, h);
    assert!(decode_dicom(&dcm).unwrap() == a.rgb, "JPEG in 3 fragments");
    // Two frames of three fragments each, with and without a basic offset table.
    let (fa, fb) = (split_even(&a.jpeg, 3), split_even(&b.jpeg, 3));
    let second = fa.iter().map(|f| f.len() as u32 + 8).sum::<u32>();
    let frags: Vec<Vec<u8>> = fa.into_iter().chain(fb).collect();
    let dcm = jpeg_fragments(frags.clone(), vec![0, second], 2, w, h);
    assert!(
        decode_dicom(&dcm).unwrap() == a.rgb,
        "JPEG 2 frames x 3 fragments, offset table"
    );
    let dcm = jpeg_fragments(frags, Vec::new(), 2, w, h);
    assert!(
        decode_dicom(&dcm).unwrap() == a.rgb,
        "JPEG 2 frames x 3 fragments, no offset table"
    );
}

#[test]
fn errors_are_clear_and_hold_no_patient_identifier() {
    logs();
    // No pixel data.
    let dcm = write(EXPLICIT_LE, base(16, 16, 3, "RGB", 8), vec![]);
    let e = decode_dicom(&dcm).unwrap_err();
    assert!(e.contains("no pixel data"), "{e}");
    no_secret("error", &e);
    // Too few pixel bytes.
    let dcm = write(
        EXPLICIT_LE,
        base(16, 16, 3, "RGB", 8),
        vec![el(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![0u8; 10]),
        )],
    );
    let e = decode_dicom(&dcm).unwrap_err();
    assert!(e.contains("truncated") && e.contains("16x16"), "{e}");
    no_secret("error", &e);
    // An unsupported compression (JPEG 2000) names the transfer syntax.
    let frag = vec![vec![0u8; 64]];
    let dcm = write(
        "1.2.840.10008.1.2.4.90",
        base(16, 16, 3, "RGB", 8),
        vec![DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), frag)),
        )],
    );
    let e = decode_dicom(&dcm).unwrap_err();
    assert!(
        e.contains("1.2.840.10008.1.2.4.90") && e.contains("not supported"),
        "{e}"
    );
    no_secret("error", &e);
    // A broken JPEG fragment.
    let frag = vec![b"\xff\xd8\xff\xe0 not a jpeg, DOE^JOHN".to_vec()];
    let dcm = write(
        JPEG_BASELINE,
        base(16, 16, 3, "YBR_FULL_422", 8),
        vec![DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), frag)),
        )],
    );
    let e = decode_dicom(&dcm).unwrap_err();
    eprintln!("{e}");
    no_secret("error", &e);
    // Truncated in the middle of the data set, after the patient module.
    let good = write(
        EXPLICIT_LE,
        base(16, 16, 3, "RGB", 8),
        vec![el(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![7u8; 16 * 16 * 3]),
        )],
    );
    assert!(decode_dicom(&good).is_ok());
    for cut in [200, good.len() / 2, good.len() - 100] {
        let e = decode_dicom(&good[..cut]).unwrap_err();
        eprintln!("cut at {cut}: {e}");
        no_secret("error", &e);
    }
    // Not DICOM.
    assert!(
        decode_dicom(b"hello")
            .unwrap_err()
            .contains("not a DICOM file")
    );
}

#[test]
fn cache_gives_the_same_pixels_for_a_jpeg_and_its_dicom_copies() {
    logs();
    let Some(src) = sources() else { return };
    let d = tempfile::tempdir().unwrap();
    let mut samples = Vec::new();
    for (k, s) in src.iter().enumerate() {
        let (w, h) = s.rgb.dimensions();
        let files = [
            (format!("img{k}.jpg"), s.jpeg.clone()),
            (format!("img{k}_a.dcm"), uncompressed_rgb(&[&s.rgb])),
            (format!("img{k}_b.dcm"), jpeg_baseline(&[&s.jpeg], w, h)),
        ];
        for (name, bytes) in files {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            samples.push(sample(p));
        }
    }
    let cache = ImageCache::new(d.path().join("cache"));
    for size in [64, 224] {
        let imgs = cache.load_all(&samples, size).unwrap();
        for k in 0..src.len() {
            let (j, a, b) = (&imgs[3 * k], &imgs[3 * k + 1], &imgs[3 * k + 2]);
            assert_eq!(j.size, size);
            assert!(a == j, "cached (a) differs from the JPEG's at {size}");
            assert!(b == j, "cached (b) differs from the JPEG's at {size}");
        }
        // Again, now from the cache.
        assert_eq!(cache.load_all(&samples, size).unwrap(), imgs);
    }
    // Keys are content hashes: 3 different files per source image.
    let entries = std::fs::read_dir(d.path().join("cache/64"))
        .unwrap()
        .count();
    assert_eq!(entries, 3 * src.len());
}

#[test]
fn patient_identifiers_reach_no_error_cache_name_or_log() {
    let logs = logs();
    let Some(src) = sources() else { return };
    let s = &src[0];
    let (w, h) = s.rgb.dimensions();
    let d = tempfile::tempdir().unwrap();
    let good_a = d.path().join("f_a.dcm");
    let good_b = d.path().join("f_b.dcm");
    let nopix = d.path().join("f_nopix.dcm");
    let short = d.path().join("f_short.dcm");
    std::fs::write(&good_a, uncompressed_rgb(&[&s.rgb])).unwrap();
    std::fs::write(&good_b, jpeg_baseline(&[&s.jpeg], w, h)).unwrap();
    std::fs::write(&nopix, write(EXPLICIT_LE, base(w, h, 3, "RGB", 8), vec![])).unwrap();
    let full = uncompressed_rgb(&[&s.rgb]);
    std::fs::write(&short, &full[..full.len() / 2]).unwrap();
    for p in [&good_a, &good_b, &nopix, &short] {
        let bytes = std::fs::read(p).unwrap();
        // The fixture really holds them.
        assert!(bytes.windows(NAME.len()).any(|x| x == NAME.as_bytes()));
        assert!(bytes.windows(PID.len()).any(|x| x == PID.as_bytes()));
    }
    let cache = ImageCache::new(d.path().join("cache"));
    assert!(
        cache
            .load_all(&[sample(good_a.clone()), sample(good_b.clone())], 64)
            .is_ok()
    );
    for p in [&nopix, &short] {
        let e = cache
            .load_all(&[sample(p.clone())], 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&*p.file_name().unwrap().to_string_lossy()),
            "error names the file: {e}"
        );
        no_secret("cache error", &e);
        no_secret(
            "debug error",
            &format!("{:?}", decode_dicom(&std::fs::read(p).unwrap())),
        );
    }
    let e = cache
        .load_all(&[sample(nopix.clone())], 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no pixel data"), "{e}");
    let mut names = Vec::new();
    all_names(&d.path().join("cache"), &mut names);
    assert!(names.iter().any(|n| n.ends_with(".rgb")));
    for n in &names {
        no_secret("cache file name", n);
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    eprintln!("captured log:\n{text}");
    no_secret("log output", &text);
}

/// A small native fixture with every imaging attribute chosen by the caller.
#[allow(clippy::too_many_arguments)]
fn native(
    ts: &str,
    w: u32,
    h: u32,
    spp: u16,
    pi: &str,
    bits: u16,
    stored: u16,
    signed: bool,
    planar: u16,
    px: PrimitiveValue,
) -> Vec<u8> {
    let mut e = base(w, h, spp, pi, bits);
    e.retain(|x| {
        x.header().tag != tags::BITS_STORED
            && x.header().tag != tags::HIGH_BIT
            && x.header().tag != tags::PIXEL_REPRESENTATION
    });
    e.push(el(tags::BITS_STORED, VR::US, PrimitiveValue::from(stored)));
    e.push(el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(stored - 1)));
    e.push(el(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(signed as u16),
    ));
    if spp == 3 {
        e.push(el(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(planar),
        ));
    }
    let vr = if bits == 16 { VR::OW } else { VR::OB };
    write(ts, e, vec![el(tags::PIXEL_DATA, vr, px)])
}

fn rgb_of(dcm: &[u8]) -> Vec<u8> {
    decode_dicom(dcm).unwrap().into_raw()
}

#[test]
fn native_variants_without_data() {
    logs();
    let px8 = |v: Vec<u8>| PrimitiveValue::from(v);
    let px16 = |v: Vec<u16>| PrimitiveValue::U16(v.into());
    // RGB, pixel-interleaved and colour-by-plane, explicit and implicit VR.
    let rgb = vec![10u8, 20, 30, 40, 50, 60];
    for ts in [EXPLICIT_LE, "1.2.840.10008.1.2"] {
        assert_eq!(
            rgb_of(&native(
                ts,
                2,
                1,
                3,
                "RGB",
                8,
                8,
                false,
                0,
                px8(rgb.clone())
            )),
            rgb,
            "{ts}"
        );
    }
    let planar = vec![10u8, 40, 20, 50, 30, 60];
    assert_eq!(
        rgb_of(&native(
            EXPLICIT_LE,
            2,
            1,
            3,
            "RGB",
            8,
            8,
            false,
            1,
            px8(planar)
        )),
        rgb
    );
    // 16-bit RGB scaled to 8 bits: v * 257 -> v.
    let v16: Vec<u16> = rgb.iter().map(|&v| v as u16 * 257).collect();
    assert_eq!(
        rgb_of(&native(
            EXPLICIT_LE,
            2,
            1,
            3,
            "RGB",
            16,
            16,
            false,
            0,
            px16(v16)
        )),
        rgb
    );
    // 12 bits stored in 16: 0, 4095, 2048 -> 0, 255, 128.
    let got = rgb_of(&native(
        EXPLICIT_LE,
        3,
        1,
        1,
        "MONOCHROME2",
        16,
        12,
        false,
        0,
        px16(vec![0, 4095, 2048]),
    ));
    assert_eq!(got, [0, 0, 0, 255, 255, 255, 128, 128, 128]);
    // Signed 12-bit: -2048, 2047, 0 -> 0, 255, 128.
    let s: Vec<u16> = [-2048i16, 2047, 0].iter().map(|&v| v as u16).collect();
    let got = rgb_of(&native(
        EXPLICIT_LE,
        3,
        1,
        1,
        "MONOCHROME2",
        16,
        12,
        true,
        0,
        px16(s),
    ));
    assert_eq!(got, [0, 0, 0, 255, 255, 255, 128, 128, 128]);
    // MONOCHROME1: the minimum is white.
    let got = rgb_of(&native(
        EXPLICIT_LE,
        2,
        1,
        1,
        "MONOCHROME1",
        8,
        8,
        false,
        0,
        px8(vec![0, 200]),
    ));
    assert_eq!(got, [255, 255, 255, 55, 55, 55]);
    // YBR_FULL: neutral chroma is grey; Cr up is red.
    let got = rgb_of(&native(
        EXPLICIT_LE,
        2,
        1,
        3,
        "YBR_FULL",
        8,
        8,
        false,
        0,
        px8(vec![100, 128, 128, 100, 128, 200]),
    ));
    assert_eq!(got[..3], [100, 100, 100]);
    assert!(got[3] > 180 && got[4] < 60 && got[5] == 100, "{got:?}");
    // Unsupported photometric interpretation and sample count: clear errors.
    let e = decode_dicom(&native(
        EXPLICIT_LE,
        2,
        1,
        1,
        "PALETTE COLOR",
        8,
        8,
        false,
        0,
        px8(vec![0, 1]),
    ))
    .unwrap_err();
    assert!(
        e.contains("PALETTE COLOR") && e.contains("not supported"),
        "{e}"
    );
    let e = decode_dicom(&native(
        EXPLICIT_LE,
        2,
        1,
        3,
        "MONOCHROME2",
        8,
        8,
        false,
        0,
        px8(vec![0; 6]),
    ))
    .unwrap_err();
    assert!(e.contains("SamplesPerPixel"), "{e}");
    eprintln!("{e}");
    // An error that quotes attribute text is scrubbed of the patient's name.
    let bad = format!("X{NAME}");
    let e = decode_dicom(&native(
        EXPLICIT_LE,
        2,
        1,
        1,
        &bad,
        8,
        8,
        false,
        0,
        px8(vec![0, 1]),
    ))
    .unwrap_err();
    eprintln!("{e}");
    no_secret("error", &e);
}

/// A DICOM copy of a few ISIC images goes through pretraining and the probe
/// and gives exactly the numbers the JPEGs give.
#[test]
fn dicom_copies_pretrain_and_probe_like_the_jpegs() {
    logs();
    let Some(root) = common::isic_dir() else {
        return;
    };
    let labels = std::fs::read_to_string(root.join("labels.csv")).unwrap();
    // image_id,split,melanoma,seborrheic_keratosis,path
    let rows: Vec<Vec<String>> = labels
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let mut chosen = Vec::new();
    for (split, pos, neg) in [("train", 8, 24), ("val", 4, 12), ("test", 4, 12)] {
        for (want, n) in [("1", pos), ("0", neg)] {
            chosen.extend(
                rows.iter()
                    .filter(|r| r[1] == split && r[2] == want)
                    .take(n)
                    .cloned(),
            );
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (jdir, ddir) = (tmp.path().join("jpeg"), tmp.path().join("dicom"));
    std::fs::create_dir_all(&jdir).unwrap();
    std::fs::create_dir_all(&ddir).unwrap();
    let (mut jcsv, mut dcsv) = (
        String::from("path,label,split\n"),
        String::from("path,label,split\n"),
    );
    for r in &chosen {
        let jpeg = std::fs::read(root.join(&r[4])).unwrap();
        let (w, h) = image::load_from_memory(&jpeg)
            .unwrap()
            .to_rgb8()
            .dimensions();
        std::fs::write(jdir.join(format!("{}.jpg", r[0])), &jpeg).unwrap();
        std::fs::write(
            ddir.join(format!("{}.dcm", r[0])),
            jpeg_baseline(&[&jpeg], w, h),
        )
        .unwrap();
        jcsv.push_str(&format!("{}.jpg,{},{}\n", r[0], r[2], r[1]));
        dcsv.push_str(&format!("{}.dcm,{},{}\n", r[0], r[2], r[1]));
    }
    std::fs::write(jdir.join("manifest.csv"), jcsv).unwrap();
    std::fs::write(ddir.join("manifest.csv"), dcsv).unwrap();
    let run = |data: &Path, name: &str| {
        let out = std::process::Command::new(common::bin())
            .args([
                "reproduce",
                "--preset",
                "tiny",
                "--no-progress",
                "--run-name",
                name,
            ])
            .arg("--data")
            .arg(data)
            .arg("--reports")
            .arg(tmp.path().join("reports"))
            .arg("--cache-dir")
            .arg(tmp.path().join(format!("cache-{name}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        no_secret("reproduce log", &String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(
            tmp.path()
                .join("reports")
                .join(name)
                .join("test_scores.csv"),
        )
        .unwrap()
    };
    let (a, b) = (run(&jdir, "jpeg"), run(&ddir, "dicom"));
    assert_eq!(a.lines().count(), 17);
    assert_eq!(a, b, "the DICOM copies must give the JPEGs' test scores");
    let mut names = Vec::new();
    all_names(tmp.path(), &mut names);
    for n in &names {
        no_secret("file name", n);
    }
}
