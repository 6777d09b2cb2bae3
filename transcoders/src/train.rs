//! Training dictionaries on an [`ActivationSource`]: Adam with warmup and a final linear decay,
//! sparsity-coefficient warmup, gradient clipping, unit-norm decoder rows (the gradient parallel
//! to each row removed), AuxK for dead latents, activation normalisation folded into the weights
//! at the end, checkpoints with exact resume.
//!
//! Several dictionaries train side by side from the same batches (one model pass feeds them all).

use std::path::{Path, PathBuf};
use std::time::Instant;

use interp_core::train::{clip_scale, fingerprint_of, Adam, Schedule, TrainingCheckpoint};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::dictionary::{Architecture, SparseDictionary};
use crate::error::{Error, Result};
use crate::store::ActivationSource;

/// Trainer settings; `Default` follows the references' recipe (see the design notes).
#[derive(Clone, Debug)]
pub struct SaeTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// The learning rate decays to 0 over these last steps; `None`: the last 20% (0: constant).
    pub decay_steps: Option<usize>,
    /// The shape of the decay (linear or cosine).
    pub schedule: Schedule,
    /// L1 coefficient (ReLU+L1 and gated), on `sum_i f_i * ||W_dec,i||`.
    pub l1_coefficient: f64,
    /// L0 coefficient (JumpReLU), on `sum_i H(z_i - theta_i)`.
    pub l0_coefficient: f64,
    /// The sparsity coefficient rises linearly from 0 over these steps.
    pub sparsity_warmup_steps: usize,
    /// Width of the rectangle kernel of JumpReLU's straight-through threshold gradient.
    pub jumprelu_bandwidth: f64,
    /// Weight of the AuxK loss (TopK and BatchTopK); 0 turns it off.
    pub aux_k_coefficient: f64,
    /// A latent that has not fired for this many tokens is dead.
    pub dead_tokens: usize,
    /// Rate of the moving average that sets BatchTopK's inference threshold.
    pub batchtopk_threshold_lr: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: Option<f64>,
    /// Scale activations so that E||x|| = sqrt(d) while training (folded into the weights after).
    pub normalize_activations: bool,
    /// Batches that estimate the normalisation's E||x|| (the first ones of the source).
    pub norm_batches: usize,
    /// The dictionaries are trained already (fine-tuning): keep their `b_dec` instead of starting
    /// it at the mean target.
    pub fine_tune: bool,
    /// TopK: decode by gathering the `k` decoder rows of each token instead of a dense product,
    /// and build the encoder's gradient from the `k` chosen pre-activations alone (a sparse
    /// product instead of a dense [d_in, n] x [n, d_sae] GEMM). Same gradients, less work.
    pub sparse_decode: bool,
    /// Adam's beta1 and beta2.
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub eps: f64,
    /// Log (and update the progress bar) every this many steps.
    pub log_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints go here (`checkpoint.safetensors`); an existing one is resumed.
    pub checkpoint_dir: Option<PathBuf>,
    /// Also keep the dictionaries of the last this many checkpoints as SAELens folders
    /// (`checkpoint_dir/step_{N}/{i}`, normalisation folded in); 0 keeps none.
    pub keep_checkpoints: usize,
    /// Append every logged step to this JSONL file as it goes (the training curve); entries past
    /// a resumed step are dropped first.
    pub log_path: Option<PathBuf>,
    /// Show a progress bar (loss, L0, FVU, dead %); periodic log lines when stderr is not a
    /// terminal.
    pub progress: bool,
}

impl Default for SaeTrainConfig {
    fn default() -> Self {
        SaeTrainConfig {
            steps: 2000,
            lr: 4e-4,
            warmup_steps: 100,
            decay_steps: None,
            schedule: Schedule::Linear,
            l1_coefficient: 5.0,
            l0_coefficient: 0.01,
            sparsity_warmup_steps: 200,
            jumprelu_bandwidth: 0.05,
            aux_k_coefficient: 1.0 / 32.0,
            dead_tokens: 1_000_000,
            batchtopk_threshold_lr: 0.01,
            grad_clip: Some(1.0),
            normalize_activations: true,
            norm_batches: 1,
            fine_tune: false,
            sparse_decode: true,
            betas: (0.9, 0.999),
            eps: 1e-8,
            log_every: 50,
            checkpoint_every: 500,
            checkpoint_dir: None,
            keep_checkpoints: 0,
            log_path: None,
            progress: true,
        }
    }
}

impl SaeTrainConfig {
    /// The settings, if each is in range: steps, log and checkpoint intervals at least 1, a
    /// positive learning rate.
    pub fn validated(&self) -> Result<&Self> {
        for (name, value) in [("steps", self.steps), ("log_every", self.log_every), ("checkpoint_every", self.checkpoint_every)] {
            if value == 0 {
                return Err(Error::setting(name, value, "at least 1"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::setting("lr", self.lr, "a positive learning rate"));
        }
        Ok(self)
    }

    /// The learning rate at `step`: linear warmup, constant, then a linear or cosine decay to 0
    /// over the last `decay_steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = if self.warmup_steps > 0 { ((step + 1) as f64 / self.warmup_steps as f64).min(1.0) } else { 1.0 };
        let decay_steps = self.decay_steps.map_or((self.steps as f64 * 0.2).round(), |d| d as f64);
        let left = (self.steps - step.min(self.steps)) as f64;
        let t = if decay_steps > 0.0 { (left / decay_steps).min(1.0) } else { 1.0 };
        let decay = match self.schedule {
            Schedule::Linear => t,
            Schedule::Cosine => 0.5 * (1.0 - (std::f64::consts::PI * t).cos()),
        };
        self.lr * warm * decay
    }

    /// Steps that consume a budget of `tokens` in batches of `batch_tokens` (the last batch may
    /// go past it); a budget below one batch is an error.
    pub fn steps_for_tokens(tokens: u64, batch_tokens: i64) -> Result<usize> {
        if batch_tokens < 1 || tokens < batch_tokens as u64 {
            return Err(Error::setting("tokens", tokens, format!("at least one batch ({batch_tokens} tokens)")));
        }
        Ok(tokens.div_ceil(batch_tokens as u64) as usize)
    }

    pub(crate) fn sparsity_scale(&self, step: usize) -> f64 {
        if self.sparsity_warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.sparsity_warmup_steps as f64).min(1.0)
        }
    }
}

/// One logged step of one dictionary (a line of the training curve's JSONL).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainLogEntry {
    /// Which dictionary (its index in the list trained together).
    pub dictionary: usize,
    /// The step.
    pub step: usize,
    /// Activation tokens trained on so far.
    pub tokens: u64,
    /// The learning rate of the step.
    pub lr: f64,
    /// Total loss of the batch.
    pub loss: f64,
    /// Batch FVU (in the normalised space, which does not change it).
    pub fvu: f64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Fraction of latents dead.
    pub dead_fraction: f64,
}

/// What training did, per dictionary.
#[derive(Clone, Debug)]
pub struct SaeTrainReport {
    /// The step training started at (non-zero after a resume).
    pub resumed_at: usize,
    /// The step it ended at.
    pub steps: usize,
    /// One entry per `log_every` steps.
    pub log: Vec<TrainLogEntry>,
    /// Input and output scales used while training (folded into the weights since).
    pub scales: (f64, f64),
    /// Training throughput (tokens of activations per second).
    pub tokens_per_sec: f64,
}

/// Per-dictionary training state.
struct Slot {
    input: usize,
    target: usize,
    adam: Adam,
    params: Vec<Tensor>,
    /// Tokens since each latent last fired [d_sae].
    since_fired: Tensor,
    /// (s_in, s_out) [2].
    scales: Tensor,
    log: Vec<TrainLogEntry>,
}

/// The losses and statistics of one forward.
struct StepOut {
    loss: Tensor,
    mse: Tensor,
    total_variance: Tensor,
    /// How often each latent fired in the batch [d_sae].
    fired: Tensor,
    /// Sparse TopK: the chosen pre-activations [n, k'] as gradient leaves, with their latent
    /// indices [n, k']; the encoder's gradient is assembled from theirs
    /// ([`SparseDictionary::encoder_grads`]). Empty when autograd reaches the encoder itself.
    encoder_leaves: Vec<(Tensor, Tensor)>,
}

/// JumpReLU with the straight-through estimators of Rajamanoharan et al.: the latents
/// `f = pre * H(pre - theta)` (gradient H to `pre`, `-(theta/eps) K` to `theta`), which fired
/// (`on`, detached), and the batch's L0 summed over rows (gradient `-K/eps` to `theta`), for
/// `pre` [n, d_sae] and `theta` [d_sae], with K the rectangle kernel of width `eps`.
pub(crate) fn jumprelu_ste(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let kernel = pre.f_detach()?.f_sub(&theta.f_detach()?)?.f_div_scalar(eps)?.f_abs()?.f_lt(0.5)?.f_to_kind(Kind::Float)?;
    let on = pre.f_detach()?.f_gt_tensor(&theta.f_detach()?)?.f_to_kind(Kind::Float)?;
    let dtheta = theta.f_sub(&theta.f_detach()?)?;
    let f = pre.f_mul(&on)?.f_add(&dtheta.f_mul(&kernel.f_mul(&theta.f_detach()?)?.f_div_scalar(-eps)?)?)?;
    let l0 = on.f_add(&dtheta.f_mul(&kernel.f_div_scalar(-eps)?)?)?.f_sum(Kind::Float)?;
    Ok((f, on, l0))
}

impl SparseDictionary {
    /// The training forward of a batch `x` [n, d_in] towards `y` [n, d_out] (both normalised).
    fn training_step(&self, x: &Tensor, y: &Tensor, cfg: &SaeTrainConfig, step: usize, dead: &Tensor) -> Result<(StepOut, Option<f64>)> {
        let n = x.size()[0] as f64;
        let sparse_topk = cfg.sparse_decode && matches!(self.cfg.architecture, Architecture::TopK { .. });
        let pre = if sparse_topk { tch::no_grad(|| self.pre_activations(x))? } else { self.pre_activations(x)? };
        let mut encoder_leaves = Vec::new();
        let dec_norms = self.w_dec.f_norm_scalaropt_dim(2.0, [1], false)?;
        let sparsity_scale = cfg.sparsity_scale(step);
        let mut extra = Tensor::f_zeros([], (Kind::Float, x.device()))?;
        let mut batch_threshold = None;
        let (recon, fired, active_pre) = match self.cfg.architecture {
            Architecture::ReluL1 => {
                let f = pre.f_relu()?;
                let l1 = f.f_mul(&dec_norms)?.f_sum(Kind::Float)?.f_div_scalar(n)?;
                extra = extra.f_add(&l1.f_mul_scalar(cfg.l1_coefficient * sparsity_scale)?)?;
                (self.decode(&f, Some(x))?, f.f_gt(0.0)?.f_sum_dim_intlist(0, false, Kind::Float)?, None)
            }
            Architecture::TopK { k } => {
                let (vals, idx) = pre.f_topk(k, -1, true, false)?;
                let vals = if sparse_topk {
                    let leaf = vals.f_detach()?.set_requires_grad(true);
                    encoder_leaves.push((leaf.shallow_clone(), idx.shallow_clone()));
                    leaf.f_relu()?
                } else {
                    vals.f_relu()?
                };
                let recon = if sparse_topk {
                    self.add_skip(self.decode_sparse(&vals, &idx)?, Some(x))?
                } else {
                    self.decode(&pre.f_zeros_like()?.f_scatter(-1, &idx, &vals)?, Some(x))?
                };
                let on = idx.f_masked_select(&vals.f_gt(0.0)?)?;
                (recon, on.f_bincount(None::<&Tensor>, self.cfg.d_sae)?.f_to_kind(Kind::Float)?, Some(pre.shallow_clone()))
            }
            Architecture::BatchTopK { k } => {
                let flat = pre.f_relu()?.f_flatten(0, -1)?;
                let (vals, idx) = flat.f_topk(k * x.size()[0], -1, true, false)?;
                let f = flat.f_zeros_like()?.f_scatter(-1, &idx, &vals)?.f_view_as(&pre)?;
                let kept = vals.f_detach()?.f_masked_select(&vals.f_gt(0.0)?)?;
                if kept.numel() > 0 {
                    batch_threshold = Some(kept.f_min()?.f_double_value(&[])?);
                }
                // Matryoshka: every inner prefix of the latents reconstructs on its own.
                let mut decoded = self.add_skip(self.b_dec.f_expand_as(y)?, Some(x))?;
                let mut prev = 0;
                for &width in self.cfg.matryoshka_widths.iter().rev().skip(1).rev() {
                    decoded = decoded.f_add(&f.f_narrow(1, prev, width - prev)?.f_matmul(&self.w_dec.f_narrow(0, prev, width - prev)?)?)?;
                    let inner = decoded.f_sub(y)?.f_square()?.f_sum(Kind::Float)?.f_div_scalar(n)?;
                    extra = extra.f_add(&inner)?;
                    prev = width;
                }
                (self.decode(&f, Some(x))?, f.f_gt(0.0)?.f_sum_dim_intlist(0, false, Kind::Float)?, Some(pre.shallow_clone()))
            }
            Architecture::JumpRelu => {
                let theta = self.threshold.as_ref().ok_or_else(|| Error::Input("JumpReLU without threshold".into()))?;
                let (f, on, l0) = jumprelu_ste(&pre, theta, cfg.jumprelu_bandwidth)?;
                extra = extra.f_add(&l0.f_div_scalar(n)?.f_mul_scalar(cfg.l0_coefficient * sparsity_scale)?)?;
                (self.decode(&f, Some(x))?, on.f_sum_dim_intlist(0, false, Kind::Float)?, None)
            }
            Architecture::Gated => {
                let (r_mag, b_mag) = self.gated_params()?;
                let mag = self.project(x, &self.w_enc.f_mul(&r_mag.f_exp()?)?, b_mag)?;
                let gate_on = pre.f_detach()?.f_gt(0.0)?.f_to_kind(Kind::Float)?;
                let f = mag.f_relu()?.f_mul(&gate_on)?;
                let gate = pre.f_relu()?;
                let l1 = gate.f_mul(&dec_norms)?.f_sum(Kind::Float)?.f_div_scalar(n)?;
                // The gate path learns to reconstruct through a frozen decoder.
                let frozen = gate.f_matmul(&self.w_dec.f_detach()?)?.f_add(&self.b_dec.f_detach()?)?;
                let frozen = self.add_skip(frozen, Some(x))?;
                let aux = frozen.f_sub(y)?.f_square()?.f_sum(Kind::Float)?.f_div_scalar(n)?;
                extra = extra.f_add(&l1.f_mul_scalar(cfg.l1_coefficient * sparsity_scale)?)?.f_add(&aux)?;
                (self.decode(&f, Some(x))?, f.f_gt(0.0)?.f_sum_dim_intlist(0, false, Kind::Float)?, None)
            }
        };
        let err = y.f_sub(&recon)?;
        let sq = err.f_square()?.f_sum(Kind::Float)?;
        let total_variance = y.f_sub(&y.f_mean_dim(0, true, Kind::Float)?)?.f_square()?.f_sum(Kind::Float)?.f_detach()?;
        let mse = sq.f_div_scalar(n)?;
        let mut loss = mse.f_add(&extra)?;
        if let (Some(pre), true) = (active_pre, cfg.aux_k_coefficient > 0.0) {
            let n_dead = dead.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            if n_dead > 0 {
                // AuxK (Gao et al.): the top dead latents fit the live latents' residual.
                let k_aux = (self.cfg.d_out / 2).max(1);
                let scale = (n_dead as f64 / k_aux as f64).min(1.0);
                let masked = pre.f_masked_fill(&dead.f_logical_not()?.f_unsqueeze(0)?, f64::NEG_INFINITY)?;
                let (mut vals, idx) = masked.f_topk(k_aux.min(n_dead), -1, true, false)?;
                if sparse_topk {
                    vals = vals.f_detach()?.set_requires_grad(true);
                    encoder_leaves.push((vals.shallow_clone(), idx.shallow_clone()));
                }
                let e_hat = self.decode_sparse(&vals.f_relu()?, &idx)?.f_sub(&self.b_dec)?;
                let aux = e_hat.f_sub(&err.f_detach()?)?.f_square()?.f_sum(Kind::Float)?.f_div(&total_variance.f_clamp_min(1e-12)?)?;
                loss = loss.f_add(&aux.f_mul_scalar(scale * cfg.aux_k_coefficient)?)?;
            }
        }
        Ok((StepOut { loss, mse, total_variance, fired, encoder_leaves }, batch_threshold))
    }
}

impl SparseDictionary {
    /// The gradients of `W_enc` [d_in, d_sae] and `b_enc` [d_sae], and the part of `b_dec`'s
    /// that flows through the input, from the gradients `grads` [n, k'] of the pre-activations
    /// `leaves` chose (`(values, latent indices)` pairs) for the batch `x` [n, d_in]: one sparse
    /// [d_sae, n] x [n, d_in] product in place of the dense backward GEMM.
    fn encoder_grads(&self, x: &Tensor, leaves: &[(Tensor, Tensor)], grads: &[Tensor]) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let n = x.size()[0];
        let x_in = if self.cfg.apply_b_dec_to_input { x.f_sub(&self.b_dec.f_detach()?)? } else { x.shallow_clone() };
        let (mut latents, mut tokens, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for ((_, idx), g) in leaves.iter().zip(grads) {
            let k = idx.size()[1];
            latents.push(idx.f_flatten(0, -1)?);
            tokens.push(Tensor::f_arange(n, (Kind::Int64, x.device()))?.f_unsqueeze(1)?.f_expand([n, k], false)?.f_flatten(0, -1)?);
            values.push(g.f_flatten(0, -1)?);
        }
        let (latents, values) = (Tensor::f_cat(&latents, 0)?, Tensor::f_cat(&values, 0)?);
        let indices = Tensor::f_stack(&[latents.shallow_clone(), Tensor::f_cat(&tokens, 0)?], 0)?;
        let g_pre = Tensor::f_sparse_coo_tensor_indices_size(&indices, &values, [self.cfg.d_sae, n], (Kind::Float, x.device()), false)?;
        let g_w_enc = g_pre.f_mm(&x_in)?.f_tr()?.f_contiguous()?;
        let g_b_enc = Tensor::f_zeros([self.cfg.d_sae], (Kind::Float, x.device()))?.f_index_add(0, &latents, &values)?;
        // pre = (x - b_dec) W_enc + b_enc: b_dec receives -W_enc g_b_enc through the input.
        let g_b_dec = if self.cfg.apply_b_dec_to_input { Some(self.w_enc.f_detach()?.f_mv(&g_b_enc)?.f_neg()?) } else { None };
        Ok((g_w_enc, g_b_enc, g_b_dec))
    }
}

pub(crate) fn finite_check(t: &Tensor, step: usize, hook: &str) -> Result<()> {
    if t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        return Err(Error::NotFinite { hook: hook.to_string(), batch: step });
    }
    Ok(())
}

/// The normalisation: a function of (hook index, width) giving the scale that makes E||x|| =
/// sqrt(width), E||x|| estimated on the first `norm_batches` batches of `source` (`first` is
/// batch 0); 1 everywhere when not normalising. Every batch read is checked finite.
pub(crate) fn normalisation(source: &mut dyn ActivationSource, first: &[Tensor], cfg: &SaeTrainConfig) -> Result<impl Fn(usize, i64) -> f64> {
    let names = source.hook_names().to_vec();
    let mut mean_norms = vec![0.0; names.len()];
    let n_norm = if cfg.normalize_activations { cfg.norm_batches.max(1) } else { 0 };
    for b in 0..n_norm {
        let batch = if b == 0 { first.iter().map(Tensor::shallow_clone).collect() } else { source.batch(b)? };
        for (i, t) in batch.iter().enumerate() {
            finite_check(t, b, &names[i])?;
            mean_norms[i] += t.f_norm_scalaropt_dim(2.0, [1], false)?.f_mean(Kind::Double)?.f_double_value(&[])? / n_norm as f64;
        }
    }
    let normalize = cfg.normalize_activations;
    Ok(move |i: usize, width: i64| if normalize && mean_norms[i] > 0.0 { (width as f64).sqrt() / mean_norms[i] } else { 1.0 })
}

/// Trains `dicts` in place on batches of `source` (each reads its `hook_name` and predicts its
/// `hook_name_out`). On success the dictionaries read and predict raw activations (any
/// normalisation folded in). With a checkpoint dir, an existing checkpoint is resumed; one of
/// other dictionaries or settings is an error.
pub fn train_dictionaries(dicts: &mut [SparseDictionary], source: &mut dyn ActivationSource, cfg: &SaeTrainConfig) -> Result<Vec<SaeTrainReport>> {
    cfg.validated()?;
    if dicts.is_empty() {
        return Err(Error::Input("no dictionary to train".into()));
    }
    let names = source.hook_names().to_vec();
    let find = |hook: &str| names.iter().position(|h| h == hook).ok_or_else(|| Error::MissingHook { hook: hook.to_string(), available: names.clone() });
    let first = source.batch(0)?;
    let scale = normalisation(source, &first, cfg)?;
    let device = dicts[0].device();
    let mut slots = Vec::new();
    for d in dicts.iter_mut() {
        let (input, target) = (find(&d.cfg.hook_name)?, find(&d.cfg.hook_name_out)?);
        d.check_width(&first[input], d.cfg.d_in, &format!("activations of `{}`", d.cfg.hook_name))?;
        d.check_width(&first[target], d.cfg.d_out, &format!("activations of `{}`", d.cfg.hook_name_out))?;
        let (s_in, s_out) = (scale(input, d.cfg.d_in), scale(target, d.cfg.d_out));
        if cfg.fine_tune {
            // A trained dictionary reads raw activations: express it in the normalised space.
            d.fold_scales(1.0 / s_in, 1.0 / s_out)?;
        }
        let params: Vec<Tensor> = d.parameters().into_iter().map(|p| p.set_requires_grad(true)).collect();
        let _guard = tch::no_grad_guard();
        if !cfg.fine_tune {
            // b_dec starts at the mean target, so latents begin by explaining variance, not the mean.
            d.b_dec.shallow_clone().f_copy_(&first[target].f_to_device(device)?.f_mean_dim(0, false, Kind::Float)?.f_mul_scalar(s_out)?)?;
        }
        slots.push(Slot {
            input,
            target,
            adam: Adam::new(&params, cfg.betas, cfg.eps)?,
            params,
            since_fired: Tensor::f_zeros([d.cfg.d_sae], (Kind::Float, device))?,
            scales: Tensor::f_from_slice(&[s_in as f32, s_out as f32])?.f_to_device(device)?,
            log: Vec::new(),
        });
    }
    let state = |slots: &[Slot], dicts: &[SparseDictionary]| -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (s, d)) in slots.iter().zip(dicts).enumerate() {
            out.extend(s.params.iter().enumerate().map(|(j, p)| (format!("{i}.param.{j}"), p.shallow_clone())));
            out.extend(s.adam.state(&format!("{i}.")));
            out.push((format!("{i}.since_fired"), s.since_fired.shallow_clone()));
            out.push((format!("{i}.scales"), s.scales.shallow_clone()));
            if let (Architecture::BatchTopK { .. }, Some(t)) = (d.cfg.architecture, &d.threshold) {
                out.push((format!("{i}.threshold"), t.shallow_clone()));
            }
        }
        out
    };
    let checkpoint = cfg.checkpoint_dir.as_ref().map(|dir| {
        let mut text = format!("{:?}{:?}{:?}{:?}{:?}", cfg.lr, cfg.l1_coefficient, cfg.l0_coefficient, cfg.normalize_activations, cfg.norm_batches);
        for d in dicts.iter() {
            text.push_str(&format!("{:?}", d.cfg));
        }
        TrainingCheckpoint { dir: dir.clone(), fingerprint: fingerprint_of(&text), what: "dictionary" }
    });
    let start = match &checkpoint {
        Some(c) => c.load(&state(&slots, dicts))?.unwrap_or(0),
        None => 0,
    };
    let result = train_loop(dicts, &mut slots, source, cfg, start, checkpoint.as_ref(), &state);
    for s in &slots {
        for p in &s.params {
            let _ = p.set_requires_grad(false);
        }
    }
    let tokens_per_sec = result?;
    let mut reports = Vec::new();
    for (d, s) in dicts.iter_mut().zip(slots) {
        let (s_in, s_out) = (s.scales.f_double_value(&[0])?, s.scales.f_double_value(&[1])?);
        d.fold_scales(s_in, s_out)?;
        reports.push(SaeTrainReport { resumed_at: start, steps: cfg.steps, log: s.log, scales: (s_in, s_out), tokens_per_sec });
    }
    Ok(reports)
}

/// Writes the dictionaries at step `done` as SAELens folders (`dir/step_{done}`, one subfolder
/// per dictionary when there are several; normalisation folded in) and removes all but the
/// newest `keep` such snapshots.
fn keep_snapshot(dir: &Path, done: usize, keep: usize, dicts: &[SparseDictionary], slots: &[Slot]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let snapshot = dir.join(format!("step_{done}"));
    for (i, (d, s)) in dicts.iter().zip(slots).enumerate() {
        let mut copy = d.shallow_clone();
        copy.fold_scales(s.scales.f_double_value(&[0])?, s.scales.f_double_value(&[1])?)?;
        copy.save_saelens(if dicts.len() == 1 { snapshot.clone() } else { snapshot.join(i.to_string()) }, None)?;
    }
    prune_snapshots(dir, keep)
}

/// Removes all but the newest `keep` snapshots `dir/step_{N}`.
pub(crate) fn prune_snapshots(dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<usize> =
        std::fs::read_dir(dir).map_err(Error::io(dir))?.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step_")?.parse().ok()).collect();
    steps.sort_unstable();
    for old in steps.iter().rev().skip(keep) {
        let path = dir.join(format!("step_{old}"));
        std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
    }
    Ok(())
}

/// The training curve as JSONL, one [`TrainLogEntry`] per line, appended as training goes.
pub(crate) struct TrainingCurve {
    path: PathBuf,
    file: std::fs::File,
}

impl TrainingCurve {
    /// Opens `path` for appending after dropping entries past `start` (a resumed run logs them
    /// again).
    pub(crate) fn open(path: &Path, start: usize) -> Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= start))
                .map(|l| format!("{l}\n"))
                .collect(),
            Err(_) => String::new(),
        };
        std::fs::write(path, kept).map_err(Error::io(path))?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(Error::io(path))?;
        Ok(TrainingCurve { path: path.to_path_buf(), file })
    }

    pub(crate) fn append(&mut self, entry: &TrainLogEntry) -> Result<()> {
        use std::io::Write;
        let line = serde_json::to_string(entry).map_err(|e| Error::Input(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(Error::io(&self.path))
    }
}

type StateFn<'a> = dyn Fn(&[Slot], &[SparseDictionary]) -> Vec<(String, Tensor)> + 'a;

fn train_loop(
    dicts: &[SparseDictionary],
    slots: &mut [Slot],
    source: &mut dyn ActivationSource,
    cfg: &SaeTrainConfig,
    start: usize,
    checkpoint: Option<&TrainingCheckpoint>,
    state: &StateFn<'_>,
) -> Result<f64> {
    let bar = interp_core::train::progress_bar(cfg.steps as u64, "steps", cfg.progress);
    bar.set_position(start as u64);
    let names = source.hook_names().to_vec();
    let clock = Instant::now();
    let mut tokens = 0usize;
    let mut curve = match &cfg.log_path {
        Some(path) => Some(TrainingCurve::open(path, start)?),
        None => None,
    };
    for step in start..cfg.steps {
        let batch = source.batch(step)?;
        for (i, t) in batch.iter().enumerate() {
            finite_check(t, step, &names[i])?;
        }
        let n = batch[0].size()[0];
        let mut msg = String::new();
        for (i, (d, s)) in dicts.iter().zip(slots.iter_mut()).enumerate() {
            let device = d.device();
            let x = batch[s.input].f_to_device(device)?.f_mul_scalar(s.scales.f_double_value(&[0])?)?;
            let y = batch[s.target].f_to_device(device)?.f_mul_scalar(s.scales.f_double_value(&[1])?)?;
            let dead = s.since_fired.f_ge(cfg.dead_tokens as f64)?;
            let (out, batch_threshold) = d.training_step(&x, &y, cfg, step, &dead)?;
            let loss_value = out.loss.f_double_value(&[])?;
            if !loss_value.is_finite() {
                return Err(Error::Diverged { hook: d.cfg.hook_name.clone(), loss: loss_value, step });
            }
            let mut grads = if out.encoder_leaves.is_empty() {
                Tensor::f_run_backward(&[&out.loss], &s.params, false, false)?
            } else {
                // Autograd stops at the chosen pre-activations; the encoder's gradient is sparse.
                let mut inputs: Vec<&Tensor> = s.params[2..].iter().collect();
                inputs.extend(out.encoder_leaves.iter().map(|(leaf, _)| leaf));
                let mut g = Tensor::f_run_backward(&[&out.loss], &inputs, false, false)?;
                let leaf_grads = g.split_off(s.params.len() - 2);
                let _guard = tch::no_grad_guard();
                let (g_w_enc, g_b_enc, g_b_dec) = d.encoder_grads(&x, &out.encoder_leaves, &leaf_grads)?;
                if let Some(extra) = g_b_dec {
                    g[1] = g[1].f_add(&extra)?;
                }
                let mut all = vec![g_w_enc, g_b_enc];
                all.append(&mut g);
                all
            };
            let _guard = tch::no_grad_guard();
            // Index 2 is W_dec (see `parameters`): drop the part of its gradient along each row.
            let w = &d.w_dec;
            let parallel = grads[2].f_mul(w)?.f_sum_dim_intlist(1, true, Kind::Float)?;
            grads[2] = grads[2].f_sub(&parallel.f_mul(w)?)?;
            let scale = clip_scale(&grads, cfg.grad_clip)?;
            let grads: Vec<Tensor> = grads.iter().map(|g| g.f_mul_scalar(scale)).collect::<Result<_, _>>()?;
            s.adam.step(&s.params, &grads, step, cfg.lr_at(step), 0.0)?;
            let _ = w.shallow_clone().f_div_(&w.f_norm_scalaropt_dim(2.0, [1], true)?.f_clamp_min(1e-8)?)?;
            if let (Architecture::JumpRelu, Some(t)) = (d.cfg.architecture, &d.threshold) {
                let _ = t.shallow_clone().f_clamp_min_(1e-6)?;
            }
            if let (Some(b), Some(t)) = (batch_threshold, &d.threshold) {
                // The first batch sets the threshold; later ones move it by a moving average.
                let r = if t.f_max()?.f_double_value(&[])? == 0.0 { 1.0 } else { cfg.batchtopk_threshold_lr };
                let mut t = t.shallow_clone();
                let _ = t.f_mul_scalar_(1.0 - r)?.f_add_scalar_(r * b)?;
            }
            let fired = out.fired.f_gt(0.0)?;
            s.since_fired = s.since_fired.f_add_scalar(n as f64)?.f_masked_fill(&fired, 0.0)?;
            if (step + 1) % cfg.log_every == 0 || step + 1 == cfg.steps {
                let entry = TrainLogEntry {
                    dictionary: i,
                    step: step + 1,
                    tokens: (step as u64 + 1) * n as u64,
                    lr: cfg.lr_at(step),
                    loss: loss_value,
                    fvu: out.mse.f_double_value(&[])? * n as f64 / out.total_variance.f_double_value(&[])?.max(1e-12),
                    l0: out.fired.f_sum(Kind::Double)?.f_double_value(&[])? / n as f64,
                    dead_fraction: s.since_fired.f_ge(cfg.dead_tokens as f64)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?,
                };
                msg.push_str(&format!("loss {:.4} L0 {:.1} FVU {:.3} dead {:.1}% ", entry.loss, entry.l0, entry.fvu, 100.0 * entry.dead_fraction));
                if let Some(c) = curve.as_mut() {
                    c.append(&entry)?;
                }
                s.log.push(entry);
            }
        }
        tokens += n as usize;
        let done = step + 1;
        if let Some(c) = checkpoint {
            if done % cfg.checkpoint_every == 0 || done == cfg.steps {
                c.save(done, &state(slots, dicts))?;
                if cfg.keep_checkpoints > 0 {
                    keep_snapshot(&c.dir, done, cfg.keep_checkpoints, dicts, slots)?;
                }
            }
        }
        if !msg.is_empty() {
            bar.set_message(msg);
        }
        bar.inc(1);
    }
    bar.finish();
    Ok(tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9))
}
