//! Where a command's results go: tables (parquet + CSV), charts (SVG + PNG) and JSON files in an
//! output folder, and the same tables and charts in an HTML report.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::html::Report;
use crate::table::Table;

/// Rows of a table shown in the report (the files hold all of them).
const REPORT_ROWS: usize = 25;

/// An analysis's output folder and the report section it fills. Every analysis result has a
/// `write(&self, out: &mut Output)` that puts its tables, charts and JSON here.
pub struct Output {
    /// The folder files are written to.
    pub dir: PathBuf,
    /// `dir` relative to the report's folder, prefixed to file names in captions ("" at the top).
    rel: String,
    /// The HTML report the files are shown in.
    pub report: Report,
}

impl Output {
    /// Creates `dir`; `title` heads the report.
    pub fn new(dir: &Path, title: &str) -> Result<Output> {
        Output::nested(dir, "", title)
    }

    /// An output in the subfolder `rel` of a report's folder `root`.
    pub fn nested(root: &Path, rel: &str, title: &str) -> Result<Output> {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let rel = if rel.is_empty() { String::new() } else { format!("{rel}/") };
        Ok(Output { dir, rel, report: Report::new(title) })
    }

    /// Writes DIR/stem.parquet and DIR/stem.csv, and shows the first rows in the report.
    pub fn table(&mut self, stem: &str, caption: &str, table: &Table) -> Result<()> {
        let path = self.dir.join(stem);
        table.write(&path)?;
        println!("wrote {}.parquet and .csv", path.display());
        self.report.table(&format!("{caption} — {}{stem}.parquet / .csv", self.rel), table, REPORT_ROWS);
        Ok(())
    }

    /// Writes DIR/stem.svg and DIR/stem.png and embeds the PNG in the report.
    pub fn chart(&mut self, stem: &str, caption: &str, draw: impl Fn(&Path) -> Result<()>) -> Result<()> {
        for ext in ["svg", "png"] {
            let path = self.dir.join(stem).with_extension(ext);
            draw(&path)?;
            println!("wrote {}", path.display());
        }
        self.report.image(&self.dir.join(stem).with_extension("png"), &format!("{caption} — {}{stem}.svg / .png", self.rel))?;
        Ok(())
    }

    /// Writes DIR/name (pretty JSON) and links it from the report.
    pub fn json(&mut self, name: &str, what: &str, value: &serde_json::Value) -> Result<()> {
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        std::fs::write(&path, text).map_err(Error::io(&path))?;
        println!("wrote {}", path.display());
        self.report.link(&format!("{}{name}", self.rel), &format!("{what}: {}{name}", self.rel));
        Ok(())
    }

    /// Writes DIR/report.html.
    pub fn write_report(&self) -> Result<PathBuf> {
        let path = self.dir.join("report.html");
        self.report.write(&path)?;
        println!("wrote {}", path.display());
        Ok(path)
    }
}
