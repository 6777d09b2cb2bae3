//! Evaluation of a dictionary on a model: reconstruction (L0, FVU, shrinkage), downstream loss
//! when its output is spliced into the model (CE loss recovered, delta loss, KL), and latent
//! density (dead and dense fractions, log10 density histogram); or on activations alone (cached
//! or in memory), everything but the downstream loss.

use interp_core::{CacheSpec, HookedTransformer, Hooks};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::clt::TranscoderSet;
use crate::dictionary::SparseDictionary;
use crate::error::{Error, Result};
use crate::store::ActivationSource;

/// A latent firing on more than this fraction of tokens counts as dense.
pub const DENSE_THRESHOLD: f64 = 0.1;

/// Every metric of [`evaluate`] (or, without a model, of [`evaluate_activations`]) over all
/// evaluated tokens (position 0 and BOS tokens excluded).
#[derive(Debug, Serialize)]
pub struct DictionaryMetrics {
    /// Tokens evaluated.
    pub n_tokens: i64,
    /// Mean number of active latents per token.
    pub l0: f64,
    /// sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over the whole set (dataset mean).
    pub fvu: f64,
    /// 1 - FVU.
    pub explained_variance: f64,
    /// Mean ||y_hat|| / ||y|| per token.
    pub shrinkage: f64,
    /// The model's loss with the reconstruction spliced in; `None` when evaluated on
    /// activations alone.
    #[serde(flatten)]
    pub downstream: Option<DownstreamMetrics>,
    /// Fraction of latents that never fired.
    pub dead_fraction: f64,
    /// Fraction of latents firing on more than 10% of tokens.
    pub dense_fraction: f64,
    /// Counts of latents per log10-density bin: (bin lower edge, count); dead latents apart.
    pub log10_density_histogram: Vec<(f64, i64)>,
    /// log10 of each latent's firing frequency [d_sae] (-10 for dead latents), as SAELens's
    /// `sparsity.safetensors` stores it.
    #[serde(skip)]
    pub log10_density: Tensor,
}

/// The model's next-token loss with a dictionary's reconstruction spliced in at its output hook.
#[derive(Debug, Serialize)]
pub struct DownstreamMetrics {
    /// Next-token cross-entropy of the untouched model.
    pub ce_clean: f64,
    /// Cross-entropy with the reconstruction spliced in.
    pub ce_spliced: f64,
    /// Cross-entropy with the hook zero-ablated.
    pub ce_zero_ablation: f64,
    /// (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean).
    pub ce_loss_recovered: f64,
    /// ce_spliced - ce_clean.
    pub delta_loss: f64,
    /// Mean KL(clean || spliced) of the next-token distributions.
    pub kl_spliced: f64,
}

/// Sums over evaluated tokens from which the reconstruction and density metrics follow.
struct Reconstruction {
    sq_err: f64,
    y_sum: Tensor,
    y_sq: f64,
    l0_sum: f64,
    shrink_sum: f64,
    n_tokens: i64,
    fired: Tensor,
}

impl Reconstruction {
    /// Empty sums for targets of width `d_out` and `d_sae` latents.
    fn new(d_out: i64, d_sae: i64, device: tch::Device) -> Result<Self> {
        let acc = |n| Tensor::f_zeros([n], (Kind::Double, device));
        Ok(Reconstruction { sq_err: 0.0, y_sum: acc(d_out)?, y_sq: 0.0, l0_sum: 0.0, shrink_sum: 0.0, n_tokens: 0, fired: acc(d_sae)? })
    }

    /// Adds tokens: their targets `y` [n, d_out], reconstructions `recon` [n, d_out] and latents
    /// `f` [n, d_sae].
    fn add(&mut self, y: &Tensor, recon: &Tensor, f: &Tensor) -> Result<()> {
        self.n_tokens += y.size()[0];
        self.sq_err += y.f_sub(recon)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        self.y_sum = self.y_sum.f_add(&y.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        self.y_sq += y.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let active = f.f_gt(0.0)?;
        self.l0_sum += active.f_sum(Kind::Double)?.f_double_value(&[])?;
        self.fired = self.fired.f_add(&active.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        let ratio = recon.f_norm_scalaropt_dim(2.0, [1], false)?.f_div(&y.f_norm_scalaropt_dim(2.0, [1], false)?.f_clamp_min(1e-12)?)?;
        self.shrink_sum += ratio.f_sum(Kind::Double)?.f_double_value(&[])?;
        Ok(())
    }

    /// sum ||y - mean(y)||^2 over the tokens added.
    fn total_variance(&self) -> Result<f64> {
        let mean_sq = self.y_sum.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])? / self.n_tokens.max(1) as f64;
        Ok((self.y_sq - mean_sq).max(1e-30))
    }

    fn finish(self, downstream: Option<DownstreamMetrics>) -> Result<DictionaryMetrics> {
        if self.n_tokens == 0 {
            return Err(Error::Input("no tokens to evaluate (every position was position 0 or BOS)".into()));
        }
        let n = self.n_tokens as f64;
        let fvu = self.sq_err / self.total_variance()?;
        let density = self.fired.f_div_scalar(n)?;
        let log10_density = density.f_clamp_min(1e-10)?.f_log10()?.f_to_kind(Kind::Float)?;
        let dead_fraction = density.f_eq(0.0)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?;
        let dense_fraction = density.f_gt(DENSE_THRESHOLD)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?;
        let densities: Vec<f64> = Vec::<f64>::try_from(density.f_to_device(tch::Device::Cpu)?)?;
        let mut log10_density_histogram: Vec<(f64, i64)> = (0..12).map(|i| (-6.0 + 0.5 * i as f64, 0)).collect();
        for d in densities.iter().filter(|&&d| d > 0.0) {
            let bin = (((d.log10() + 6.0) / 0.5).floor().max(0.0) as usize).min(11);
            log10_density_histogram[bin].1 += 1;
        }
        Ok(DictionaryMetrics {
            n_tokens: self.n_tokens,
            l0: self.l0_sum / n,
            fvu,
            explained_variance: 1.0 - fvu,
            shrinkage: self.shrink_sum / n,
            downstream,
            dead_fraction,
            dense_fraction,
            log10_density_histogram,
            log10_density,
        })
    }
}

/// Evaluates `dict` on `n_batches` batches of `source` (cached or in-memory activations of its
/// hooks, no model needed): L0, FVU, shrinkage, dead and dense fractions; no downstream loss.
pub fn evaluate_activations(dict: &SparseDictionary, source: &mut dyn ActivationSource, n_batches: usize) -> Result<DictionaryMetrics> {
    let _guard = tch::no_grad_guard();
    let names = source.hook_names().to_vec();
    let find = |hook: &str| names.iter().position(|h| h == hook).ok_or_else(|| Error::MissingHook { hook: hook.to_string(), available: names.to_vec() });
    let (input, target) = (find(&dict.cfg.hook_name)?, find(&dict.cfg.hook_name_out)?);
    let mut acc = Reconstruction::new(dict.cfg.d_out, dict.cfg.d_sae, dict.device())?;
    for step in 0..n_batches.max(1) {
        let batch = source.batch(step)?;
        let (x, y) = (batch[input].f_to_device(dict.device())?, batch[target].f_to_device(dict.device())?);
        dict.check_width(&x, dict.cfg.d_in, &format!("activations of `{}`", dict.cfg.hook_name))?;
        dict.check_width(&y, dict.cfg.d_out, &format!("activations of `{}`", dict.cfg.hook_name_out))?;
        let f = dict.encode(&x)?;
        acc.add(&y, &dict.decode(&f, Some(&x))?, &f)?;
    }
    acc.finish(None)
}

/// Mean next-token NLL and log-probs of `logits` [b, p, v] on `tokens` [b, p].
fn next_token_nll(logits: &Tensor, tokens: &Tensor) -> Result<(f64, Tensor)> {
    let p = tokens.size()[1];
    let logp = logits.f_narrow(1, 0, p - 1)?.f_log_softmax(-1, Kind::Float)?;
    let target = tokens.f_narrow(1, 1, p - 1)?.f_unsqueeze(-1)?;
    let nll = logp.f_gather(-1, &target, false)?.f_neg()?.f_mean(Kind::Double)?.f_double_value(&[])?;
    Ok((nll, logp))
}

/// Sums over batches from which the downstream metrics follow.
#[derive(Default)]
struct Downstream {
    ce_clean: f64,
    ce_spliced: f64,
    ce_zero: f64,
    kl: f64,
    rows: f64,
}

impl Downstream {
    /// Adds a batch of `tokens` [b, p]: the clean, spliced and zero-ablated logits [b, p, v].
    fn add(&mut self, tokens: &Tensor, clean: &Tensor, spliced: &Tensor, zero: &Tensor) -> Result<()> {
        let (clean_nll, clean_logp) = next_token_nll(clean, tokens)?;
        let (spliced_nll, spliced_logp) = next_token_nll(spliced, tokens)?;
        let (zero_nll, _) = next_token_nll(zero, tokens)?;
        // Weighted by rows, so a short last chunk counts for what it holds.
        let rows = tokens.size()[0] as f64;
        self.ce_clean += clean_nll * rows;
        self.ce_spliced += spliced_nll * rows;
        self.ce_zero += zero_nll * rows;
        self.kl += rows
            * clean_logp
                .f_exp()?
                .f_mul(&clean_logp.f_sub(&spliced_logp)?)?
                .f_sum_dim_intlist(-1, false, Kind::Double)?
                .f_mean(Kind::Double)?
                .f_double_value(&[])?;
        self.rows += rows;
        Ok(())
    }

    fn finish(self) -> DownstreamMetrics {
        let (ce_clean, ce_spliced, ce_zero) = (self.ce_clean / self.rows, self.ce_spliced / self.rows, self.ce_zero / self.rows);
        DownstreamMetrics {
            ce_clean,
            ce_spliced,
            ce_zero_ablation: ce_zero,
            ce_loss_recovered: (ce_zero - ce_spliced) / (ce_zero - ce_clean),
            delta_loss: ce_spliced - ce_clean,
            kl_spliced: self.kl / self.rows,
        }
    }
}

/// The evaluation contexts checked, and per batch of `batch` contexts: the tokens on the model's
/// device and the mask [b, p] of positions evaluated (not position 0, not BOS).
fn evaluated_batches(model: &HookedTransformer, contexts: &Tensor, batch: i64) -> Result<Vec<(Tensor, Tensor)>> {
    if contexts.dim() != 2 || contexts.size()[1] < 2 {
        return Err(Error::Input(format!("evaluation contexts must be [n, ctx >= 2], found {:?}", contexts.size())));
    }
    let bos = model.tokenizer().and_then(|t| t.bos_token_id());
    contexts
        .f_split(batch.max(1), 0)?
        .into_iter()
        .map(|tokens| {
            let tokens = tokens.f_to_device(model.device())?;
            let mut keep = tokens.f_ones_like()?.f_to_kind(Kind::Bool)?;
            let _ = keep.f_narrow(1, 0, 1)?.f_fill_(0)?;
            if let Some(b) = bos {
                keep = keep.f_logical_and(&tokens.f_ne(b)?)?;
            }
            Ok((tokens, keep))
        })
        .collect()
}

/// The model's logits on `tokens` with each `(hook, replacement)` spliced in where `keep`.
fn spliced(model: &HookedTransformer, tokens: &Tensor, keep: &Tensor, replacements: Vec<(String, Tensor)>) -> Result<Tensor> {
    let mut hooks = Hooks::new();
    for (hook, replacement) in replacements {
        let keep = keep.f_unsqueeze(-1)?;
        hooks = hooks.add(hook, move |act, _| Ok(Some(replacement.f_to_kind(act.kind())?.f_where_self(&keep, act)?)));
    }
    Ok(model.run_with_hooks(tokens, hooks)?)
}

/// Evaluates `dict` on `model` over `contexts` [n, ctx] token ids, `batch` contexts per forward.
pub fn evaluate(dict: &SparseDictionary, model: &HookedTransformer, contexts: &Tensor, batch: i64) -> Result<DictionaryMetrics> {
    let _guard = tch::no_grad_guard();
    let c = &dict.cfg;
    for hook in [&c.hook_name, &c.hook_name_out] {
        model.hook_point(hook)?;
    }
    let mut acc = Reconstruction::new(dict.cfg.d_out, dict.cfg.d_sae, model.device())?;
    let mut downstream = Downstream::default();
    for (tokens, keep) in evaluated_batches(model, contexts, batch)? {
        let out = model.runner(&tokens).cache(CacheSpec::names([&c.hook_name, &c.hook_name_out])).run()?;
        let cache = out.cache.ok_or_else(|| Error::Input("no cache".into()))?;
        let (x, y) = (cache.get(&c.hook_name)?.f_to_kind(Kind::Float)?, cache.get(&c.hook_name_out)?.f_to_kind(Kind::Float)?);
        let f = dict.encode(&x)?;
        let recon = dict.decode(&f, Some(&x))?;
        let kept = |t: &Tensor| t.f_index(&[Some(keep.shallow_clone())]);
        acc.add(&kept(&y)?, &kept(&recon)?, &kept(&f)?)?;
        let zero = spliced(model, &tokens, &keep, vec![(c.hook_name_out.clone(), recon.f_zeros_like()?)])?;
        let with_recon = spliced(model, &tokens, &keep, vec![(c.hook_name_out.clone(), recon)])?;
        downstream.add(&tokens, &out.output, &with_recon, &zero)?;
    }
    acc.finish(Some(downstream.finish()))
}

/// Every metric of [`evaluate_set`]: per layer, and for the whole set spliced in at once.
#[derive(Debug, Serialize)]
pub struct SetMetrics {
    /// What was evaluated ([`TranscoderSet::describe`]).
    pub set: String,
    /// Tokens evaluated.
    pub n_tokens: i64,
    /// Active latents per token, summed over layers.
    pub l0: f64,
    /// Pooled FVU: every layer's squared error over every layer's variance.
    pub fvu: f64,
    /// The model's loss with every layer's reconstruction spliced in at once; the zero-ablation
    /// baseline zeroes every layer's output.
    pub downstream: DownstreamMetrics,
    /// Fraction of all latents that never fired.
    pub dead_fraction: f64,
    /// Per layer: L0, FVU, shrinkage, dead and dense fractions (no downstream loss).
    pub layers: Vec<DictionaryMetrics>,
}

/// Evaluates a whole transcoder set (per-layer transcoders or a CLT) on `model` over `contexts`
/// [n, ctx], `batch` contexts per forward: each layer's reconstruction, and the next-token loss
/// with every layer replaced at once (CE loss recovered against zero-ablating every layer).
pub fn evaluate_set(set: &TranscoderSet, model: &HookedTransformer, contexts: &Tensor, batch: i64) -> Result<SetMetrics> {
    let _guard = tch::no_grad_guard();
    let n = set.n_layers();
    let hooks: Vec<(String, String)> = (0..n).map(|l| set.hooks(l)).collect();
    let names: Vec<&String> = hooks.iter().flat_map(|(i, o)| [i, o]).collect();
    for hook in &names {
        model.hook_point(hook)?;
    }
    let mut layers = (0..n).map(|l| Reconstruction::new(model.cfg.d_model, set.d_sae(l), model.device())).collect::<Result<Vec<_>>>()?;
    let mut downstream = Downstream::default();
    for (tokens, keep) in evaluated_batches(model, contexts, batch)? {
        let out = model.runner(&tokens).cache(CacheSpec::names(&names)).run()?;
        let cache = out.cache.ok_or_else(|| Error::Input("no cache".into()))?;
        let x: Vec<Tensor> = hooks.iter().map(|(i, _)| Ok(cache.get(i)?.f_to_kind(Kind::Float)?)).collect::<Result<_>>()?;
        let f: Vec<Tensor> = x.iter().enumerate().map(|(l, x)| set.encode(l, x)).collect::<Result<_>>()?;
        let recon = set.decode(&x, &f)?;
        let kept = |t: &Tensor| t.f_index(&[Some(keep.shallow_clone())]);
        for (l, (_, o)) in hooks.iter().enumerate() {
            let y = cache.get(o)?.f_to_kind(Kind::Float)?;
            layers[l].add(&kept(&y)?, &kept(&recon[l])?, &kept(&f[l])?)?;
        }
        let zero = spliced(model, &tokens, &keep, hooks.iter().zip(&recon).map(|((_, o), r)| Ok((o.clone(), r.f_zeros_like()?))).collect::<Result<_>>()?)?;
        let with_recon = spliced(model, &tokens, &keep, hooks.iter().zip(recon).map(|((_, o), r)| (o.clone(), r)).collect())?;
        downstream.add(&tokens, &out.output, &with_recon, &zero)?;
    }
    let sq_err: f64 = layers.iter().map(|r| r.sq_err).sum();
    let variance: f64 = layers.iter().map(Reconstruction::total_variance).collect::<Result<Vec<_>>>()?.iter().sum();
    let n_tokens = layers.first().map_or(0, |r| r.n_tokens);
    let l0 = layers.iter().map(|r| r.l0_sum).sum::<f64>() / n_tokens.max(1) as f64;
    let layers = layers.into_iter().map(|r| r.finish(None)).collect::<Result<Vec<_>>>()?;
    let dead_fraction = layers.iter().map(|m| m.dead_fraction).sum::<f64>() / n.max(1) as f64;
    Ok(SetMetrics { set: set.describe(), n_tokens, l0, fvu: sq_err / variance.max(1e-30), downstream: downstream.finish(), dead_fraction, layers })
}
