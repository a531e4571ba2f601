//! How numbers and names are printed in the report: three decimals, "–"
//! where a value does not apply (never `NaN`), p-values, percentages, and
//! escaping for HTML and Markdown.

use std::fmt::Write as _;

/// Printed where a value does not apply or could not be computed.
pub const DASH: &str = "–";

/// Three decimals, or [`DASH`] for a missing or non-finite value.
pub fn fmt3(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => DASH.into(),
    }
}

/// A signed difference with three decimals (`+0.072`, `−0.013`), or [`DASH`].
pub fn fmt_signed(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let s = format!("{:.3}", v.abs());
            if s == "0.000" {
                s
            } else if v < 0.0 {
                format!("−{s}")
            } else {
                format!("+{s}")
            }
        }
        _ => DASH.into(),
    }
}

/// `0.712 [0.650, 0.774]`, or [`DASH`] when the estimate is missing.
pub fn fmt_ci(est: Option<f64>, lo: f64, hi: f64) -> String {
    match est {
        Some(e) if e.is_finite() => format!("{e:.3} [{}, {}]", fmt3(Some(lo)), fmt3(Some(hi))),
        _ => DASH.into(),
    }
}

/// A p-value: `< 0.0001`, four decimals below 0.01, else three; [`DASH`]
/// when missing.
pub fn format_p(p: f64) -> String {
    if !p.is_finite() {
        DASH.into()
    } else if p < 1e-4 {
        "< 0.0001".into()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.3}")
    }
}

/// `= 0.023` or `< 0.0001`.
pub fn p_text(p: f64) -> String {
    let s = format_p(p);
    if s.starts_with('<') {
        s
    } else {
        format!("= {s}")
    }
}

/// A label fraction as a percentage without float noise: 0.1 -> `10`,
/// 0.025 -> `2.5`, 0.07 -> `7`.
pub fn fmt_pct(fraction: f64) -> String {
    let s = format!("{:.4}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// The display name of an init.
pub fn init_name(init: &str) -> String {
    match init {
        "pirl" => "PIRL".into(),
        "random" => "random init".into(),
        w => w.to_string(),
    }
}

/// Text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Image alt text: no brackets or line breaks that would end the link early.
pub fn md_alt(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '[' | ']' | '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// A relative file name as a Markdown link target (percent-encoded).
pub fn md_url(name: &str) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// A Markdown table cell: pipes escaped, no line breaks.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A name usable in a file name: ASCII letters, digits, `-`, `_` and `.`;
/// anything else becomes `_`.
pub fn file_stem(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
