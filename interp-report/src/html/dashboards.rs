//! Feature dashboards (`transcoders::LatentDashboard`) as HTML: activation histogram, promoted and
//! suppressed logits, direct token inputs, top contexts shaded by activation.

use std::fmt::Write as _;
use std::path::Path;

use transcoders::{visible_token, LatentDashboard};

use super::{html_escape, page};
use crate::error::{Error, Result};

/// Tokens of a top context shown around its peak activation.
const CONTEXT_WINDOW: usize = 24;

/// The dashboards as an HTML fragment (one `h3` per latent), for a page or a report.
pub fn dashboards_html(dashboards: &[LatentDashboard]) -> String {
    let mut h = String::from("<div class=dash>");
    for d in dashboards {
        let _ = write!(h, "<h3>Latent {}</h3><p>density {:.3}% &middot; max activation {:.3}</p>", d.latent, 100.0 * d.density, d.max_activation);
        let peak = d.histogram.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
        let _ = write!(h, "<svg width=420 height=90 role=img aria-label=\"activation histogram\">");
        for (i, (lo, count)) in d.histogram.iter().enumerate() {
            let height = 70.0 * *count as f64 / peak;
            let _ = write!(h, "<rect x={} y={:.1} width=19 height={height:.1} fill=#e67e22><title>{lo:.3}: {count}</title></rect>", 10 + 20 * i, 75.0 - height);
        }
        let _ = write!(h, "<text x=10 y=88 font-size=10>0</text><text x=380 y=88 font-size=10>{:.2}</text></svg><div class=row>", d.max_activation);
        for (name, rows) in [("promoted logits", &d.top_logits), ("suppressed logits", &d.bottom_logits), ("direct token inputs", &d.direct_tokens)] {
            if rows.is_empty() {
                continue;
            }
            let _ = write!(h, "<table><tr><th colspan=2>{name}</th></tr>");
            for (tok, v) in rows {
                let _ = write!(h, "<tr><td>{}</td><td>{v:+.3}</td></tr>", html_escape(&visible_token(tok)));
            }
            h.push_str("</table>");
        }
        let _ = write!(h, "</div><h4>Top contexts ({CONTEXT_WINDOW} tokens around the peak, which is outlined)</h4>");
        for c in &d.top_contexts {
            h.push_str("<div class=ctx>");
            let (range, peak) = c.window(CONTEXT_WINDOW);
            for (i, (tok, a)) in c.tokens[range.clone()].iter().zip(&c.activations[range]).enumerate() {
                let alpha = if d.max_activation > 0.0 { (a / d.max_activation).clamp(0.0, 1.0) } else { 0.0 };
                let outline = if i == peak { ";outline:1px solid #a04000" } else { "" };
                let _ =
                    write!(h, "<span style=\"background:rgba(230,126,34,{alpha:.2}){outline}\" title=\"{a:.3}\">{}</span>", html_escape(&visible_token(tok)));
            }
            h.push_str("</div>");
        }
    }
    h.push_str("</div>");
    h
}

/// Writes `dashboards.json` and a self-contained `dashboards.html` into `dir`.
pub fn write_dashboards(dashboards: &[LatentDashboard], title: &str, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let json_path = dir.join("dashboards.json");
    let json = serde_json::to_string_pretty(dashboards).map_err(|e| Error::Input(format!("{}: {e}", json_path.display())))?;
    std::fs::write(&json_path, json).map_err(Error::io(&json_path))?;
    let html_path = dir.join("dashboards.html");
    std::fs::write(&html_path, page(title, &dashboards_html(dashboards))).map_err(Error::io(&html_path))
}
