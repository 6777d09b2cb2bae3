//! Training from scratch: AdamW, warmup plus cosine or linear decay, gradient clipping, periodic
//! evaluation, atomic checkpoints and exact resume, a progress bar.
//!
//! Batches are a pure function of the step (`BatchSource::train_batch(step)`), so a run resumed
//! from a checkpoint continues with exactly the batches and optimizer state it would have had:
//! on CPU, its final weights equal an uninterrupted run's bit for bit.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Instant;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::forward::{Input, Run};
use crate::hooks::Hooks;
use crate::model::HookedTransformer;

/// Inputs and next-token targets, [batch, pos] int64; `mask` [batch, pos] (1 = scored) limits the
/// loss to some positions (task answers).
pub struct Batch {
    /// Input tokens [batch, pos].
    pub input: Tensor,
    /// Next tokens [batch, pos].
    pub target: Tensor,
    /// Positions that count in the loss [batch, pos] (`None`: all).
    pub mask: Option<Tensor>,
}

/// The load-balancing loss of a mixture of experts (Switch Transformer's, as HF's
/// `load_balancing_loss_func` computes it over all MoE layers' tokens together):
/// `n_experts * sum_{slot, e} f[slot, e] P[e]`, where `f[slot, e]` is the fraction of tokens whose
/// `slot`-th choice is expert e and `P[e]` the mean router probability of e. It is `top_k` when
/// the router is uniform and grows as routing concentrates on few experts. `router_logits`: one
/// [batch, pos, n_experts] tensor per MoE layer.
pub fn load_balancing_loss(router_logits: &[Tensor], top_k: i64) -> Result<Tensor> {
    let Some(first) = router_logits.first() else { return Err(Error::Input("no router logits".into())) };
    let n_experts = first.size().last().copied().unwrap_or(0);
    let flat: Vec<Tensor> = router_logits.iter().map(|t| t.f_reshape([-1, n_experts])).collect::<Result<_, _>>()?;
    let probs = Tensor::f_cat(&flat, 0)?.f_softmax(-1, Kind::Float)?;
    let (_, chosen) = probs.f_topk(top_k, -1, true, true)?;
    let per_slot = chosen.f_one_hot(n_experts)?.f_to_kind(Kind::Float)?.f_mean_dim(0, false, Kind::Float)?; // [top_k, n_experts]
    let mean_prob = probs.f_mean_dim(0, false, Kind::Float)?; // [n_experts]
    Ok(per_slot.f_mul(&mean_prob.f_unsqueeze(0)?)?.f_sum(Kind::Float)?.f_mul_scalar(n_experts as f64)?)
}

/// Where training data comes from. `train_batch` must depend only on `step`.
pub trait BatchSource {
    /// The batch of training step `step` (a pure function of it, for exact resume).
    fn train_batch(&self, step: usize) -> Result<Batch>;
    /// The fixed eval batches.
    fn eval_batches(&self) -> Result<Vec<Batch>>;
}

/// Learning-rate decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    /// Cosine from the peak to `min_lr_ratio * lr`.
    Cosine,
    /// Linear from the peak to `min_lr_ratio * lr`.
    Linear,
}

/// Optimiser and loop settings; `Default` gives sensible values for small models.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// The decay after warmup.
    pub schedule: Schedule,
    /// The learning rate decays to `min_lr_ratio * lr`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay, on matrices only (not norms, biases).
    pub weight_decay: f64,
    /// Adam's beta1 and beta2.
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: Option<f64>,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints go here (`checkpoint.safetensors`); an existing one is resumed.
    pub checkpoint_dir: Option<PathBuf>,
    /// Show a progress bar (loss, ETA).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            lr: 1e-3,
            warmup_steps: 50,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            betas: (0.9, 0.99),
            eps: 1e-8,
            grad_clip: Some(1.0),
            eval_every: 100,
            checkpoint_every: 100,
            checkpoint_dir: None,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        let frac = match self.schedule {
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Schedule::Linear => 1.0 - t,
        };
        min + (self.lr - min) * frac
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The step training started at (non-zero after a resume).
    pub resumed_at: usize,
    /// The step it ended at.
    pub steps: usize,
    /// Mean training loss over the last 10% of steps run.
    pub final_train_loss: f64,
    /// (step, mean eval loss)
    pub eval_losses: Vec<(usize, f64)>,
    /// Training throughput.
    pub tokens_per_sec: f64,
}

/// Cross-entropy of `logits` [b, p, vocab] against `target` [b, p], averaged over `mask`ed positions.
pub fn next_token_loss(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let logp = logits.f_log_softmax(-1, Kind::Float)?;
    let nll = logp.f_gather(-1, &batch.target.f_unsqueeze(-1)?, false)?.f_squeeze_dim(-1)?.f_neg()?;
    Ok(match &batch.mask {
        Some(mask) => {
            let m = mask.f_to_kind(Kind::Float)?;
            nll.f_mul(&m)?.f_sum(Kind::Float)?.f_div(&m.f_sum(Kind::Float)?.f_clamp_min(1.0)?)?
        }
        None => nll.f_mean(Kind::Float)?,
    })
}

/// What a model's checkpoint must agree with: its configuration and parameter shapes.
fn fingerprint(model: &HookedTransformer, params: &[Tensor]) -> i64 {
    let mut text = model.cfg.hf_json.to_string();
    for p in params {
        text.push_str(&format!("{:?}", p.size()));
    }
    fingerprint_of(&text)
}

/// Adam moments for a list of parameters, with decoupled weight decay on matrices (not on
/// vectors: norms, biases). Shared by model training and dictionary training.
pub struct Adam {
    /// Adam's beta1 and beta2.
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub eps: f64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// Zero moments for `params`.
    pub fn new(params: &[Tensor], betas: (f64, f64), eps: f64) -> Result<Self> {
        Ok(Adam {
            betas,
            eps,
            m: params.iter().map(|p| p.f_zeros_like()).collect::<Result<_, _>>()?,
            v: params.iter().map(|p| p.f_zeros_like()).collect::<Result<_, _>>()?,
        })
    }

    /// One update of `params` in place from `grads` at 0-based `step`; call under `no_grad`.
    pub fn step(&self, params: &[Tensor], grads: &[Tensor], step: usize, lr: f64, weight_decay: f64) -> Result<()> {
        let (b1, b2) = self.betas;
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (((p, g), m), v) in params.iter().zip(grads).zip(&self.m).zip(&self.v) {
            // In place on shallow clones: the same storage as the caller's and the state's tensors.
            let (mut m, mut v, mut p) = (m.shallow_clone(), v.shallow_clone(), p.shallow_clone());
            let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
            let _ = v.f_mul_scalar_(b2)?.f_addcmul_(g, &g.f_mul_scalar(1.0 - b2)?)?;
            if p.dim() >= 2 && weight_decay > 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let update = m.f_div_scalar(c1)?.f_div(&v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(self.eps)?)?;
            let _ = p.f_sub_(&update.f_mul_scalar(lr)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`{prefix}adam_m.{i}`, `{prefix}adam_v.{i}`), for checkpoints.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let named = |kind: &str, ts: &[Tensor]| -> Vec<(String, Tensor)> {
            ts.iter().enumerate().map(|(i, t)| (format!("{prefix}{kind}.{i}"), t.shallow_clone())).collect()
        };
        let mut out = named("adam_m", &self.m);
        out.extend(named("adam_v", &self.v));
        out
    }
}

/// The global L2 norm of `grads`, and the factor that scales it down to `max` (1 if below).
pub fn clip_scale(grads: &[Tensor], max: Option<f64>) -> Result<f64> {
    let Some(max) = max else { return Ok(1.0) };
    let sq: f64 = grads.iter().map(|g| g.f_square().and_then(|s| s.f_sum(Kind::Double)).and_then(|s| s.f_double_value(&[]))).sum::<Result<f64, _>>()?;
    let norm = sq.sqrt();
    Ok(if norm > max { max / (norm + 1e-6) } else { 1.0 })
}

/// Training state on disk: `dir/checkpoint.safetensors` holding a step, a fingerprint of the
/// configuration it belongs to, and named tensors. Written to a temporary file and renamed, so an
/// interrupted or failed write (disk full) leaves the last good checkpoint.
pub struct TrainingCheckpoint {
    /// The folder holding `checkpoint.safetensors`.
    pub dir: PathBuf,
    /// Fingerprint of the configuration; a checkpoint of another is refused.
    pub fingerprint: i64,
    /// What the configuration is of ("model", "dictionary"), for the error on a mismatch.
    pub what: &'static str,
}

impl TrainingCheckpoint {
    /// `dir/checkpoint.safetensors`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }

    /// Writes `state` at `step` (to a temporary file, then renamed).
    pub fn save(&self, step: usize, state: &[(String, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io(&self.dir))?;
        let mut named: Vec<(String, Tensor)> =
            vec![("step".into(), Tensor::f_from_slice(&[step as i64])?), ("fingerprint".into(), Tensor::f_from_slice(&[self.fingerprint])?)];
        for (name, t) in state {
            named.push((name.clone(), t.f_detach()?.f_to_device(tch::Device::Cpu)?));
        }
        let tmp = self.dir.join("checkpoint.safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp)
            .map_err(|e| Error::Io { path: tmp.clone(), source: std::io::Error::other(e.to_string().lines().next().unwrap_or_default().to_string()) })?;
        std::fs::rename(&tmp, self.path()).map_err(Error::io(self.path()))
    }

    /// Copies the saved tensors into `state` and returns the saved step; `None` when there is no
    /// checkpoint yet. A checkpoint of another configuration is an error, not a silent restart.
    pub fn load(&self, state: &[(String, Tensor)]) -> Result<Option<usize>> {
        let path = self.path();
        if !path.exists() {
            return Ok(None);
        }
        let bad = |message: String| Error::Checkpoint { path: path.clone(), message };
        let map: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&path).map_err(|e| bad(format!("unreadable: {e}")))?.into_iter().collect();
        let get = |name: &str| map.get(name).ok_or_else(|| bad(format!("no tensor `{name}`")));
        if get("fingerprint")?.f_int64_value(&[0])? != self.fingerprint {
            return Err(bad(format!("it belongs to another {} configuration; remove it or use another checkpoint dir", self.what)));
        }
        let _guard = tch::no_grad_guard();
        for (name, dst) in state {
            let src = get(name)?;
            if src.size() != dst.size() {
                return Err(bad(format!("`{name}` has shape {:?}, expected {:?}", src.size(), dst.size())));
            }
            dst.shallow_clone().f_copy_(src)?;
        }
        Ok(Some(get("step")?.f_int64_value(&[0])? as usize))
    }
}

/// A progress bar counting `unit` with elapsed time, ETA and a message; hidden when `show` is
/// false. When stderr is not a terminal (a log file, a pipe), the bar becomes a progress line
/// every 30 seconds.
pub fn progress_bar(len: u64, unit: &str, show: bool) -> indicatif::ProgressBar {
    bar_with(len, show, &format!("{{pos}}/{{len}} {unit}"), "{msg}")
}

/// A progress bar for items of unequal cost: its position and length are amounts of work (any
/// unit), so the ETA extrapolates work done; its message shows the count (set it with
/// `set_message`, e.g. "120/32491 edges").
pub fn work_bar(total_work: u64, show: bool) -> indicatif::ProgressBar {
    bar_with(total_work, show, "{msg}", "")
}

fn bar_with(len: u64, show: bool, counter: &str, msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = if std::io::stderr().is_terminal() {
        (indicatif::ProgressBar::new(len), format!("{{bar:30}} {counter} [{{elapsed_precise}}<{{eta_mean}}] {msg}"))
    } else {
        let log = LogLines { every: std::time::Duration::from_secs(30), last: std::sync::Mutex::new(Instant::now()) };
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(log));
        (indicatif::ProgressBar::with_draw_target(Some(len), target), format!("{counter} ({{percent}}%), {{elapsed_precise}} elapsed, ETA {{eta_mean}} {msg}"))
    };
    let style = indicatif::ProgressStyle::with_template(template.trim_end()).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.with_key("eta_mean", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&eta_mean(s.elapsed(), s.pos(), s.len()));
    }));
    bar
}

/// The time left at the mean rate so far (`elapsed` for `done` of `total`), as h:mm:ss; `-`
/// before any work is done. Work that comes in bursts (a buffer of activations filled every few
/// training steps, tests of unequal cost) makes a recent-rate estimate swing by the burst size;
/// the mean rate does not.
fn eta_mean(elapsed: std::time::Duration, done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if done > 0 => {
            let left = (elapsed.as_secs_f64() * (total.saturating_sub(done)) as f64 / done as f64).round() as u64;
            format!("{}:{:02}:{:02}", left / 3600, left / 60 % 60, left % 60)
        }
        _ => "-".to_string(),
    }
}

/// A progress bar's target in a log: one line, at most every `every`, no cursor movement.
#[derive(Debug)]
struct LogLines {
    every: std::time::Duration,
    last: std::sync::Mutex<Instant>,
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= self.every && !line.trim().is_empty() {
            eprintln!("{}", line.trim_end());
            *last = Instant::now();
        }
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write_line(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stable hash (FNV-1a) of a configuration's text, for [`TrainingCheckpoint::fingerprint`].
pub fn fingerprint_of(text: &str) -> i64 {
    fingerprint_bytes(text.bytes()) as i64
}

/// A stable hash (FNV-1a, 64 bits) of a byte sequence.
pub fn fingerprint_bytes(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn model_state(params: &[Tensor], adam: &Adam) -> Vec<(String, Tensor)> {
    let mut state: Vec<(String, Tensor)> = params.iter().enumerate().map(|(i, p)| (format!("param.{i}"), p.shallow_clone())).collect();
    state.extend(adam.state(""));
    state
}

impl HookedTransformer {
    /// Trains the model in place on `data`; see [`TrainConfig`]. A NaN or infinite loss stops
    /// the run with an error (the last checkpoint stays as it was).
    pub fn train(&self, data: &dyn BatchSource, cfg: &TrainConfig) -> Result<TrainReport> {
        for (name, value) in [("steps", cfg.steps), ("checkpoint_every", cfg.checkpoint_every), ("eval_every", cfg.eval_every)] {
            if value == 0 {
                return Err(Error::setting(name, value, "at least 1"));
            }
        }
        if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
            return Err(Error::setting("lr", cfg.lr, "a positive learning rate"));
        }
        let params: Vec<Tensor> = self.parameters().into_iter().map(|p| p.set_requires_grad(true)).collect();
        let adam = Adam::new(&params, cfg.betas, cfg.eps)?;
        let checkpoint = cfg.checkpoint_dir.as_ref().map(|dir| TrainingCheckpoint { dir: dir.clone(), fingerprint: fingerprint(self, &params), what: "model" });
        let start = match &checkpoint {
            Some(c) => c.load(&model_state(&params, &adam))?.unwrap_or(0),
            None => 0,
        };
        let result = self.train_loop(data, cfg, &params, &adam, checkpoint.as_ref(), start);
        for p in &params {
            let _ = p.set_requires_grad(false);
        }
        result
    }

    fn train_loop(
        &self,
        data: &dyn BatchSource,
        cfg: &TrainConfig,
        params: &[Tensor],
        adam: &Adam,
        checkpoint: Option<&TrainingCheckpoint>,
        start: usize,
    ) -> Result<TrainReport> {
        let bar = progress_bar(cfg.steps as u64, "steps", cfg.progress);
        bar.set_position(start as u64);
        let (mut losses, mut eval_losses, mut tokens) = (Vec::new(), Vec::new(), 0usize);
        let clock = Instant::now();
        for step in start..cfg.steps {
            let batch = data.train_batch(step)?;
            // A mixture of experts also minimises its load-balancing loss.
            let router_logits = RefCell::new(Vec::new());
            let hooks = match &self.cfg.moe {
                Some(_) => Hooks::new().add("blocks.*.mlp.hook_router_logits", |x, _| {
                    router_logits.borrow_mut().push(x.shallow_clone());
                    Ok(None)
                }),
                None => Hooks::new(),
            };
            let mut run = Run::new(self, hooks, None, None, None)?;
            let logits = self.run_forward(&mut run, &Input::Tokens(&batch.input), None, None, None)?;
            drop(run);
            let mut loss = next_token_loss(&logits, &batch)?;
            let loss_value = loss.f_double_value(&[])?;
            if let Some(moe) = &self.cfg.moe {
                let balance = load_balancing_loss(&router_logits.take(), moe.top_k)?;
                loss = loss.f_add(&balance.f_mul_scalar(moe.router_aux_loss_coef)?)?;
            }
            if !loss_value.is_finite() {
                return Err(Error::Diverged { what: format!("training loss is {loss_value}"), step });
            }
            let grads = Tensor::f_run_backward(&[&loss], params, false, false)?;
            let _guard = tch::no_grad_guard();
            let scale = clip_scale(&grads, cfg.grad_clip)?;
            let grads: Vec<Tensor> = grads.iter().map(|g| g.f_mul_scalar(scale)).collect::<Result<_, _>>()?;
            adam.step(params, &grads, step, cfg.lr_at(step), cfg.weight_decay)?;
            losses.push(loss_value);
            tokens += batch.input.numel();
            let done = step + 1;
            if done % cfg.eval_every == 0 || done == cfg.steps {
                eval_losses.push((done, self.eval_loss(data)?));
            }
            if let Some(checkpoint) = checkpoint {
                if done % cfg.checkpoint_every == 0 || done == cfg.steps {
                    // A divergent update can make weights non-finite a step before the loss shows it.
                    for p in params {
                        if p.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
                            return Err(Error::Diverged { what: "training diverged: parameters are not finite".into(), step: done });
                        }
                    }
                    checkpoint.save(done, &model_state(params, adam))?;
                }
            }
            let rate = tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss_value:.4} | {rate:.0} tok/s"));
            bar.inc(1);
        }
        bar.finish();
        let tail = losses.len().div_ceil(10).max(1);
        let final_train_loss =
            if losses.is_empty() { f64::NAN } else { losses[losses.len() - tail.min(losses.len())..].iter().sum::<f64>() / tail.min(losses.len()) as f64 };
        Ok(TrainReport {
            resumed_at: start,
            steps: cfg.steps,
            final_train_loss,
            eval_losses,
            tokens_per_sec: tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// Mean next-token loss over the source's eval batches.
    pub fn eval_loss(&self, data: &dyn BatchSource) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let batches = data.eval_batches()?;
        if batches.is_empty() {
            return Err(Error::Input("no eval batches".into()));
        }
        let mut total = 0.0;
        for b in &batches {
            total += next_token_loss(&self.forward(&b.input)?, b)?.f_double_value(&[])?;
        }
        Ok(total / batches.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::eta_mean;
    use std::time::Duration;

    #[test]
    fn the_eta_is_the_time_left_at_the_mean_rate() {
        // 50 of 1,221 steps in 100 s: 1,171 steps at 2 s each.
        assert_eq!(eta_mean(Duration::from_secs(100), 50, Some(1221)), "0:39:02");
        assert_eq!(eta_mean(Duration::from_secs(7200), 1, Some(3)), "4:00:00");
        assert_eq!(eta_mean(Duration::from_secs(5), 0, Some(10)), "-");
        assert_eq!(eta_mean(Duration::from_secs(5), 3, None), "-");
    }
}
