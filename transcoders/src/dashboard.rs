//! Feature dashboards: for chosen latents, the contexts that activate them most (with per-token
//! activations), their activation histogram, the tokens their decoder direction promotes and
//! suppresses through the unembedding, and the tokens whose embeddings drive them directly. The
//! data is serializable (JSON); `report::html` draws it as HTML.

use interp_core::{CacheSpec, HookedTransformer};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::clt::TranscoderSet;
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

impl ContextExample {
    /// The range of `width` tokens around the peak activation (the peak three quarters in, as
    /// far as the context allows) and the peak's index in it.
    pub fn window(&self, width: usize) -> (std::ops::Range<usize>, usize) {
        let peak = self.activations.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        let start = peak.saturating_sub(width * 3 / 4).min(self.tokens.len().saturating_sub(width));
        let end = (start + width).min(self.tokens.len());
        (start..end, peak - start)
    }
}

/// A token as people can see it: newlines, tabs and carriage returns as ⏎ → ↵ (as
/// circuit-tracer's viewer shows them), and a token of spaces alone as middle dots.
pub fn visible_token(token: &str) -> String {
    let shown = token.replace('\n', "⏎").replace('\t', "→").replace('\r', "↵");
    if !shown.is_empty() && shown.chars().all(|c| c == ' ') {
        "·".repeat(shown.len())
    } else {
        shown
    }
}

/// Up to `n` latents a person can read, from their log10 densities [d_sae]: firing neither too
/// rarely to have examples nor so often that they mean little, the ones closest to 0.3% of tokens
/// first (dead latents never).
pub fn readable_latents(log10_density: &Tensor, n: usize) -> Result<Vec<i64>> {
    let d = Vec::<f64>::try_from(log10_density.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
    let mut alive: Vec<(f64, i64)> = d.iter().enumerate().filter(|(_, &v)| v > -9.0).map(|(i, &v)| ((v + 2.5).abs(), i as i64)).collect();
    alive.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(alive.into_iter().take(n).map(|(_, i)| i).collect())
}

/// `n` latents drawn uniformly at random (seeded, without replacement) from those alive on the
/// evaluation contexts, given their log10 densities [d_sae]: a sample that is not cherry-picked.
/// Returned in increasing order.
pub fn random_latents(log10_density: &Tensor, n: usize, seed: u64) -> Result<Vec<i64>> {
    let d = Vec::<f64>::try_from(log10_density.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
    let mut alive: Vec<i64> = d.iter().enumerate().filter(|(_, &v)| v > -9.0).map(|(i, _)| i as i64).collect();
    let mut state = seed;
    for i in 0..n.min(alive.len()) {
        state = interp_core::splitmix(state);
        let j = i + (state % (alive.len() - i) as u64) as usize;
        alive.swap(i, j);
    }
    alive.truncate(n);
    alive.sort_unstable();
    Ok(alive)
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

/// Where a dashboard's latents come from: the hook read, how it is encoded, and each latent's
/// encoder direction and total decoder direction when they are d_model wide.
struct Latents<'a> {
    hook: String,
    d_sae: i64,
    encode: Encoder<'a>,
    encoder: Option<Direction<'a>>,
    decoder: Option<Direction<'a>>,
}

/// Latents [.., d_sae] of the hook's activations [.., d].
type Encoder<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;

/// A latent's direction [d_model] by index.
type Direction<'a> = Box<dyn Fn(i64) -> Result<Tensor> + 'a>;

/// Dashboards of `latents` over `contexts` [n, ctx] (token ids), `n_examples` contexts each;
/// activations at position 0 and at BOS tokens are left out.
pub fn latent_dashboards(
    dict: &SparseDictionary,
    model: &HookedTransformer,
    contexts: &Tensor,
    latents: &[i64],
    n_examples: usize,
) -> Result<Vec<LatentDashboard>> {
    let d = model.cfg.d_model;
    let source = Latents {
        hook: dict.cfg.hook_name.clone(),
        d_sae: dict.cfg.d_sae,
        encode: Box::new(|x| dict.encode(x)),
        encoder: (dict.cfg.d_in == d).then(|| Box::new(|i| Ok(dict.w_enc.f_select(1, i)?)) as Direction),
        decoder: (dict.cfg.d_out == d).then(|| Box::new(|i| Ok(dict.w_dec.f_select(0, i)?)) as Direction),
    };
    dashboards(&source, model, contexts, latents, n_examples)
}

/// Dashboards of layer `layer`'s `latents` of a transcoder set (see [`latent_dashboards`]); a
/// CLT latent's logit effects are those of its decoders summed over the layers it writes to.
pub fn set_dashboards(
    set: &TranscoderSet,
    layer: usize,
    model: &HookedTransformer,
    contexts: &Tensor,
    latents: &[i64],
    n_examples: usize,
) -> Result<Vec<LatentDashboard>> {
    match set {
        TranscoderSet::PerLayer(dicts) => latent_dashboards(&dicts[layer], model, contexts, latents, n_examples),
        TranscoderSet::CrossLayer(clt) => {
            let source = Latents {
                hook: clt.cfg.hook_in(layer),
                d_sae: clt.cfg.d_sae,
                encode: Box::new(move |x| clt.encode(layer, x)),
                encoder: Some(Box::new(move |i| Ok(clt.w_enc.f_get(layer as i64)?.f_select(1, i)?))),
                decoder: Some(Box::new(move |i| Ok(clt.w_dec[layer].f_get(i)?.f_sum_dim_intlist(0, false, Kind::Float)?))),
            };
            dashboards(&source, model, contexts, latents, n_examples)
        }
    }
}

fn dashboards(source: &Latents<'_>, model: &HookedTransformer, contexts: &Tensor, latents: &[i64], n_examples: usize) -> Result<Vec<LatentDashboard>> {
    let _guard = tch::no_grad_guard();
    if let Some(&bad) = latents.iter().find(|&&l| l < 0 || l >= source.d_sae) {
        return Err(Error::setting("latent", bad, format!("in 0..{} (the dictionary's latents)", source.d_sae)));
    }
    let device = model.device();
    let bos = model.tokenizer().and_then(|t| t.bos_token_id());
    let index = Tensor::f_from_slice(latents)?.f_to_device(device)?;
    // Activations of the chosen latents only: [n, ctx, latents].
    let mut acts = Vec::new();
    for chunk in contexts.f_split(16, 0)? {
        let chunk = chunk.f_to_device(device)?;
        let (_, cache) = model.run_with_cache(&chunk, CacheSpec::names([&source.hook]))?;
        let f = (source.encode)(cache.get(&source.hook)?)?.f_index_select(-1, &index)?;
        // Position 0 and BOS tokens (attention sinks) are left out, as in training and evaluation.
        let mut skip = chunk.f_zeros_like()?.f_to_kind(Kind::Bool)?;
        let _ = skip.f_narrow(1, 0, 1)?.f_fill_(1)?;
        if let Some(b) = bos {
            skip = skip.f_logical_or(&chunk.f_eq(b)?)?;
        }
        acts.push(f.f_masked_fill(&skip.f_unsqueeze(-1)?, 0.0)?);
    }
    let acts = Tensor::f_cat(&acts, 0)?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?;
    let n_tokens = (acts.size()[0] * acts.size()[1]) as f64;
    let (w_u, w_e) = (model.w_u(), model.w_e());
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
            top_contexts.push(ContextExample {
                tokens: model.to_str_tokens(&contexts.f_select(0, c)?)?,
                activations: Vec::<f64>::try_from(a.f_select(0, c)?)?,
                max_activation: best,
            });
        }
        let nonzero = a.f_masked_select(&a.f_gt(0.0)?)?;
        let mut histogram: Vec<(f64, i64)> = (0..20).map(|b| (max_activation * b as f64 / 20.0, 0)).collect();
        if max_activation > 0.0 {
            for v in Vec::<f64>::try_from(&nonzero)? {
                histogram[((v / max_activation * 20.0) as usize).min(19)].1 += 1;
            }
        }
        let (mut top_logits, mut bottom_logits, mut direct_tokens) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(decoder) = &source.decoder {
            let effect = decoder(latent)?.f_to_kind(w_u.kind())?.f_matmul(&w_u)?;
            top_logits = top_tokens(model, &effect, 10, true)?;
            bottom_logits = top_tokens(model, &effect, 10, false)?;
        }
        if let Some(encoder) = &source.encoder {
            let drive = w_e.f_matmul(&encoder(latent)?.f_to_kind(w_e.kind())?)?;
            direct_tokens = top_tokens(model, &drive, 10, true)?;
        }
        out.push(LatentDashboard {
            latent,
            density: nonzero.size()[0] as f64 / n_tokens,
            max_activation,
            top_contexts,
            histogram,
            top_logits,
            bottom_logits,
            direct_tokens,
        });
    }
    Ok(out)
}
