//! DICOM in: visible-light images (VL Photographic, VL Microscopic, or any
//! other object with one image) decoded to 8-bit RGB.
//!
//! Supported: uncompressed pixel data (implicit/explicit VR little endian),
//! RLE lossless, and JPEG baseline / extended 8-bit (1.2.840.10008.1.2.4.50,
//! .51), whose fragments are decoded by the same `image` JPEG decoder as
//! `.jpg` files, so a JPEG and its DICOM wrapping give the same pixels.
//! RGB, YBR_FULL, MONOCHROME1/2 (grey -> RGB); 8 or 16 bits allocated (more
//! than 8 bits stored are scaled to 8); multi-frame objects give their first
//! frame.
//!
//! Patient identifiers: this module never prints a DICOM object or a tag
//! value. Error messages name technical attributes only, and any text that
//! reaches an error after the object is parsed is scrubbed of the values of
//! the patient-identifying attributes the object holds.

use std::borrow::Cow;
use std::io::Cursor;

use dicom_core::value::Value as DicomValue;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    PhotometricInterpretation, PixelDecoder, PixelRepresentation, PlanarConfiguration,
};

use super::limits::{MAX_ALLOC, MAX_SIDE};

/// Transfer syntaxes whose frames are plain JPEG streams that `image` decodes.
const JPEG_TS: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// True when `bytes` is a DICOM Part 10 file: "DICM" after the 128-byte preamble.
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Decodes the (first frame of the) image of a DICOM file into 8-bit RGB.
/// Errors say what is wrong with the file, never a patient identifier.
pub fn decode_dicom(bytes: &[u8]) -> Result<image::RgbImage, String> {
    let obj = parse(bytes)?;
    let secrets = identifying_values(&obj);
    decode_object(&obj).map_err(|e| redact(e, &secrets))
}

/// The image's width and height from the header attributes, without decoding
/// pixels (for size checks).
pub fn dicom_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    let obj = parse(bytes)?;
    let rows = get_u32(&obj, tags::ROWS, "Rows")?.ok_or("DICOM file has no Rows attribute")?;
    let cols =
        get_u32(&obj, tags::COLUMNS, "Columns")?.ok_or("DICOM file has no Columns attribute")?;
    Ok((cols, rows))
}

fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, String> {
    if !is_dicom(bytes) {
        return Err("not a DICOM file (no \"DICM\" marker at byte 128)".into());
    }
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[128..])
        .map_err(|e| {
            // Only the top-level message, never the source chain; a token's
            // debug form could hold an element's value.
            let m = e.to_string();
            if m.contains("token") {
                "cannot parse DICOM file: malformed or truncated data set".to_string()
            } else {
                format!("cannot parse DICOM file: {m}")
            }
        })
}

fn decode_object(obj: &DefaultDicomObject) -> Result<image::RgbImage, String> {
    let pixel = match obj.get(tags::PIXEL_DATA) {
        Some(p) => p,
        None if obj.get(tags::FLOAT_PIXEL_DATA).is_some()
            || obj.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some() =>
        {
            return Err(
                "DICOM file has floating-point pixel data, not an image of integer samples".into(),
            );
        }
        None => return Err("DICOM file has no pixel data".into()),
    };
    let rows = get_u32(obj, tags::ROWS, "Rows")?.ok_or("DICOM file has no Rows attribute")?;
    let cols =
        get_u32(obj, tags::COLUMNS, "Columns")?.ok_or("DICOM file has no Columns attribute")?;
    if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(format!(
            "DICOM image is {cols}x{rows}; sides must be 1..={MAX_SIDE}"
        ));
    }
    if rows as u64 * cols as u64 * 3 > MAX_ALLOC {
        return Err(format!("DICOM image is {cols}x{rows}, too large to decode"));
    }
    let ts = obj.meta().transfer_syntax();
    let fragments = match pixel.value() {
        DicomValue::PixelSequence(seq) => Some(seq.fragments()),
        DicomValue::Primitive(_) => None,
        DicomValue::Sequence(_) => {
            return Err("DICOM pixel data is a sequence, not pixel samples".into());
        }
    };
    if let Some(frags) = fragments {
        if frags.is_empty() || frags.iter().all(|f| f.is_empty()) {
            return Err("DICOM file has no pixel data (empty encapsulated pixel data)".into());
        }
        if JPEG_TS.contains(&ts) {
            return decode_jpeg_frame(obj);
        }
    } else {
        let have = pixel
            .value()
            .primitive()
            .map_or(0, |p| p.calculate_byte_len());
        if have == 0 {
            return Err("DICOM file has no pixel data (empty PixelData)".into());
        }
        let spp = get_u32(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1) as usize;
        let bits = get_u32(obj, tags::BITS_ALLOCATED, "BitsAllocated")?.unwrap_or(8) as usize;
        let need = rows as usize * cols as usize * spp * bits.div_ceil(8);
        if bits >= 8 && have < need {
            return Err(format!(
                "DICOM pixel data is truncated: {have} bytes, a {cols}x{rows} frame of {spp} sample(s) of {bits} bits needs {need}"
            ));
        }
    }
    let px = obj
        .decode_pixel_data_frame(0)
        .map_err(|e| pixeldata_error(&e.to_string(), ts))?;
    native_to_rgb(
        px.data(),
        px.columns(),
        px.rows(),
        px.samples_per_pixel(),
        px.bits_allocated(),
        px.bits_stored(),
        px.pixel_representation() == PixelRepresentation::Signed,
        px.planar_configuration() == PlanarConfiguration::PixelFirst,
        px.photometric_interpretation(),
    )
}

fn pixeldata_error(msg: &str, ts: &str) -> String {
    if msg.contains("TransferSyntax") || msg.contains("transfer syntax") {
        format!(
            "DICOM transfer syntax {} is not supported (supported: uncompressed little endian, RLE lossless, JPEG baseline 1.2.840.10008.1.2.4.50/.51)",
            printable(ts)
        )
    } else {
        format!("cannot decode DICOM pixel data: {msg}")
    }
}

/// The first frame's JPEG stream, decoded like a `.jpg` file.
fn decode_jpeg_frame(obj: &DefaultDicomObject) -> Result<image::RgbImage, String> {
    let data: Cow<[u8]> = first_frame(obj).ok_or("DICOM file has no pixel data for frame 1")?;
    let mut reader = image::ImageReader::new(Cursor::new(&data[..]));
    reader.set_format(image::ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| format!("cannot decode the DICOM file's JPEG frame: {e}"))?;
    Ok(img.to_rgb8())
}

/// Frame 0 of encapsulated pixel data, using the object's basic offset table
/// when a frame spans several fragments.
fn first_frame(obj: &DefaultDicomObject) -> Option<Cow<'_, [u8]>> {
    let DicomValue::PixelSequence(seq) = obj.get(tags::PIXEL_DATA)?.value() else {
        return None;
    };
    let frags = seq.fragments();
    let frames = get_u32(obj, tags::NUMBER_OF_FRAMES, "NumberOfFrames")
        .ok()
        .flatten()
        .unwrap_or(1)
        .max(1) as usize;
    if frags.len() == frames || frags.len() == 1 {
        return frags.first().map(|f| Cow::Borrowed(&f[..]));
    }
    // Several fragments per frame: frame 0 ends where the offset table's
    // second entry starts (offsets count each fragment's 8-byte item header).
    let end = seq.offset_table().get(1).map(|&o| o as usize);
    if frames > 1 && end.is_none() {
        // No table: a JPEG stream ends with EOI, so gather fragments up to it.
        let mut out = Vec::new();
        for f in frags {
            out.extend_from_slice(f);
            let t = out
                .iter()
                .rposition(|&b| b != 0)
                .map(|i| i + 1)
                .unwrap_or(0);
            if t >= 2 && out[t - 2..t] == [0xFF, 0xD9] {
                break;
            }
        }
        return Some(Cow::Owned(out));
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    for f in frags {
        if end.is_some_and(|e| off >= e) {
            break;
        }
        out.extend_from_slice(f);
        off += f.len() + 8;
    }
    Some(Cow::Owned(out))
}

/// Native samples of one frame -> 8-bit interleaved RGB.
#[allow(clippy::too_many_arguments)]
fn native_to_rgb(
    data: &[u8],
    cols: u32,
    rows: u32,
    spp: u16,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    planar: bool,
    pi: &PhotometricInterpretation,
) -> Result<image::RgbImage, String> {
    let n = cols as usize * rows as usize;
    let bytes_per = match bits_allocated {
        8 => 1,
        16 => 2,
        b => {
            return Err(format!(
                "DICOM BitsAllocated {b} is not supported (8 or 16)"
            ));
        }
    };
    let bits = if bits_stored == 0 || bits_stored > bits_allocated {
        bits_allocated
    } else {
        bits_stored
    } as u32;
    let grey = match pi {
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => true,
        PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull => false,
        other => {
            return Err(format!(
                "DICOM PhotometricInterpretation {} is not supported for uncompressed pixel data (RGB, YBR_FULL, MONOCHROME1, MONOCHROME2)",
                printable(other.as_str())
            ));
        }
    };
    let want_spp = if grey { 1 } else { 3 };
    if spp != want_spp {
        return Err(format!(
            "DICOM SamplesPerPixel is {spp}, expected {want_spp} for {}",
            pi.as_str()
        ));
    }
    let need = n * spp as usize * bytes_per;
    if data.len() < need {
        return Err(format!(
            "DICOM pixel data is {} bytes, {cols}x{rows}x{spp} samples of {bits_allocated} bits need {need}",
            data.len()
        ));
    }
    // One sample -> 0..=255: mask to BitsStored, undo two's complement by an
    // offset of half the range, scale the stored range onto 8 bits.
    let max = (1u64 << bits) - 1;
    let sample = |i: usize| -> u8 {
        let raw = if bytes_per == 1 {
            data[i] as u64
        } else {
            u16::from_ne_bytes([data[2 * i], data[2 * i + 1]]) as u64
        };
        let mut v = raw & max;
        if signed {
            v ^= 1 << (bits - 1);
        }
        if bits == 8 {
            v as u8
        } else {
            ((v * 255 + max / 2) / max) as u8
        }
    };
    let mut out = vec![0u8; n * 3];
    if grey {
        let invert = matches!(pi, PhotometricInterpretation::Monochrome1);
        for i in 0..n {
            let g = sample(i);
            let g = if invert { 255 - g } else { g };
            out[3 * i..3 * i + 3].fill(g);
        }
    } else {
        for i in 0..n {
            for c in 0..3 {
                out[3 * i + c] = sample(if planar { c * n + i } else { 3 * i + c });
            }
        }
        if matches!(pi, PhotometricInterpretation::YbrFull) {
            for p in out.chunks_exact_mut(3) {
                let (y, cb, cr) = (p[0] as f32, p[1] as f32 - 128.0, p[2] as f32 - 128.0);
                p[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
                p[1] = (y - 0.344_136 * cb - 0.714_136 * cr)
                    .round()
                    .clamp(0.0, 255.0) as u8;
                p[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    image::RgbImage::from_raw(cols, rows, out)
        .ok_or_else(|| "DICOM pixel buffer has the wrong size".to_string())
}

/// An unsigned integer attribute (US, UL, IS) from the top-level data set.
fn get_u32(
    obj: &DefaultDicomObject,
    tag: dicom_object::Tag,
    name: &str,
) -> Result<Option<u32>, String> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_int::<u32>()
            .map(Some)
            .map_err(|_| format!("DICOM attribute {name} is not a valid unsigned integer")),
    }
}

/// A technical code string, shown only when it looks like one.
fn printable(s: &str) -> String {
    let s = s.trim_end_matches(['\0', ' ']);
    if !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._ -".contains(c))
    {
        s.to_string()
    } else {
        "(unprintable)".to_string()
    }
}

/// Values of the object's patient/study identifying attributes (all of group
/// 0010, accession number, physicians, institution), and their name parts,
/// to scrub from any message.
fn identifying_values(obj: &DefaultDicomObject) -> Vec<String> {
    let extra = [
        tags::ACCESSION_NUMBER,
        tags::INSTITUTION_NAME,
        tags::INSTITUTION_ADDRESS,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::PERFORMING_PHYSICIAN_NAME,
        tags::OPERATORS_NAME,
        tags::STUDY_ID,
    ];
    let mut out = Vec::new();
    for e in obj.iter() {
        let t = e.header().tag;
        if t.group() != 0x0010 && !extra.contains(&t) {
            continue;
        }
        if let Ok(v) = e.to_str() {
            for part in std::iter::once(v.as_ref()).chain(v.split(['^', '\\', '='])) {
                let p = part.trim_matches([' ', '\0']);
                if p.len() >= 3 && !out.iter().any(|x: &String| x == p) {
                    out.push(p.to_string());
                }
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn redact(mut msg: String, secrets: &[String]) -> String {
    for s in secrets {
        if msg.contains(s.as_str()) {
            msg = msg.replace(s.as_str(), "[redacted]");
        }
    }
    msg
}
