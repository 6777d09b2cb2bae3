//! Evaluation of a dictionary on a model: reconstruction (L0, FVU, shrinkage), downstream loss
//! when its output is spliced into the model (CE loss recovered, delta loss, KL), and latent
//! density (dead and dense fractions, log10 density histogram).

use interp_core::{CacheSpec, HookedTransformer, Hooks};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::dictionary::SparseDictionary;
use crate::error::{Error, Result};

/// A latent firing on more than this fraction of tokens counts as dense.
pub const DENSE_THRESHOLD: f64 = 0.1;

/// Every metric of [`evaluate`], over all evaluated tokens (position 0 and BOS tokens excluded).
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
    /// Next-token cross-entropy of the untouched model, spliced with the reconstruction, and
    /// with the hook zero-ablated.
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

/// Mean next-token NLL and log-probs of `logits` [b, p, v] on `tokens` [b, p].
fn next_token_nll(logits: &Tensor, tokens: &Tensor) -> Result<(f64, Tensor)> {
    let p = tokens.size()[1];
    let logp = logits.f_narrow(1, 0, p - 1)?.f_log_softmax(-1, Kind::Float)?;
    let target = tokens.f_narrow(1, 1, p - 1)?.f_unsqueeze(-1)?;
    let nll = logp.f_gather(-1, &target, false)?.f_neg()?.f_mean(Kind::Double)?.f_double_value(&[])?;
    Ok((nll, logp))
}

/// Evaluates `dict` on `model` over `contexts` [n, ctx] token ids, `batch` contexts per forward.
pub fn evaluate(dict: &SparseDictionary, model: &HookedTransformer, contexts: &Tensor, batch: i64) -> Result<DictionaryMetrics> {
    let _guard = tch::no_grad_guard();
    let c = &dict.cfg;
    for hook in [&c.hook_name, &c.hook_name_out] {
        model.hook_point(hook)?;
    }
    if contexts.dim() != 2 || contexts.size()[1] < 2 {
        return Err(Error::Input(format!("evaluation contexts must be [n, ctx >= 2], found {:?}", contexts.size())));
    }
    let bos = model.tokenizer().and_then(|t| t.bos_token_id());
    let device = model.device();
    let acc = |n| Tensor::f_zeros([n], (Kind::Double, device));
    let (mut sq_err, mut y_sum, mut y_sq) = (0.0, acc(c.d_out)?, 0.0);
    let (mut l0_sum, mut shrink_sum, mut n_tokens) = (0.0, 0.0, 0i64);
    let mut fired = acc(c.d_sae)?;
    let (mut ce_clean, mut ce_spliced, mut ce_zero, mut kl, mut n_batches) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for tokens in contexts.f_split(batch.max(1), 0)? {
        let tokens = tokens.f_to_device(device)?;
        let out = model.runner(&tokens).cache(CacheSpec::names([&c.hook_name, &c.hook_name_out])).run()?;
        let cache = out.cache.ok_or_else(|| Error::Input("no cache".into()))?;
        let (x, y) = (cache.get(&c.hook_name)?.f_to_kind(Kind::Float)?, cache.get(&c.hook_name_out)?.f_to_kind(Kind::Float)?);
        let mut keep = tokens.f_ones_like()?.f_to_kind(Kind::Bool)?;
        let _ = keep.f_narrow(1, 0, 1)?.f_fill_(0)?;
        if let Some(b) = bos {
            keep = keep.f_logical_and(&tokens.f_ne(b)?)?;
        }
        let f = dict.encode(&x)?;
        let recon = dict.decode(&f, Some(&x))?;
        let keep_f = keep.f_unsqueeze(-1)?;
        let (yk, rk, fk) = (y.f_index(&[Some(keep.shallow_clone())])?, recon.f_index(&[Some(keep.shallow_clone())])?, f.f_index(&[Some(keep.shallow_clone())])?);
        let n = yk.size()[0];
        n_tokens += n;
        sq_err += yk.f_sub(&rk)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        y_sum = y_sum.f_add(&yk.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        y_sq += yk.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let active = fk.f_gt(0.0)?;
        l0_sum += active.f_sum(Kind::Double)?.f_double_value(&[])?;
        fired = fired.f_add(&active.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        let ratio = rk.f_norm_scalaropt_dim(2.0, [1], false)?.f_div(&yk.f_norm_scalaropt_dim(2.0, [1], false)?.f_clamp_min(1e-12)?)?;
        shrink_sum += ratio.f_sum(Kind::Double)?.f_double_value(&[])?;

        let splice = |replacement: Tensor| -> Result<Tensor> {
            let keep_f = keep_f.shallow_clone();
            let hooks = Hooks::new().add(c.hook_name_out.clone(), move |act, _| Ok(Some(replacement.f_to_kind(act.kind())?.f_where_self(&keep_f, act)?)));
            Ok(model.run_with_hooks(&tokens, hooks)?)
        };
        let (clean_nll, clean_logp) = next_token_nll(&out.output, &tokens)?;
        let spliced_logits = splice(recon.shallow_clone())?;
        let (spliced_nll, spliced_logp) = next_token_nll(&spliced_logits, &tokens)?;
        let (zero_nll, _) = next_token_nll(&splice(recon.f_zeros_like()?)?, &tokens)?;
        // Weighted by rows, so a short last chunk counts for what it holds.
        let rows = tokens.size()[0] as f64;
        ce_clean += clean_nll * rows;
        ce_spliced += spliced_nll * rows;
        ce_zero += zero_nll * rows;
        kl += rows * clean_logp.f_exp()?.f_mul(&clean_logp.f_sub(&spliced_logp)?)?.f_sum_dim_intlist(-1, false, Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?;
        n_batches += rows;
    }
    if n_tokens == 0 {
        return Err(Error::Input("no tokens to evaluate (every position was position 0 or BOS)".into()));
    }
    let n = n_tokens as f64;
    let mean_sq = y_sum.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])? / n;
    let total_variance = (y_sq - mean_sq).max(1e-30);
    let fvu = sq_err / total_variance;
    let (ce_clean, ce_spliced, ce_zero) = (ce_clean / n_batches, ce_spliced / n_batches, ce_zero / n_batches);
    let density = fired.f_div_scalar(n)?;
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
        n_tokens,
        l0: l0_sum / n,
        fvu,
        explained_variance: 1.0 - fvu,
        shrinkage: shrink_sum / n,
        ce_clean,
        ce_spliced,
        ce_zero_ablation: ce_zero,
        ce_loss_recovered: (ce_zero - ce_spliced) / (ce_zero - ce_clean),
        delta_loss: ce_spliced - ce_clean,
        kl_spliced: kl / n_batches,
        dead_fraction,
        dense_fraction,
        log10_density_histogram,
        log10_density,
    })
}
