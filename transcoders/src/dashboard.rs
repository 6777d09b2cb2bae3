//! Feature dashboards: for chosen latents, the contexts that activate them most (with per-token
//! activations), their activation histogram, the tokens their decoder direction promotes and
//! suppresses through the unembedding, and the tokens whose embeddings drive them directly.

use std::fmt::Write as _;
use std::path::Path;

use interp_core::{CacheSpec, HookedTransformer};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::dictionary::SparseDictionary;
use crate::error::{Error, Result};

/// One context and the latent's activation at each of its tokens.
#[derive(Clone, Debug, Serialize)]
pub struct ContextExample {
    pub tokens: Vec<String>,
    pub activations: Vec<f64>,
    pub max_activation: f64,
}

/// Everything shown for one latent.
#[derive(Clone, Debug, Serialize)]
pub struct LatentDashboard {
    pub latent: i64,
    /// Fraction of tokens it fires on.
    pub density: f64,
    pub max_activation: f64,
    pub top_contexts: Vec<ContextExample>,
    /// Histogram of its non-zero activations: (bin lower edge, count), 20 bins up to the max.
    pub histogram: Vec<(f64, i64)>,
    /// Tokens whose logits its decoder row raises most / lowers most (`W_dec[i] @ W_U`); empty
    /// when the dictionary does not write a d_model-wide activation.
    pub top_logits: Vec<(String, f64)>,
    pub bottom_logits: Vec<(String, f64)>,
    /// Tokens whose embedding most excites it directly (`W_E @ W_enc[:, i]`); meaningful for
    /// hooks close to the embeddings, empty when the input is not d_model wide.
    pub direct_tokens: Vec<(String, f64)>,
}

fn top_tokens(model: &HookedTransformer, scores: &Tensor, n: i64, largest: bool) -> Result<Vec<(String, f64)>> {
    let (vals, idx) = scores.f_topk(n.min(scores.size()[0]), 0, largest, true)?;
    let vals: Vec<f64> = Vec::<f64>::try_from(vals.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
    let names = model.to_str_tokens(&idx)?;
    Ok(names.into_iter().zip(vals).collect())
}

/// Dashboards of `latents` over `contexts` [n, ctx] (token ids), `n_examples` contexts each.
pub fn latent_dashboards(dict: &SparseDictionary, model: &HookedTransformer, contexts: &Tensor, latents: &[i64], n_examples: usize) -> Result<Vec<LatentDashboard>> {
    let _guard = tch::no_grad_guard();
    if let Some(&bad) = latents.iter().find(|&&l| l < 0 || l >= dict.cfg.d_sae) {
        return Err(Error::Input(format!("latent {bad} is out of range (the dictionary has {})", dict.cfg.d_sae)));
    }
    let device = model.device();
    let index = Tensor::f_from_slice(latents)?.f_to_device(device)?;
    // Activations of the chosen latents only: [n, ctx, latents].
    let mut acts = Vec::new();
    for chunk in contexts.f_split(16, 0)? {
        let chunk = chunk.f_to_device(device)?;
        let (_, cache) = model.run_with_cache(&chunk, CacheSpec::names([&dict.cfg.hook_name]))?;
        let f = dict.encode(cache.get(&dict.cfg.hook_name)?)?;
        acts.push(f.f_index_select(-1, &index)?);
    }
    let acts = Tensor::f_cat(&acts, 0)?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?;
    let n_tokens = (acts.size()[0] * acts.size()[1]) as f64;
    let w_u = (dict.cfg.d_out == model.cfg.d_model).then(|| model.w_u());
    let w_e = (dict.cfg.d_in == model.cfg.d_model).then(|| model.w_e().shallow_clone());
    let mut out = Vec::new();
    for (j, &latent) in latents.iter().enumerate() {
        let a = acts.f_select(2, j as i64)?; // [n, ctx]
        let per_context = a.f_amax([1], false)?;
        let max_activation = per_context.f_max()?.f_double_value(&[])?;
        let (_, order) = per_context.f_topk((n_examples as i64).min(per_context.size()[0]), 0, true, true)?;
        let mut top_contexts = Vec::new();
        for c in Vec::<i64>::try_from(order)? {
            let best = per_context.f_double_value(&[c])?;
            if best <= 0.0 {
                break;
            }
            top_contexts.push(ContextExample { tokens: model.to_str_tokens(&contexts.f_select(0, c)?)?, activations: Vec::<f64>::try_from(a.f_select(0, c)?)?, max_activation: best });
        }
        let nonzero = a.f_masked_select(&a.f_gt(0.0)?)?;
        let mut histogram: Vec<(f64, i64)> = (0..20).map(|b| (max_activation * b as f64 / 20.0, 0)).collect();
        if max_activation > 0.0 {
            for v in Vec::<f64>::try_from(&nonzero)? {
                histogram[((v / max_activation * 20.0) as usize).min(19)].1 += 1;
            }
        }
        let (mut top_logits, mut bottom_logits, mut direct_tokens) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(w_u) = &w_u {
            let effect = dict.w_dec.f_select(0, latent)?.f_to_kind(w_u.kind())?.f_matmul(w_u)?;
            top_logits = top_tokens(model, &effect, 10, true)?;
            bottom_logits = top_tokens(model, &effect, 10, false)?;
        }
        if let Some(w_e) = &w_e {
            let drive = w_e.f_matmul(&dict.w_enc.f_select(1, latent)?.f_to_kind(w_e.kind())?)?;
            direct_tokens = top_tokens(model, &drive, 10, true)?;
        }
        out.push(LatentDashboard { latent, density: nonzero.size()[0] as f64 / n_tokens, max_activation, top_contexts, histogram, top_logits, bottom_logits, direct_tokens });
    }
    Ok(out)
}

/// `s` with `&`, `<`, `>` and `"` escaped for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Styles the fragment of [`dashboards_html`] needs.
pub const DASHBOARD_CSS: &str = ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0}.ctx span{border-radius:2px}\
    .dash table{border-collapse:collapse;margin-right:2em}.dash td{padding:0 .5em;font-family:monospace}.row{display:flex}";

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
                let _ = write!(h, "<tr><td>{}</td><td>{v:+.3}</td></tr>", html_escape(tok));
            }
            h.push_str("</table>");
        }
        h.push_str("</div><h4>Top contexts</h4>");
        for c in &d.top_contexts {
            h.push_str("<div class=ctx>");
            for (tok, a) in c.tokens.iter().zip(&c.activations) {
                let alpha = if d.max_activation > 0.0 { (a / d.max_activation).clamp(0.0, 1.0) } else { 0.0 };
                let _ = write!(h, "<span style=\"background:rgba(230,126,34,{alpha:.2})\" title=\"{a:.3}\">{}</span>", html_escape(tok));
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
    let json = serde_json::to_string_pretty(dashboards).map_err(|e| Error::format(&json_path, e.to_string()))?;
    std::fs::write(&json_path, json).map_err(Error::io(&json_path))?;
    let h = format!(
        "<!doctype html><meta charset=utf-8><title>{t}</title><style>body{{font-family:sans-serif;max-width:70em;margin:auto}}{DASHBOARD_CSS}</style><h1>{t}</h1>{}",
        dashboards_html(dashboards),
        t = html_escape(title)
    );
    let html_path = dir.join("dashboards.html");
    std::fs::write(&html_path, h).map_err(Error::io(&html_path))
}
