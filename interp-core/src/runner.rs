//! The public ways to run a model: [`Runner`] (hooks, cache, gradients, masks, start and stop
//! layers, incremental decoding), the shortcuts `forward`, `run_with_cache`, `run_with_hooks`,
//! and the readouts through the unembedding (direct logit attribution, logit lens).

use tch::{Kind, Tensor};

use crate::cache::ActivationCache;
use crate::error::{BoxError, Error, Result};
use crate::forward::{Input, KvCache, Run};
use crate::hook_point::HookPoint;
use crate::hooks::{CacheSpec, Hooks, NamesFilter};
use crate::model::HookedTransformer;

impl HookedTransformer {
    /// Starts a configurable run: hooks, cache, attention mask, start/stop layer, gradients.
    pub fn runner<'m, 'h>(&'m self, tokens: &'m Tensor) -> Runner<'m, 'h> {
        Runner::new(self, Input::Tokens(tokens))
    }

    /// Starts a run from the residual stream `resid` [batch, pos, d_model] entering `layer`.
    pub fn runner_from_layer<'m, 'h>(&'m self, resid: &'m Tensor, layer: usize) -> Runner<'m, 'h> {
        Runner::new(self, Input::Residual { resid, layer })
    }

    /// Logits [batch, pos, d_vocab] for tokens [batch, pos] (int64).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.runner(tokens).run()?.output)
    }

    /// Logits and the activations selected by `spec`.
    pub fn run_with_cache(&self, tokens: &Tensor, spec: CacheSpec) -> Result<(Tensor, ActivationCache)> {
        let out = self.runner(tokens).cache(spec).run()?;
        Ok((out.output, out.cache.unwrap_or_else(|| self.new_cache(Default::default()))))
    }

    /// Logits with `hooks` reading or rewriting activations.
    pub fn run_with_hooks(&self, tokens: &Tensor, hooks: Hooks<'_>) -> Result<Tensor> {
        Ok(self.runner(tokens).hooks(hooks).run()?.output)
    }

    pub(crate) fn new_cache(&self, map: std::collections::BTreeMap<HookPoint, Tensor>) -> ActivationCache {
        ActivationCache { map, n_layers: self.cfg.n_layers, norm: self.cfg.norm, attn_only: self.cfg.attn_only }
    }

    /// Direct logit attribution: each component's contribution to the logit of `tokens`, through
    /// the final norm frozen at its cached scale (and gain) and the unembedding. Summed over a
    /// full decomposition (`decompose_resid(None, false)`) plus the bias terms this leaves out
    /// (final-norm bias and `b_U`), it gives the logits.
    ///
    /// Shapes: stack [n, batch, pos, d_model] (raw, not normalised), tokens [batch] (int64)
    /// -> [n, batch, pos].
    pub fn logit_attrs(&self, cache: &ActivationCache, stack: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let s = stack.size();
        if s.len() != 4 || s[3] != self.cfg.d_model || tokens.size() != [s[1]] {
            return Err(Error::Input(format!(
                "logit_attrs needs stack [n, batch, pos, {}] and tokens [batch], found {s:?} and {:?}",
                self.cfg.d_model,
                tokens.size()
            )));
        }
        let mut x = cache.apply_ln_to_stack(stack)?;
        if let Some(gain) = &self.params.ln_final.w {
            x = x.f_mul(gain)?;
        }
        // [batch, d_model]: the unembedding column of each row's token.
        let dirs = self.params.w_u.f_index_select(0, &tokens.f_to_device(self.device)?)?.f_to_kind(Kind::Float)?;
        Ok(x.f_mul(&dirs.f_unsqueeze(1)?)?.f_sum_dim_intlist(-1, false, Kind::Float)?)
    }

    /// Logit lens: each residual stream in `stack` through the final norm (its scale recomputed
    /// for each component, as the model would) and the unembedding.
    ///
    /// Shapes: stack [n, batch, pos, d_model] -> logits [n, batch, pos, d_vocab].
    pub fn logit_lens(&self, stack: &Tensor) -> Result<Tensor> {
        let s = stack.size();
        if s.len() != 4 {
            return Err(Error::Shape { what: "logit_lens's stack".into(), expected: "[n, batch, pos, d_model]".into(), found: s });
        }
        let flat = stack.f_reshape([s[0] * s[1], s[2], s[3]])?;
        let logits = self.runner_from_layer(&flat, self.cfg.n_layers).run()?.output;
        Ok(logits.f_reshape([s[0], s[1], s[2], -1])?)
    }
}

/// What a run returns.
pub struct RunOutput {
    /// Logits [batch, pos, d_vocab], or with `stop_at_layer(l)` the residual stream entering layer `l`.
    pub output: Tensor,
    /// The activations the run was asked to store.
    pub cache: Option<ActivationCache>,
    /// Gradients of the metric with respect to the activations named in `gradients`.
    pub grads: Option<ActivationCache>,
    /// The metric's value, when gradients were asked for.
    pub metric: Option<Tensor>,
}

type Metric<'h> = Box<dyn FnOnce(&Tensor) -> Result<Tensor, BoxError> + 'h>;

/// A configurable forward pass; see [`HookedTransformer::runner`].
pub struct Runner<'m, 'h> {
    model: &'m HookedTransformer,
    input: Input<'m>,
    hooks: Hooks<'h>,
    cache: Option<CacheSpec>,
    attention_mask: Option<&'m Tensor>,
    stop_at_layer: Option<usize>,
    grads: Option<(NamesFilter, Metric<'h>)>,
    autograd: bool,
    last_block_at: Option<&'m Tensor>,
    kv: Option<&'m mut KvCache>,
}

impl<'m, 'h> Runner<'m, 'h> {
    fn new(model: &'m HookedTransformer, input: Input<'m>) -> Self {
        Runner {
            model,
            input,
            hooks: Hooks::new(),
            cache: None,
            attention_mask: None,
            stop_at_layer: None,
            grads: None,
            autograd: false,
            last_block_at: None,
            kv: None,
        }
    }

    /// Continue after the positions `kv` holds: the input's positions come after them, its
    /// attention reads their keys and values too, and `kv` gets the input's appended (incremental
    /// decoding; with [`HookedTransformer::runner_from_layer`], the blocks from that layer read
    /// `kv`'s layers). Hooks see only the new positions (`HookCtx::pos_offset` says where they
    /// start).
    pub fn kv_cache(mut self, kv: &'m mut KvCache) -> Self {
        self.kv = Some(kv);
        self
    }

    /// Run with these hooks (added to any given before).
    pub fn hooks(mut self, hooks: Hooks<'h>) -> Self {
        self.hooks.entries.extend(hooks.entries);
        self
    }

    /// Store the activations `spec` chooses.
    pub fn cache(mut self, spec: CacheSpec) -> Self {
        self.cache = Some(spec);
        self
    }

    /// Attention mask [batch, pos] (1 = real token, 0 = padding; left or right padding). Each row
    /// then computes exactly what its unpadded tokens would: positions count real tokens only.
    pub fn attention_mask(mut self, mask: &'m Tensor) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// The last block computes its attention queries, MLP and residual only at `positions`
    /// [batch] int64, one per row (keys and values at every position), for a metric that reads
    /// one position per prompt: the output has one position per row ([batch, 1, ...]), equal to
    /// that row and position of a full run. In the last block, the hooks up to the rotary
    /// embeddings (`hook_rot_q`, `hook_rot_k`) see every position, and those from
    /// `hook_attn_scores` on see the one position. No effect on a run that stops before the last
    /// block.
    pub fn last_block_at(mut self, positions: &'m Tensor) -> Self {
        self.last_block_at = Some(positions);
        self
    }

    /// Stop before block `layer` and return the residual stream entering it [batch, pos, d_model].
    pub fn stop_at_layer(mut self, layer: usize) -> Self {
        self.stop_at_layer = Some(layer);
        self
    }

    /// Also compute d metric / d activation for the points `names` selects; `metric` maps the
    /// output (logits) to a scalar.
    pub fn gradients(mut self, names: NamesFilter, metric: impl FnOnce(&Tensor) -> Result<Tensor, BoxError> + 'h) -> Self {
        self.grads = Some((names, Box::new(metric)));
        self
    }

    /// Record the autograd graph of the forward (runs without [`Runner::gradients`] are under
    /// `no_grad` otherwise), for callers that differentiate through tensors their hooks supply.
    pub fn autograd(mut self) -> Self {
        self.autograd = true;
        self
    }

    /// Runs the forward (and the backward, with `gradients`).
    pub fn run(self) -> Result<RunOutput> {
        let model = self.model;
        let cache_points = self.cache.as_ref().map(|s| s.filter.resolve(model)).transpose()?;
        let grad_points = self.grads.as_ref().map(|(f, _)| f.resolve(model)).transpose()?;
        let mut run = Run::new(model, self.hooks, self.cache, cache_points, grad_points)?;
        run.last_block_at = self.last_block_at.map(|t| t.shallow_clone());
        let output = match self.grads {
            None => {
                let _guard = (!self.autograd).then(tch::no_grad_guard);
                model.run_forward(&mut run, &self.input, self.attention_mask, self.stop_at_layer, self.kv)?
            }
            Some((_, metric)) => {
                let output = model.run_forward(&mut run, &self.input, self.attention_mask, self.stop_at_layer, self.kv)?;
                let value = metric(&output).map_err(|e| Error::from_closure(e, Error::Metric))?;
                if value.numel() != 1 {
                    return Err(Error::Shape { what: "the metric".into(), expected: "a scalar".into(), found: value.size() });
                }
                let (points, acts): (Vec<HookPoint>, Vec<Tensor>) = std::mem::take(&mut run.grad_inputs).into_iter().unzip();
                // A metric that depends on none of the points has no autograd graph (libtorch would
                // crash walking it), and a point the metric does not reach gets an undefined
                // gradient: either way the gradient is zero.
                let grads = match value.requires_grad() {
                    true => Tensor::f_run_backward(&[&value], &acts, false, false)?,
                    false => acts.iter().map(|_| Tensor::new()).collect(),
                };
                let grads = grads.into_iter().zip(&acts).map(|(g, a)| if g.defined() { Ok(g) } else { a.f_zeros_like() }).collect::<Result<Vec<_>, _>>()?;
                return Ok(RunOutput {
                    output: output.f_detach()?,
                    cache: run.take_cached().map(|m| model.new_cache(m)),
                    grads: Some(model.new_cache(points.into_iter().zip(grads).collect())),
                    metric: Some(value.f_detach()?),
                });
            }
        };
        Ok(RunOutput { output, cache: run.take_cached().map(|m| model.new_cache(m)), grads: None, metric: None })
    }
}
