//! `report.html` (self-contained: inline SVG, no external files) and
//! `report.md` (linking the PNGs), in the same order: the answer first (the
//! headline lines, the label-efficiency and forest figures, the comparison
//! table and how its numbers were computed), then calibration, subgroups and
//! external test sets, then the details (settings, every seed, every run,
//! ROC and loss curves, the manifest), collapsed in the HTML.

use std::fmt::Write as _;

use crate::report::format::{esc, md_alt, md_url};

/// A chart as it appears in the report: SVG inline in the HTML, the PNG
/// (`{stem}.png`) linked from the Markdown.
#[derive(Debug, Clone)]
pub struct Figure {
    pub stem: String,
    pub title: String,
    pub svg: String,
}

/// A titled table (Markdown) with notes under it.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub md: String,
    pub notes: Vec<String>,
}

/// A section of the report: a heading, paragraphs, tables and figures.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub paragraphs: Vec<String>,
    pub tables: Vec<Table>,
    pub figures: Vec<Figure>,
    /// Collapsed in the HTML (`<details>`), under "Details".
    pub collapsed: bool,
    /// The figures before the tables (the headline: the answer at a glance).
    pub figures_first: bool,
}

/// Everything on the page, in order.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    /// The headline lines, in bold at the top.
    pub head: Vec<String>,
    pub sections: Vec<Section>,
    /// Shown last, collapsed, as preformatted text (HTML only).
    pub manifest: String,
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1240px;margin:2em auto;color:#222;padding:0 1em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:.5em 0 1em}figure{margin:0}.scroll{overflow-x:auto}.note{font-size:13px;color:#444}details{margin:.6em 0}summary{cursor:pointer;font-weight:bold;font-size:1.1em}";

/// Markdown table -> HTML table (escaped pipes `\|` kept inside cells).
fn html_table(md: &str) -> String {
    let mut s = String::from("<div class=\"scroll\"><table>");
    for (i, line) in md.lines().enumerate() {
        if i == 1 || line.trim().is_empty() {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        s.push_str("<tr>");
        let line = line.trim().replace("\\|", "\u{0}");
        for cell in line.trim_matches('|').split('|') {
            let _ = write!(
                s,
                "<{tag}>{}</{tag}>",
                esc(&cell.trim().replace('\u{0}', "|"))
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></div>");
    s
}

fn html_figures(figures: &[Figure]) -> String {
    if figures.is_empty() {
        return String::new();
    }
    let mut s = String::from("<div class=\"plots\">");
    for f in figures {
        let _ = write!(s, "<figure id=\"{}\">{}</figure>", esc(&f.stem), f.svg);
    }
    s.push_str("</div>");
    s
}

fn html_section(s: &Section) -> String {
    let mut b = String::new();
    for p in &s.paragraphs {
        let _ = write!(b, "<p class=\"note\">{}</p>", esc(p));
    }
    let figs = html_figures(&s.figures);
    if s.figures_first {
        b.push_str(&figs);
    }
    for t in &s.tables {
        if !t.title.is_empty() {
            let _ = write!(b, "<h3>{}</h3>", esc(&t.title));
        }
        b.push_str(&html_table(&t.md));
        for n in &t.notes {
            let _ = write!(b, "<p class=\"note\">{}</p>", esc(n));
        }
    }
    if !s.figures_first {
        b.push_str(&figs);
    }
    if s.collapsed {
        format!(
            "<details id=\"{}\"><summary>{}</summary>{b}</details>",
            esc(&s.id),
            esc(&s.title)
        )
    } else {
        format!(
            "<section id=\"{}\"><h2>{}</h2>{b}</section>",
            esc(&s.id),
            esc(&s.title)
        )
    }
}

/// The self-contained HTML page.
pub fn html(p: &Page) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1><div class=\"headline\">",
        t = esc(&p.title)
    );
    for l in &p.head {
        let _ = write!(s, "<p><b>{}</b></p>", esc(l));
    }
    s.push_str("</div>");
    let mut details = false;
    for sec in &p.sections {
        if sec.collapsed && !details {
            s.push_str("<h2>Details</h2>");
            details = true;
        }
        s.push_str(&html_section(sec));
    }
    if !details {
        s.push_str("<h2>Details</h2>");
    }
    let _ = write!(
        s,
        "<details id=\"manifest\"><summary>Settings and provenance (manifest.json)</summary><pre>{}</pre></details></body></html>",
        esc(&p.manifest)
    );
    s
}

fn md_figures(figures: &[Figure]) -> String {
    let mut s = String::new();
    for f in figures {
        let _ = write!(
            s,
            "![{}]({})\n\n",
            md_alt(&f.title),
            md_url(&format!("{}.png", f.stem))
        );
    }
    s
}

/// The Markdown report (figures as linked PNGs), in the page's order.
pub fn markdown(p: &Page) -> String {
    let mut s = format!("# {}\n\n", p.title);
    for l in &p.head {
        let _ = write!(s, "**{l}**\n\n");
    }
    let mut details = false;
    for sec in &p.sections {
        if sec.collapsed && !details {
            s.push_str("## Details\n\n");
            details = true;
        }
        let level = if sec.collapsed { "###" } else { "##" };
        let _ = write!(s, "{level} {}\n\n", sec.title);
        for para in &sec.paragraphs {
            let _ = write!(s, "{para}\n\n");
        }
        let figs = md_figures(&sec.figures);
        if sec.figures_first {
            s.push_str(&figs);
        }
        for t in &sec.tables {
            if !t.title.is_empty() {
                let _ = write!(s, "{level}# {}\n\n", t.title);
            }
            let _ = writeln!(s, "{}", t.md);
            for n in &t.notes {
                let _ = write!(s, "{n}\n\n");
            }
        }
        if !sec.figures_first {
            s.push_str(&figs);
        }
    }
    s
}
