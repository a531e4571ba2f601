//! The length check a DICOM file passes before the DICOM parser sees it
//! ([`check_dicom_lengths`]): the parser allocates and zero-fills a value's
//! claimed length before reading it, so a 1 KB file claiming a 4 GB element
//! would touch 4 GB of memory before failing.
//!
//! The walk follows the element headers as the parser reads them: the meta
//! group up to its group length ([`read_meta`]), then the data set in
//! implicit or explicit VR, little or big endian, into sequences and items,
//! over encapsulated pixel fragments ([`walk_data_set`]); JPEG frames then
//! get the checks of a `.jpg` file ([`check_jpeg_frames`]). Anything the
//! walk does not follow ends it without a verdict (`Ok(None)` from the
//! steps): the parser then decides. Messages hold tags and byte counts
//! only, never a value.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};

/// A defined length of 0xFFFFFFFF: undefined (a sequence or encapsulated
/// pixel data whose items follow).
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Walks a DICOM file's element headers as the parser reads them and
/// refuses an element whose defined length is more than the bytes left in
/// the file (module docs).
pub fn check_dicom_lengths(b: &[u8]) -> Result<(), String> {
    let b = Bytes(b);
    let Some((syntax, start)) = read_meta(&b)? else {
        return Ok(());
    };
    let Some(frags) = walk_data_set(&b, start, &syntax)? else {
        return Ok(());
    };
    check_jpeg_frames(&b, &syntax, &frags)
}

/// The file's bytes, with the two integer reads of a header.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn u16at(&self, i: usize, big: bool) -> u16 {
        let x = [self.0[i], self.0[i + 1]];
        if big {
            u16::from_be_bytes(x)
        } else {
            u16::from_le_bytes(x)
        }
    }

    fn u32at(&self, i: usize, big: bool) -> u32 {
        let x = [self.0[i], self.0[i + 1], self.0[i + 2], self.0[i + 3]];
        if big {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    }

    /// The explicit VR at `i` (unknown ones read as UN, as the parser does).
    fn vr(&self, i: usize) -> VR {
        VR::from_binary([self.0[i], self.0[i + 1]]).unwrap_or(VR::UN)
    }
}

/// Refuses a defined length `len` past the `left` bytes of the file.
fn fits(g: u16, e: u16, at: usize, len: u32, left: usize) -> Result<(), String> {
    if len as usize > left {
        return Err(format!(
            "DICOM element ({g:04X},{e:04X}) at byte {at} claims {len} bytes, but only {left} remain: truncated or corrupt"
        ));
    }
    Ok(())
}

/// Explicit VR header: these VRs have a 2-byte length, all others (unknown
/// ones included, read as UN) 2 reserved bytes and a 4-byte one.
fn short_len(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

/// Bytes the parser actually consumes for a value: binary VRs are read as
/// whole numbers of samples, so a length that is not a multiple of the
/// sample size leaves the stream where the parser is, not at `len`.
fn consumed(vr: VR, len: u32) -> usize {
    let size = match vr {
        VR::US | VR::OW | VR::SS => 2,
        VR::AT | VR::FL | VR::OF | VR::SL | VR::OL | VR::UL => 4,
        VR::FD | VR::OD | VR::SV | VR::OV | VR::UV => 8,
        _ => 1,
    };
    (len as usize / size) * size
}

/// How the data set after the meta group is encoded.
struct Syntax {
    /// The transfer syntax UID, trailing padding removed.
    uid: String,
    explicit: bool,
    big: bool,
}

/// The meta group: explicit VR little endian, read while the bytes read are
/// under the group length (0002,0000), which must come first. The parser
/// takes the group length's VR as written (so "US" with a 2-byte length of
/// 4 passes) and needs a length of 4. Returns the data set's encoding and
/// where it starts; `None` where the parser refuses the meta group itself,
/// or the data set is deflated.
fn read_meta(b: &Bytes) -> Result<Option<(Syntax, usize)>, String> {
    let n = b.len();
    if n < 144 || b.u16at(132, false) != 0x0002 || b.u16at(134, false) != 0x0000 {
        return Ok(None);
    }
    let (group_len, mut i) = if short_len(b.vr(136)) {
        if b.u16at(138, false) != 4 {
            return Ok(None);
        }
        (b.u32at(140, false) as usize, 144)
    } else {
        if n < 148 || b.u32at(140, false) != 4 {
            return Ok(None);
        }
        (b.u32at(144, false) as usize, 148)
    };
    let meta_start = i;
    let mut uid: Option<String> = None;
    while i - meta_start < group_len {
        if i + 8 > n {
            return Ok(None);
        }
        let (g, e) = (b.u16at(i, false), b.u16at(i + 2, false));
        let (len, header) = if g == 0xFFFE {
            (b.u32at(i + 4, false), 8)
        } else if short_len(b.vr(i + 4)) {
            (b.u16at(i + 6, false) as u32, 8)
        } else if i + 12 <= n {
            (b.u32at(i + 8, false), 12)
        } else {
            return Ok(None);
        };
        let at = i;
        i += header;
        if len == UNDEFINED {
            return Ok(None); // the meta parser refuses it
        }
        fits(g, e, at, len, n - i)?;
        if (g, e) == (0x0002, 0x0010) {
            uid = std::str::from_utf8(&b.0[i..i + len as usize])
                .ok()
                .map(|t| t.trim_end_matches(['\0', ' ']).to_string());
        }
        i += len as usize;
    }
    let (explicit, big) = match uid.as_deref() {
        Some("1.2.840.10008.1.2") => (false, false),
        Some("1.2.840.10008.1.2.2") => (true, true),
        Some("1.2.840.10008.1.2.1.99") | None => return Ok(None), // deflated, or refused by the parser
        Some(_) => (true, false),
    };
    let uid = uid.unwrap_or_default();
    Ok(Some((Syntax { uid, explicit, big }, i)))
}

/// Where the data set's walk stands.
#[derive(Default)]
struct Walk {
    /// Inside encapsulated pixel data: items are raw fragments.
    fragments: bool,
    /// The byte ranges of the last encapsulated pixel data's items (the
    /// first is the basic offset table).
    frags: Vec<(usize, usize)>,
}

/// Walks the data set from byte `i` to the end of the file. Returns the
/// fragments of the last encapsulated pixel data, or `None` where the walk
/// cannot follow the parser.
fn walk_data_set(
    b: &Bytes,
    mut i: usize,
    s: &Syntax,
) -> Result<Option<Vec<(usize, usize)>>, String> {
    let n = b.len();
    let mut w = Walk::default();
    while i + 8 <= n {
        let next = if b.u16at(i, s.big) == 0xFFFE {
            item_or_delimiter(b, i, s.big, &mut w)?
        } else if w.fragments {
            None
        } else {
            element(b, i, s, &mut w)?
        };
        // Every step moves past at least a header of 8 bytes.
        let Some(next) = next else {
            return Ok(None);
        };
        i = next;
    }
    Ok(Some(w.frags))
}

/// An item or a delimiter at `at` (tag (FFFE,xxxx) and a 4-byte length, no
/// VR): where the walk goes on, or `None` where it cannot follow.
fn item_or_delimiter(
    b: &Bytes,
    at: usize,
    big: bool,
    w: &mut Walk,
) -> Result<Option<usize>, String> {
    let (g, e) = (0xFFFE, b.u16at(at + 2, big));
    let len = b.u32at(at + 4, big);
    let i = at + 8;
    let left = b.len() - i;
    Ok(Some(match e {
        0xE000 if len != UNDEFINED => {
            fits(g, e, at, len, left)?;
            if w.fragments {
                w.frags.push((i, len as usize));
                i + len as usize // raw fragment bytes
            } else {
                i
            }
        }
        0xE000 => i,
        0xE00D | 0xE0DD => {
            // A delimiter's length should be 0; outside a sequence the
            // parser reads it as an element of that length.
            if len != UNDEFINED {
                fits(g, e, at, len, left)?;
            }
            w.fragments &= e != 0xE0DD;
            i
        }
        // Any other (FFFE,xxxx) is read as a UN value of that length.
        _ if len == UNDEFINED => return Ok(None),
        _ => {
            fits(g, e, at, len, left)?;
            i + len as usize
        }
    }))
}

/// A data element at `at`: where the walk goes on, or `None` where it
/// cannot follow.
fn element(b: &Bytes, at: usize, s: &Syntax, w: &mut Walk) -> Result<Option<usize>, String> {
    let n = b.len();
    let (g, e) = (b.u16at(at, s.big), b.u16at(at + 2, s.big));
    let (vr, len, header) = if s.explicit {
        let vr = b.vr(at + 4);
        if short_len(vr) {
            (vr, b.u16at(at + 6, s.big) as u32, 8)
        } else if at + 12 <= n {
            (vr, b.u32at(at + 8, s.big), 12)
        } else {
            return Ok(None);
        }
    } else {
        (implicit_vr(g, e), b.u32at(at + 4, s.big), 8)
    };
    let i = at + header;
    if len == UNDEFINED {
        // Encapsulated pixel data, else (any VR) a sequence, as the parser
        // reads it: its items follow inline.
        w.fragments = (g, e) == (0x7FE0, 0x0010);
        if w.fragments {
            w.frags.clear();
        }
        return Ok(Some(i));
    }
    fits(g, e, at, len, n - i)?;
    // A sequence's items follow inline.
    Ok(Some(if vr == VR::SQ {
        i
    } else {
        i + consumed(vr, len)
    }))
}

/// The VR the parser gives an implicit-VR element: pixel data and overlay
/// data as OW, the rest by the standard dictionary (UN if unknown).
fn implicit_vr(g: u16, e: u16) -> VR {
    if (g, e) == (0x7FE0, 0x0010) || (g >> 8 == 0x60 && e == 0x3000) {
        VR::OW
    } else {
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(Tag(g, e))
            .map(|x| x.vr().relaxed())
            .unwrap_or(VR::UN)
    }
}

/// JPEG baseline/extended frames are decoded like .jpg files, so they get
/// the same checks: the fragments after the offset table, joined, must hold
/// a whole first frame (end-of-image marker) whose frame header does not
/// claim more pixels than the data can hold (the walk stops at the first
/// frame's end, so later frames do not count).
fn check_jpeg_frames(b: &Bytes, s: &Syntax, frags: &[(usize, usize)]) -> Result<(), String> {
    let jpeg = matches!(
        s.uid.as_str(),
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51"
    );
    if !jpeg || frags.len() < 2 {
        return Ok(());
    }
    let data: Vec<u8> = frags[1..]
        .iter()
        .flat_map(|&(at, len)| b.0[at..at + len].iter().copied())
        .collect();
    if data.starts_with(&[0xFF, 0xD8]) {
        super::cache::check_jpeg(&data).map_err(|e| format!("DICOM JPEG frame: {e}"))?;
    }
    Ok(())
}
