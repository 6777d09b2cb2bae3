//! Presentation: self-contained HTML reports (sections of text, tables, charts and HTML fragments
//! in one file), feature dashboards as HTML (`dashboards.rs`), the pages that hold one graph or one
//! set of dashboards, and the HTML escaping and styles they share. Charts are embedded as PNG,
//! whose text was drawn with the embedded DejaVu font, so a page reads the same on every machine
//! and needs no other file.
//!
//! ```no_run
//! use interp_report::{Report, Table};
//! let mut table = Table::new(&["layer", "score"]);
//! table.push(vec![0usize.into(), 0.5.into()]);
//! let mut report = Report::new("My analysis");
//! report.section("Scores");
//! report.paragraph("One row per layer.");
//! report.table("scores", &table, 20);
//! report.write("out/report.html".as_ref())?;
//! # Ok::<(), interp_report::Error>(())
//! ```

use std::fmt::Write as _;
use std::path::Path;

mod dashboards;
mod graph;

pub use dashboards::{dashboards_html, write_dashboards};
pub use graph::{graph_view, write_graph_html, MAX_DRAWN_EDGES, MAX_DRAWN_NODES};

use crate::error::{Error, Result};
use crate::table::{Table, Value};

/// `s` with `&`, `<`, `>` and `"` escaped for HTML text and attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Styles of the attribution graph's view.
const GRAPH_CSS: &str =
    ".axis{font-size:13px;fill:#444} .tok{font-size:13px;font-family:monospace} .lbl{font-size:9px;fill:#333} .lbl2{font-size:9px;fill:#8a4b08}";

/// Styles of the dashboards fragment.
const DASHBOARD_CSS: &str = ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0}.ctx span{border-radius:2px}\
    .dash table{border-collapse:collapse;margin-right:2em}.dash td{padding:0 .5em;font-family:monospace}.row{display:flex}";

/// A fragment of this module (dashboards, a graph view) with the styles it needs, e.g. for
/// [`show_html`] in a notebook.
pub fn with_styles(fragment: &str) -> String {
    format!("<style>{GRAPH_CSS}{DASHBOARD_CSS}</style>{fragment}")
}

/// A self-contained page: `title` and `body`, an HTML fragment of this module's styles.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:20px}} {GRAPH_CSS}{DASHBOARD_CSS}</style></head><body>\n<h2>{t}</h2>\n{body}</body></html>\n",
        t = html_escape(title)
    )
}

/// Writes a self-contained HTML page around `view`, a fragment of
/// [`graph_view`].
pub fn write_graph_page(path: &Path, title: &str, view: &str) -> Result<()> {
    std::fs::write(path, page(title, view)).map_err(Error::io(path))
}

/// An HTML report built section by section.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Heads the page.
    pub title: String,
    /// Section titles, each followed by its HTML.
    parts: Vec<(String, String)>,
}

impl Report {
    /// An empty report titled `title`.
    pub fn new(title: &str) -> Self {
        Report { title: title.to_string(), parts: Vec::new() }
    }

    /// Starts a section (listed in the table of contents).
    pub fn section(&mut self, title: &str) {
        self.parts.push((title.to_string(), String::new()));
    }

    /// The sections of `other` appended to this report's.
    pub fn append(&mut self, other: Report) {
        self.parts.extend(other.parts);
    }

    /// The HTML of the current section (an untitled one before the first `section`).
    fn body(&mut self) -> &mut String {
        if self.parts.is_empty() {
            self.parts.push((String::new(), String::new()));
        }
        let last = self.parts.len() - 1;
        &mut self.parts[last].1
    }

    /// A heading inside the current section.
    pub fn subsection(&mut self, title: &str) {
        let _ = writeln!(self.body(), "<h3>{}</h3>", html_escape(title));
    }

    /// A paragraph of plain text (escaped).
    pub fn paragraph(&mut self, text: &str) {
        let _ = writeln!(self.body(), "<p>{}</p>", html_escape(text));
    }

    /// The first `max_rows` rows of `table` (see [`html_table`]).
    pub fn table(&mut self, caption: &str, table: &Table, max_rows: usize) {
        let html = html_table(caption, table, max_rows);
        self.body().push_str(&html);
    }

    /// Embeds the PNG at `path` with a caption.
    pub fn image(&mut self, path: &Path, caption: &str) -> Result<()> {
        let img = png_img(path, caption)?;
        let _ = writeln!(self.body(), "<figure>{img}<figcaption>{}</figcaption></figure>", html_escape(caption));
        Ok(())
    }

    /// A link to a file written next to the report (`href` relative to the report).
    pub fn link(&mut self, href: &str, text: &str) {
        let _ = writeln!(self.body(), "<p><a href=\"{}\">{}</a></p>", html_escape(href), html_escape(text));
    }

    /// Trusted HTML (a fragment such as [`dashboards_html`] or
    /// [`graph_view`]).
    pub fn html(&mut self, fragment: &str) {
        self.body().push_str(fragment);
        self.body().push('\n');
    }

    /// Everything added so far, as one page.
    pub fn to_html(&self) -> String {
        let (mut toc, mut body) = (String::from("<nav><ol>"), String::new());
        for (i, (title, html)) in self.parts.iter().enumerate() {
            if !title.is_empty() {
                let _ = write!(toc, "<li><a href=\"#s{i}\">{}</a></li>", html_escape(title));
                let _ = writeln!(body, "<h2 id=s{i}>{}</h2>", html_escape(title));
            }
            body.push_str(html);
        }
        toc.push_str("</ol></nav>");
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{CSS}{DASHBOARD_CSS}{GRAPH_CSS}</style></head><body>\n<h1>{t}</h1>\n{toc}\n{body}</body></html>\n",
            t = html_escape(&self.title)
        )
    }

    /// Writes the report as one self-contained HTML file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_html()).map_err(Error::io(path))
    }
}

/// The first `max_rows` rows of `table` as an HTML table (floats to 4 decimals, or 3 significant
/// digits in scientific notation when tiny or huge), captioned with how many rows it has.
pub fn html_table(caption: &str, table: &Table, max_rows: usize) -> String {
    let shown = table.rows.len().min(max_rows);
    let more = if shown < table.rows.len() { format!(", first {shown} shown") } else { String::new() };
    let mut h = format!("<table><caption>{} ({} rows{more})</caption><tr>", html_escape(caption), table.rows.len());
    for c in &table.columns {
        let _ = write!(h, "<th>{}</th>", html_escape(c));
    }
    h.push_str("</tr>\n");
    for row in &table.rows[..shown] {
        h.push_str("<tr>");
        for v in row {
            let cell = match v {
                Value::Float(x) if x.is_finite() && *x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-3) => format!("{x:.3e}"),
                Value::Float(x) if x.is_finite() => format!("{x:.4}"),
                // A missing value (NaN) is an empty cell, as in the CSV.
                Value::Float(x) if x.is_nan() => String::new(),
                other => other.to_string(),
            };
            let class = if matches!(v, Value::Text(_)) { "" } else { " class=n" };
            let _ = write!(h, "<td{class}>{}</td>", html_escape(&cell));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h
}

/// An `<img>` holding the PNG at `path` as a data URI.
fn png_img(path: &Path, alt: &str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    if !bytes.starts_with(b"\x89PNG") {
        return Err(Error::Input(format!("{}: not a PNG file", path.display())));
    }
    Ok(format!("<img alt=\"{}\" src=\"data:image/png;base64,{}\">", html_escape(alt), base64(&bytes)))
}

/// Shows HTML as the output of an evcxr notebook cell (evcxr's rich-output protocol on stdout).
/// evcxr keeps one output of each MIME type per cell, the last: show one chart, page or `Table`
/// per cell.
pub fn show_html(html: &str) {
    println!("EVCXR_BEGIN_CONTENT text/html\n{html}\nEVCXR_END_CONTENT");
}

/// Shows the PNG at `path` (a chart) as the output of an evcxr notebook cell.
pub fn show_png(path: &Path) -> Result<()> {
    show_html(&png_img(path, &path.display().to_string())?);
    Ok(())
}

impl Table {
    /// evcxr calls this when a `Table` is the value of a notebook cell: the first 50 rows as HTML.
    pub fn evcxr_display(&self) {
        show_html(&html_table("table", self, 50));
    }
}

const CSS: &str = "body{font-family:sans-serif;max-width:80em;margin:auto;padding:0 1em;color:#222}\
    h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;margin:.5em 0 1em}\
    caption{text-align:left;color:#555;font-size:.9em}th,td{padding:.1em .6em;border-bottom:1px solid #eee}\
    td.n{text-align:right;font-family:monospace}img{max-width:100%}figure{margin:1em 0}\
    figcaption{color:#555;font-size:.9em}nav ol{columns:2}";

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
