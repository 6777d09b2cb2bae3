//! Training a cross-layer transcoder with the dictionary trainer's recipe: Adam with warmup and
//! decay, sparsity warmup, gradient clipping, unit joint norm of each latent's decoders (over all
//! the layers it writes to), AuxK per layer for dead TopK latents, per-hook normalisation folded
//! in at the end, the training curve, checkpoints with exact resume.
//!
//! The loss is the squared error summed over every layer's MLP output (each normalised), plus the
//! sparsity penalty of the architecture (L1 for ReLU, L0 for JumpReLU) summed over layers.

use std::time::Instant;

use interp_core::train::{clip_scale, fingerprint_of, Adam, TrainingCheckpoint};
use tch::{Kind, Tensor};

use crate::clt::{joint_norms, CrossLayerTranscoder};
use crate::dictionary::Architecture;
use crate::error::{Error, Result};
use crate::store::ActivationSource;
use crate::train::{finite_check, jumprelu_ste, normalisation, prune_snapshots, SaeTrainConfig, SaeTrainReport, TrainLogEntry, TrainingCurve};

/// The losses and statistics of one training forward.
struct StepOut {
    loss: Tensor,
    sq_err: f64,
    total_variance: f64,
    /// How often each latent fired in the batch [n_layers, d_sae].
    fired: Tensor,
}

impl CrossLayerTranscoder {
    /// The training forward of a batch: `x[l]` [n, d_model] the normalised inputs, `y[l]` the
    /// normalised targets, `dead` [n_layers, d_sae].
    fn training_step(&self, x: &[Tensor], y: &[Tensor], cfg: &SaeTrainConfig, step: usize, dead: &Tensor) -> Result<StepOut> {
        let n_layers = self.cfg.n_layers;
        let rows = x[0].size()[0];
        let n = rows as f64;
        let d = self.cfg.d_model;
        let sparsity = cfg.sparsity_scale(step);
        let mut recon: Vec<Tensor> =
            (0..n_layers).map(|l| Ok(self.b_dec.f_get(l as i64)?.f_unsqueeze(0)?.f_expand([rows, d], false)?)).collect::<Result<_>>()?;
        let mut extra = Tensor::f_zeros([], (Kind::Float, self.device()))?;
        let mut fired = Vec::with_capacity(n_layers);
        let mut topk_pre = Vec::new();
        for (l, x_l) in x.iter().enumerate() {
            let pre = self.pre_activations(l, x_l)?;
            let w = &self.w_dec[l];
            let contrib = match (self.cfg.architecture, &self.threshold) {
                (Architecture::TopK { k }, _) => {
                    let (vals, idx) = pre.f_topk(k, -1, true, false)?;
                    let vals = vals.f_relu()?;
                    let on = idx.f_masked_select(&vals.f_gt(0.0)?)?;
                    fired.push(on.f_bincount(None::<&Tensor>, self.cfg.d_sae)?.f_to_kind(Kind::Float)?);
                    topk_pre.push(pre.shallow_clone());
                    self.decode_sparse(l, &vals, &idx)?
                }
                (Architecture::JumpRelu, Some(theta)) => {
                    let (f, on, l0) = jumprelu_ste(&pre, &theta.f_get(l as i64)?, cfg.jumprelu_bandwidth)?;
                    extra = extra.f_add(&l0.f_div_scalar(n)?.f_mul_scalar(cfg.l0_coefficient * sparsity)?)?;
                    fired.push(on.f_sum_dim_intlist(0, false, Kind::Float)?);
                    f.f_matmul(&w.f_flatten(1, 2)?)?.f_reshape([rows, -1, d])?
                }
                _ => {
                    let f = pre.f_relu()?;
                    let norms = joint_norms(w)?.f_flatten(0, -1)?;
                    let l1 = f.f_mul(&norms)?.f_sum(Kind::Float)?.f_div_scalar(n)?;
                    extra = extra.f_add(&l1.f_mul_scalar(cfg.l1_coefficient * sparsity)?)?;
                    fired.push(f.f_gt(0.0)?.f_sum_dim_intlist(0, false, Kind::Float)?);
                    f.f_matmul(&w.f_flatten(1, 2)?)?.f_reshape([rows, -1, d])?
                }
            };
            for (j, r) in recon.iter_mut().skip(l).enumerate() {
                *r = r.f_add(&contrib.f_select(1, j as i64)?)?;
            }
        }
        let err: Vec<Tensor> = y.iter().zip(&recon).map(|(y, r)| y.f_sub(r)).collect::<std::result::Result<_, _>>()?;
        let mut mse = Tensor::f_zeros([], (Kind::Float, self.device()))?;
        let mut total_variance = 0.0;
        for (e, y) in err.iter().zip(y) {
            mse = mse.f_add(&e.f_square()?.f_sum(Kind::Float)?)?;
            total_variance += y.f_sub(&y.f_mean_dim(0, true, Kind::Float)?)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        }
        let sq_err = mse.f_double_value(&[])?;
        let mut loss = mse.f_div_scalar(n)?.f_add(&extra)?;
        if cfg.aux_k_coefficient > 0.0 {
            // AuxK per layer: the top dead latents of layer l fit the live latents' residual of
            // every layer they write to.
            for (l, pre) in topk_pre.iter().enumerate() {
                let dead_l = dead.f_get(l as i64)?;
                let n_dead = dead_l.f_sum(Kind::Int64)?.f_int64_value(&[])?;
                if n_dead == 0 {
                    continue;
                }
                let k_aux = (d / 2).max(1);
                let masked = pre.f_masked_fill(&dead_l.f_logical_not()?.f_unsqueeze(0)?, f64::NEG_INFINITY)?;
                let (vals, idx) = masked.f_topk(k_aux.min(n_dead), -1, true, false)?;
                let e_hat = self.decode_sparse(l, &vals.f_relu()?, &idx)?;
                let target = Tensor::f_stack(&err[l..].iter().map(|e| e.f_detach()).collect::<std::result::Result<Vec<_>, _>>()?, 1)?;
                let aux = e_hat.f_sub(&target)?.f_square()?.f_sum(Kind::Float)?.f_div_scalar(total_variance.max(1e-12))?;
                loss = loss.f_add(&aux.f_mul_scalar((n_dead as f64 / k_aux as f64).min(1.0) * cfg.aux_k_coefficient)?)?;
            }
        }
        Ok(StepOut { loss, sq_err, total_variance, fired: Tensor::f_stack(&fired, 0)? })
    }

    /// A copy with the normalisation `scales` [2 n_layers] (inputs, then outputs) folded in.
    fn folded(&self, scales: &Tensor) -> Result<CrossLayerTranscoder> {
        let s = Vec::<f64>::try_from(scales.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Double)?)?;
        let n = self.cfg.n_layers;
        let mut copy = CrossLayerTranscoder {
            cfg: self.cfg.clone(),
            w_enc: self.w_enc.f_detach()?,
            b_enc: self.b_enc.f_detach()?,
            threshold: self.threshold.as_ref().map(Tensor::f_detach).transpose()?,
            w_dec: self.w_dec.iter().map(|w| w.f_detach()).collect::<std::result::Result<_, _>>()?,
            b_dec: self.b_dec.f_detach()?,
        };
        copy.fold_scales(&s[..n], &s[n..])?;
        Ok(copy)
    }
}

/// Trains `clt` in place on batches of `source`, which must hold every layer's input and output
/// hook. On success the CLT reads and predicts raw activations (the per-hook normalisation folded
/// in). With a checkpoint dir an existing checkpoint is resumed (one of another CLT or settings is
/// an error); `keep_checkpoints` keeps CLT folders `step_{N}` there.
pub fn train_clt(clt: &mut CrossLayerTranscoder, source: &mut dyn ActivationSource, cfg: &SaeTrainConfig) -> Result<SaeTrainReport> {
    cfg.validated()?;
    let n_layers = clt.cfg.n_layers;
    let names = source.hook_names().to_vec();
    let find = |hook: String| names.iter().position(|h| *h == hook).ok_or_else(|| Error::MissingHook { hook: hook.to_string(), available: names.clone() });
    let inputs: Vec<usize> = (0..n_layers).map(|l| find(clt.cfg.hook_in(l))).collect::<Result<_>>()?;
    let targets: Vec<usize> = (0..n_layers).map(|l| find(clt.cfg.hook_out(l))).collect::<Result<_>>()?;
    let first = source.batch(0)?;
    for &i in inputs.iter().chain(&targets) {
        let found = first[i].size().last().copied().unwrap_or(0);
        if found != clt.cfg.d_model {
            return Err(Error::Width { what: format!("activations of `{}`", names[i]), expected: clt.cfg.d_model, found });
        }
    }
    let scale = normalisation(source, &first, cfg)?;
    let d = clt.cfg.d_model;
    let s: Vec<f64> = inputs.iter().chain(&targets).map(|&i| scale(i, d)).collect();
    let device = clt.device();
    if cfg.fine_tune {
        clt.fold_scales(&s[..n_layers].iter().map(|v| 1.0 / v).collect::<Vec<_>>(), &s[n_layers..].iter().map(|v| 1.0 / v).collect::<Vec<_>>())?;
    } else {
        let _guard = tch::no_grad_guard();
        for (l, &t) in targets.iter().enumerate() {
            let mean = first[t].f_to_device(device)?.f_mean_dim(0, false, Kind::Float)?.f_mul_scalar(s[n_layers + l])?;
            clt.b_dec.f_get(l as i64)?.f_copy_(&mean)?;
        }
    }
    let params: Vec<Tensor> = clt.parameters().into_iter().map(|p| p.set_requires_grad(true)).collect();
    let adam = Adam::new(&params, cfg.betas, cfg.eps)?;
    let since_fired = Tensor::f_zeros([n_layers as i64, clt.cfg.d_sae], (Kind::Float, device))?;
    let scales = Tensor::f_from_slice(&s.iter().map(|&v| v as f32).collect::<Vec<_>>())?.f_to_device(device)?;
    let state = |since_fired: &Tensor| -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = params.iter().enumerate().map(|(j, p)| (format!("param.{j}"), p.shallow_clone())).collect();
        out.extend(adam.state(""));
        out.push(("since_fired".into(), since_fired.shallow_clone()));
        out.push(("scales".into(), scales.shallow_clone()));
        out
    };
    let checkpoint = cfg.checkpoint_dir.as_ref().map(|dir| {
        let text = format!("clt{:?}{:?}{:?}{:?}{:?}{:?}", cfg.lr, cfg.l1_coefficient, cfg.l0_coefficient, cfg.normalize_activations, cfg.norm_batches, clt.cfg);
        TrainingCheckpoint { dir: dir.clone(), fingerprint: fingerprint_of(&text), what: "cross-layer transcoder" }
    });
    let start = match &checkpoint {
        Some(c) => c.load(&state(&since_fired))?.unwrap_or(0),
        None => 0,
    };
    let result = (|| -> Result<(f64, Vec<TrainLogEntry>)> {
        let bar = interp_core::train::progress_bar(cfg.steps as u64, "steps", cfg.progress);
        bar.set_position(start as u64);
        let mut curve = cfg.log_path.as_deref().map(|p| TrainingCurve::open(p, start)).transpose()?;
        let (clock, mut tokens, mut log) = (Instant::now(), 0usize, Vec::new());
        let mut since_fired = since_fired.shallow_clone();
        for step in start..cfg.steps {
            let batch = source.batch(step)?;
            let take = |idx: &[usize], offset: usize| -> Result<Vec<Tensor>> {
                idx.iter()
                    .enumerate()
                    .map(|(l, &i)| {
                        finite_check(&batch[i], step, &names[i])?;
                        Ok(batch[i].f_to_device(device)?.f_mul_scalar(s[offset + l])?)
                    })
                    .collect()
            };
            let (x, y) = (take(&inputs, 0)?, take(&targets, n_layers)?);
            let rows = x[0].size()[0];
            let out = clt.training_step(&x, &y, cfg, step, &since_fired.f_ge(cfg.dead_tokens as f64)?)?;
            let loss = out.loss.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(Error::Diverged { hook: clt.cfg.hook_in(0), loss, step });
            }
            let mut grads = Tensor::f_run_backward(&[&out.loss], &params, false, false)?;
            let _guard = tch::no_grad_guard();
            // Parameters 3.. are the decoders: drop each latent's gradient along its decoders.
            for (g, w) in grads[3..3 + n_layers].iter_mut().zip(&clt.w_dec) {
                let parallel = g.f_mul(w)?.f_sum_dim_intlist([1i64, 2].as_slice(), true, Kind::Float)?;
                *g = g.f_sub(&parallel.f_mul(w)?)?;
            }
            let c = clip_scale(&grads, cfg.grad_clip)?;
            let grads: Vec<Tensor> = grads.iter().map(|g| g.f_mul_scalar(c)).collect::<std::result::Result<_, _>>()?;
            adam.step(&params, &grads, step, cfg.lr_at(step), 0.0)?;
            for w in &clt.w_dec {
                let _ = w.shallow_clone().f_div_(&joint_norms(w)?)?;
            }
            if let Some(t) = &clt.threshold {
                let _ = t.shallow_clone().f_clamp_min_(1e-6)?;
            }
            since_fired = since_fired.f_add_scalar(rows as f64)?.f_masked_fill(&out.fired.f_gt(0.0)?, 0.0)?;
            let done = step + 1;
            if done % cfg.log_every == 0 || done == cfg.steps {
                let entry = TrainLogEntry {
                    dictionary: 0,
                    step: done,
                    tokens: done as u64 * rows as u64,
                    lr: cfg.lr_at(step),
                    loss,
                    fvu: out.sq_err / out.total_variance.max(1e-12),
                    l0: out.fired.f_sum(Kind::Double)?.f_double_value(&[])? / rows as f64,
                    dead_fraction: since_fired.f_ge(cfg.dead_tokens as f64)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.f_double_value(&[])?,
                };
                bar.set_message(format!("loss {:.4} L0 {:.1} FVU {:.3} dead {:.1}%", entry.loss, entry.l0, entry.fvu, 100.0 * entry.dead_fraction));
                if let Some(c) = curve.as_mut() {
                    c.append(&entry)?;
                }
                log.push(entry);
            }
            tokens += rows as usize;
            if let Some(c) = &checkpoint {
                if done % cfg.checkpoint_every == 0 || done == cfg.steps {
                    c.save(done, &state(&since_fired))?;
                    if cfg.keep_checkpoints > 0 {
                        clt.folded(&scales)?.save(c.dir.join(format!("step_{done}")), "checkpoint")?;
                        prune_snapshots(&c.dir, cfg.keep_checkpoints)?;
                    }
                }
            }
            bar.inc(1);
        }
        bar.finish();
        Ok((tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9), log))
    })();
    for p in &params {
        let _ = p.set_requires_grad(false);
    }
    let (tokens_per_sec, log) = result?;
    *clt = clt.folded(&scales)?;
    let (s_in, s_out) = (s[0], s[n_layers]);
    Ok(SaeTrainReport { resumed_at: start, steps: cfg.steps, log, scales: (s_in, s_out), tokens_per_sec })
}
