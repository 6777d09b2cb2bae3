//! Feature dashboards: for chosen latents, the contexts that activate them most (with per-token
//! activations), their activation histogram, the tokens their decoder direction promotes and
//! suppresses through the unembedding, and the tokens whose embeddings drive them directly. The
//! data is serializable (JSON); `circuits::report` draws it as HTML.

use interp_core::{CacheSpec, HookedTransformer};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::dictionary::SparseDictionary;
use crate::error::{Error, Result};

/// One context and the latent's activation at each of its tokens.
#[derive(Clone, Debug, Serialize)]
pub struct ContextExample {
    /// The context's tokens as text.
    pub tokens: Vec<String>,
    /// The latent's activation at each token.
    pub activations: Vec<f64>,
    /// The largest of them.
    pub max_activation: f64,
}

/// Everything shown for one latent.
#[derive(Clone, Debug, Serialize)]
pub struct LatentDashboard {
    /// The latent's index.
    pub latent: i64,
    /// Fraction of tokens it fires on.
    pub density: f64,
    /// Its largest activation on the contexts.
    pub max_activation: f64,
    /// The contexts it fires on most, strongest first.
    pub top_contexts: Vec<ContextExample>,
    /// Histogram of its non-zero activations: (bin lower edge, count), 20 bins up to the max.
    pub histogram: Vec<(f64, i64)>,
    /// Tokens whose logits its decoder row raises most / lowers most (`W_dec[i] @ W_U`); empty
    /// when the dictionary does not write a d_model-wide activation.
    pub top_logits: Vec<(String, f64)>,
    /// Tokens whose logits its decoder row lowers most.
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
