//! The replacement model: transcoders for MLPs plus error terms, attention patterns and norm
//! scales frozen at the prompt's values; linear in its leaves (embeddings, feature activations,
//! errors).

use std::cell::RefCell;

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks, NormSite};
use tch::{Device, Kind, Tensor};
use transcoders::{Architecture, DictionaryKind, TranscoderSet};

use super::Node;
use crate::error::{Error, Result};

/// The transcoder input hooks an attribution graph can read, for layer `l`.
fn input_hooks(l: usize) -> [HookPoint; 3] {
    [BlockSite::Ln2Normalized, BlockSite::MlpIn, BlockSite::ResidMid].map(|s| HookPoint::block(l, s))
}

/// Checks that `transcoders` replace the MLPs of `model`: one transcoder per layer, in order, or
/// a CLT of the model's layer count, reading each layer's MLP input and writing its output.
pub fn check_transcoders(model: &HookedTransformer, transcoders: &TranscoderSet) -> Result<()> {
    let c = &model.cfg;
    if c.attn_only {
        return Err(Error::Input("the model is attention-only: there are no MLPs for transcoders to replace".into()));
    }
    if c.post_norms {
        return Err(Error::UnsupportedLayout("Gemma-2's norm after attention is not frozen by the replacement model".into()));
    }
    let n = transcoders.n_layers();
    match transcoders {
        TranscoderSet::PerLayer(_) if n != c.n_layers => {
            return Err(Error::Transcoders(format!("{n} transcoders for a model with {} layers: one per layer is needed", c.n_layers)));
        }
        TranscoderSet::CrossLayer(_) if n != c.n_layers => {
            return Err(Error::Transcoders(format!(
                "a cross-layer transcoder of {n} layers for a model with {} layers: its layer count must be the model's",
                c.n_layers
            )));
        }
        _ => {}
    }
    let widths = |l: usize| match transcoders {
        TranscoderSet::PerLayer(set) => (set[l].cfg().d_in, set[l].cfg().d_out),
        TranscoderSet::CrossLayer(clt) => (clt.cfg().d_model, clt.cfg().d_model),
    };
    for l in 0..n {
        let (hook_in, hook_out) = transcoders.hooks(l);
        let what = format!("transcoder {l} (`{hook_in}` -> `{hook_out}`)");
        if let TranscoderSet::PerLayer(set) = transcoders {
            if set[l].cfg().kind == DictionaryKind::Sae {
                return Err(Error::Transcoders(format!("{what} is an SAE, not a transcoder")));
            }
            if set[l].cfg().architecture == Architecture::Gated {
                return Err(Error::Transcoders(format!("{what}: gated dictionaries are not supported in attribution graphs")));
            }
        }
        let reads = hook_in.parse::<HookPoint>().ok();
        let writes = hook_out.parse::<HookPoint>().ok();
        if writes != Some(HookPoint::block(l, BlockSite::MlpOut)) || !reads.is_some_and(|p| input_hooks(l).contains(&p)) {
            return Err(Error::Transcoders(format!(
                "{what} does not replace the MLP of layer {l}: it must read blocks.{l}.ln2.hook_normalized (or hook_mlp_in / hook_resid_mid) and write blocks.{l}.hook_mlp_out"
            )));
        }
        let (d_in, d_out) = widths(l);
        if d_in != c.d_model || d_out != c.d_model {
            return Err(Error::Transcoders(format!("{what} maps {d_in} -> {d_out} dimensions, the model has d_model {}", c.d_model)));
        }
    }
    Ok(())
}

/// What the replacement model freezes or replaces, from one clean forward. Tensors have no batch axis.
pub(super) struct Clean {
    ln1_scale: Vec<Tensor>,
    pattern: Vec<Tensor>,
    ln2_scale: Vec<Tensor>,
    final_scale: Tensor,
    pub(super) embed: Tensor,
    /// Per layer, the active features (position 0 excluded unless kept), in (position, feature)
    /// order: their positions [n_l], indices [n_l] and activations [n_l].
    pub(super) active: Vec<Active>,
    pub(super) errors: Vec<Tensor>,
    /// Per layer, [pos, d_model]: the MLP output at positions whose features and error are not
    /// sources (position 0 unless kept), beyond what the transcoder's biases and skip path give;
    /// zero elsewhere. A constant of the linearised model, so it lands in the targets' biases.
    fixed: Vec<Tensor>,
    pub(super) logits: Tensor,
}

/// A layer's active features, in (position, feature) order: positions, feature indices and
/// activations [n_l] each; where each position's features start [n_pos]; and their decoder rows,
/// [n_l, d_model] for each layer written (entry `j` writes to this layer + `j`: one layer for a
/// per-layer transcoder, every later layer for a CLT).
pub(super) struct Active {
    pub(super) pos: Tensor,
    pub(super) feature: Tensor,
    pub(super) values: Tensor,
    starts: Tensor,
    pub(super) decoders: Vec<Tensor>,
}

impl Active {
    /// The features at positions before `pos`: the first so many, as they are in position order.
    pub(super) fn before(&self, pos: i64) -> Result<i64> {
        Ok(if pos >= self.starts.size()[0] { self.pos.size()[0] } else { self.starts.f_int64_value(&[pos])? })
    }

    /// What these features write to layer + `j` at each of the first `n_pos` positions,
    /// [rows, n_pos, d_model], for the activations `acts` [rows, n] of the first `n` (those
    /// before `n_pos`): a weighted sum of decoder rows per position (embedding_bag), never a
    /// [rows, n, d_model] product.
    fn decode(&self, j: usize, acts: &Tensor, n_pos: i64) -> std::result::Result<Tensor, tch::TchError> {
        let (rows, n_l) = (acts.size()[0], acts.size()[1]);
        let starts = self.starts.f_narrow(0, 0, n_pos)?;
        let d = self.decoders[j].size()[1];
        let indices = Tensor::f_arange(n_l, (Kind::Int64, acts.device()))?.f_repeat([rows])?;
        let offsets =
            Tensor::f_arange(rows, (Kind::Int64, acts.device()))?.f_mul_scalar(n_l)?.f_unsqueeze(1)?.f_add(&starts.f_unsqueeze(0)?)?.f_flatten(0, -1)?;
        let weights = acts.f_to_kind(self.decoders[j].kind())?.f_flatten(0, -1)?;
        let (sum, _, _, _) = Tensor::f_embedding_bag(&self.decoders[j], &indices, &offsets, false, 0, false, Some(weights), false)?;
        sum.f_reshape([rows, n_pos, d])
    }
}

/// How much of the replacement model a batch of targets reads: the blocks up to the last target's
/// layer and the positions up to the last target's (attention is causal, so later positions change
/// nothing before them). Logits read every block, the final norm and every position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Span {
    /// Blocks run, from the first.
    pub(super) blocks: usize,
    /// Positions, from the first.
    pub(super) pos: i64,
    /// Whether the final norm runs (a logit is read).
    pub(super) logits: bool,
}

/// Sources of one linearised forward over the first `pos` positions: embeddings and errors
/// [rows, pos, d_model], and the activations of the active features before `pos` only, [rows, n]
/// per layer (a feature that is not active is no source, so the decode is a sum of n decoder rows
/// instead of a [d_sae, d_model] product).
pub(super) struct Leaves {
    pub(super) embed: Tensor,
    pub(super) acts: Vec<Tensor>,
    pub(super) errors: Vec<Tensor>,
}

impl Leaves {
    /// The clean sources at the first `pos` positions repeated `rows` times, as leaves that
    /// collect gradients.
    pub(super) fn repeat(clean: &Clean, rows: i64, pos: i64) -> Result<Leaves> {
        let rep = |t: &Tensor, n: i64| -> Result<Tensor> {
            let mut times = vec![1; t.dim() + 1];
            times[0] = rows;
            Ok(t.f_narrow(0, 0, n)?.f_unsqueeze(0)?.f_repeat(times.as_slice())?.f_detach()?.f_set_requires_grad(true)?)
        };
        Ok(Leaves {
            embed: rep(&clean.embed, pos)?,
            acts: clean.active.iter().map(|a| rep(&a.values, a.before(pos)?)).collect::<Result<_>>()?,
            errors: clean.errors.iter().map(|e| rep(e, pos)).collect::<Result<_>>()?,
        })
    }

    pub(super) fn zeros(clean: &Clean) -> Result<Leaves> {
        let zero = |t: &Tensor| -> Result<Tensor> { Ok(t.f_zeros_like()?.f_unsqueeze(0)?) };
        Ok(Leaves {
            embed: zero(&clean.embed)?,
            acts: clean.active.iter().map(|a| zero(&a.values)).collect::<Result<_>>()?,
            errors: clean.errors.iter().map(zero).collect::<Result<_>>()?,
        })
    }

    pub(super) fn all(&self) -> Vec<&Tensor> {
        std::iter::once(&self.embed).chain(&self.acts).chain(&self.errors).collect()
    }
}

/// What each row of a batch reads over a [`Span`]: `<x[row, pos], vector>` plus a constant, where x
/// is a layer's transcoder input (a feature target) or the final normalised residual (a logit).
/// The rows are grouped by what they read.
pub(super) struct Readout {
    reads: Vec<Read>,
    constant: Tensor,
}

/// Rows that read one tensor: a layer's transcoder input, or (`layer` None) the final residual.
struct Read {
    layer: Option<usize>,
    /// [m] rows of the batch, the position each reads [m], and its vector [m, d_model].
    rows: Tensor,
    pos: Tensor,
    vectors: Tensor,
}

pub(super) struct Replacement<'a> {
    model: &'a HookedTransformer,
    transcoders: &'a TranscoderSet,
    tokens: Tensor,
    pub(super) clean: Clean,
}

pub(super) fn expand(t: &Tensor, rows: i64) -> std::result::Result<Tensor, tch::TchError> {
    let mut shape = t.size();
    shape.insert(0, rows);
    t.f_unsqueeze(0)?.f_expand(shape.as_slice(), false)
}

impl<'a> Replacement<'a> {
    /// `zero_position_0`: features and errors at position 0 are no sources (circuit-tracer's
    /// default); the MLP output there stays what it is, as a constant.
    pub(super) fn new(model: &'a HookedTransformer, transcoders: &'a TranscoderSet, tokens: &[i64], zero_position_0: bool) -> Result<Self> {
        check_transcoders(model, transcoders)?;
        let n = model.cfg.n_layers;
        let tokens = Tensor::f_from_slice(tokens)?.f_unsqueeze(0)?.f_to_device(model.device())?;
        let mut names = vec![HookPoint::Embed, HookPoint::LnFinalScale];
        let hooks: Vec<(String, String)> = (0..n).map(|l| transcoders.hooks(l)).collect();
        for (l, (hook_in, hook_out)) in hooks.iter().enumerate() {
            names.extend([BlockSite::Ln1Scale, BlockSite::Pattern, BlockSite::Ln2Scale].map(|s| HookPoint::block(l, s)));
            names.extend([hook_in.parse::<HookPoint>()?, hook_out.parse()?]);
        }
        let (logits, cache) = tch::no_grad(|| model.run_with_cache(&tokens, CacheSpec::names(&names)))?;
        let get = |name: &str| -> Result<Tensor> { Ok(cache.get(name)?.f_squeeze_dim(0)?) };
        let at = |point: HookPoint| -> Result<Tensor> { Ok(cache.get(point)?.f_squeeze_dim(0)?) };
        let n_zeroed = if zero_position_0 { 1 } else { 0 };
        let x: Vec<Tensor> = hooks.iter().map(|(i, _)| get(i)).collect::<Result<_>>()?;
        let (latents, recon) = tch::no_grad(|| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
            let latents = x
                .iter()
                .enumerate()
                .map(|(l, x)| -> Result<Tensor> {
                    let a = transcoders.encode(l, x)?;
                    let _ = a.f_narrow(0, 0, n_zeroed)?.f_zero_()?;
                    Ok(a)
                })
                .collect::<Result<Vec<_>>>()?;
            let recon = transcoders.decode(&x, &latents)?;
            Ok((latents, recon))
        })?;
        let (mut active, mut errors, mut fixed) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (l, (a, recon)) in latents.iter().zip(&recon).enumerate() {
            let out = get(&hooks[l].1)?.f_to_kind(recon.kind())?;
            let residual = out.f_sub(recon)?.f_to_kind(model.kind())?;
            let (error, constant) = (residual.copy(), residual.f_zeros_like()?);
            constant.f_narrow(0, 0, n_zeroed)?.f_copy_(&residual.f_narrow(0, 0, n_zeroed)?)?;
            let _ = error.f_narrow(0, 0, n_zeroed)?.f_zero_()?;
            errors.push(error);
            fixed.push(constant);
            let nz = a.f_nonzero()?; // [n_l, 2]: (pos, feature), row-major
            let (pos, feature) = (nz.f_select(1, 0)?, nz.f_select(1, 1)?);
            let values = a.f_index(&[Some(pos.shallow_clone()), Some(feature.shallow_clone())])?;
            let rows = transcoders.decoders(l, &feature)?.f_detach()?; // [n_l, layers written, d]
            let decoders = (0..rows.size()[1]).map(|j| rows.f_select(1, j)?.f_contiguous()).collect::<std::result::Result<_, _>>()?;
            let counts = pos.f_bincount(None::<&Tensor>, a.size()[0])?;
            let starts = counts.f_cumsum(0, Kind::Int64)?.f_sub(&counts)?;
            active.push(Active { pos, feature, values, starts, decoders });
        }
        let per_layer = |site: BlockSite| -> Result<Vec<Tensor>> { (0..n).map(|l| at(HookPoint::block(l, site))).collect() };
        let clean = Clean {
            ln1_scale: per_layer(BlockSite::Ln1Scale)?,
            pattern: per_layer(BlockSite::Pattern)?,
            ln2_scale: per_layer(BlockSite::Ln2Scale)?,
            final_scale: at(HookPoint::LnFinalScale)?,
            embed: at(HookPoint::Embed)?,
            active,
            errors,
            fixed,
            logits: logits.f_select(0, 0)?.f_select(0, -1)?.f_to_kind(Kind::Double)?,
        };
        Ok(Replacement { model, transcoders, tokens, clean })
    }

    /// The span of the replacement model that `targets` (feature or logit nodes) read.
    pub(super) fn span(&self, nodes: &[Node], targets: &[usize]) -> Span {
        let mut span = Span { blocks: 0, pos: 0, logits: false };
        for &t in targets {
            let (blocks, pos, logits) = match nodes[t] {
                Node::Feature { layer, pos, .. } => (layer + 1, pos + 1, false),
                _ => (self.clean.active.len(), self.tokens.size()[1], true),
            };
            span = Span { blocks: span.blocks.max(blocks), pos: span.pos.max(pos), logits: span.logits || logits };
        }
        span
    }

    /// The whole replacement model.
    pub(super) fn full_span(&self) -> Span {
        Span { blocks: self.clean.active.len(), pos: self.tokens.size()[1], logits: true }
    }

    /// The linearised forward of `leaves` over `span` (the leaves' positions); returns the
    /// transcoder inputs [rows, pos, d_in] of the span's layers and, when it reads logits, the
    /// final normalised residual [rows, pos, d_model]. The frozen attention patterns and MLP
    /// outputs are given by replacing hooks, so the model computes neither queries, keys nor MLPs.
    pub(super) fn forward(&self, leaves: &Leaves, span: Span) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        let (rows, n_pos) = (leaves.embed.size()[0], span.pos);
        let tokens = self.tokens.f_narrow(1, 0, n_pos)?.f_expand([rows, -1], false)?;
        let n = span.blocks;
        let inputs: RefCell<Vec<Option<Tensor>>> = RefCell::new((0..n).map(|_| None).collect());
        let mut hooks = Hooks::new().add(HookPoint::Embed, |_, _| Ok(Some(leaves.embed.shallow_clone())));
        let c = &self.clean;
        let set = self.transcoders;
        let first = |t: &Tensor| t.f_narrow(0, 0, n_pos);
        for l in 0..n {
            let (hook_in, hook_out) = set.hooks(l);
            let pattern = c.pattern[l].f_narrow(1, 0, n_pos)?.f_narrow(2, 0, n_pos)?;
            hooks = hooks.replace(HookPoint::block(l, BlockSite::Pattern), move |_| Ok(expand(&pattern, rows)?));
            for (site, value) in [(BlockSite::Ln1Scale, first(&c.ln1_scale[l])?), (BlockSite::Ln2Scale, first(&c.ln2_scale[l])?)] {
                hooks = hooks.add(HookPoint::block(l, site), move |_, _| Ok(Some(expand(&value, rows)?)));
            }
            let inputs = &inputs;
            hooks = hooks.add(hook_in, move |x, _| {
                inputs.borrow_mut()[l] = Some(x.shallow_clone());
                Ok(None)
            });
            let (err, fixed) = (&leaves.errors[l], first(&c.fixed[l])?);
            hooks = hooks.replace(hook_out, move |_| {
                // b_dec and the skip path, the decoder rows of the active features of every
                // layer that writes here at their positions, the error and the constant.
                let x = inputs.borrow()[l]
                    .as_ref()
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| interp_core::Error::Input(format!("layer {l}'s transcoder input hook did not fire")))?;
                let mut total = set.decoder_bias(l, &x.f_to_kind(Kind::Float)?).map_err(|e| interp_core::Error::Input(e.to_string()))?.f_to_kind(err.kind())?;
                for (src, (acts, active)) in leaves.acts.iter().zip(&c.active).enumerate().take(l + 1) {
                    let j = l - src;
                    if j < active.decoders.len() && acts.size()[1] > 0 {
                        total = total.f_add(&active.decode(j, acts, n_pos)?.f_to_kind(err.kind())?)?;
                    }
                }
                Ok(total.f_add(err)?.f_add(&fixed)?)
            });
        }
        // Stop after the last block read and, for logits, apply the final norm with its scale
        // frozen: the unembedding is never needed, targets read the normalised residual.
        let resid = self.model.runner(&tokens).hooks(hooks).stop_at_layer(n).autograd().run()?.output;
        let x_final = if span.logits {
            let scale = expand(&first(&c.final_scale)?, rows)?;
            let mut x_final = self.model.cfg.norm.centre(&resid.f_to_kind(scale.kind())?, -1)?.f_div(&scale)?;
            let (gain, bias) = self.model.norm_weights(NormSite::LnFinal)?;
            if let Some(g) = gain {
                x_final = x_final.f_mul(&g)?;
            }
            if let Some(b) = bias {
                x_final = x_final.f_add(&b)?;
            }
            Some(x_final.f_to_kind(self.model.kind())?)
        } else {
            None
        };
        let inputs = inputs.into_inner().into_iter().collect::<Option<Vec<_>>>();
        let inputs = inputs.ok_or_else(|| Error::Input("a transcoder input hook did not fire".into()))?;
        Ok((inputs, x_final))
    }

    /// The readout of `targets` (feature or logit nodes), one per row, over `span`.
    pub(super) fn readout(&self, nodes: &[Node], targets: &[usize], span: Span) -> Result<Readout> {
        let dev = self.model.device();
        let mut constant = vec![0f64; targets.len()];
        let w_u = self.model.w_u().f_to_kind(Kind::Float)?;
        let mean_u = w_u.f_mean_dim(1, false, Kind::Float)?;
        let b_u_mean = self.model.b_u().map(|b| b.f_mean(Kind::Double)?.f_double_value(&[])).transpose()?;
        let mut groups: std::collections::BTreeMap<Option<usize>, Vec<(i64, i64, Tensor)>> = Default::default();
        for (row, &t) in targets.iter().enumerate() {
            let (layer, pos, vector) = match nodes[t] {
                Node::Feature { layer, pos, feature, .. } if layer < span.blocks && pos < span.pos => {
                    let (w, k) = self.transcoders.encoder(layer, feature)?;
                    constant[row] = k;
                    (Some(layer), pos, w.f_to_kind(Kind::Float)?)
                }
                Node::Logit { token, .. } if span.logits => {
                    if let (Some(b), Some(mean)) = (self.model.b_u(), b_u_mean) {
                        constant[row] = b.f_double_value(&[token])? - mean;
                    }
                    (None, span.pos - 1, w_u.f_select(1, token)?.f_sub(&mean_u)?)
                }
                _ => return Err(Error::Input("only features and logits inside the span are targets".into())),
            };
            groups.entry(layer).or_default().push((row as i64, pos, vector));
        }
        let index = |v: Vec<i64>| -> Result<Tensor> { Ok(Tensor::f_from_slice(&v)?.f_to_device(dev)?) };
        let reads = groups
            .into_iter()
            .map(|(layer, group)| {
                let vectors = Tensor::f_stack(&group.iter().map(|g| g.2.shallow_clone()).collect::<Vec<_>>(), 0)?.f_to_device(dev)?;
                Ok(Read { layer, rows: index(group.iter().map(|g| g.0).collect())?, pos: index(group.iter().map(|g| g.1).collect())?, vectors })
            })
            .collect::<Result<_>>()?;
        Ok(Readout { reads, constant: Tensor::f_from_slice(&constant)? })
    }
}

/// Each row's readout [rows] (f64, on the CPU) from the transcoder inputs `x_in` and the final
/// residual `x_final` of a forward over the readout's span.
pub(super) fn read(x_in: &[Tensor], x_final: Option<&Tensor>, r: &Readout) -> Result<Tensor> {
    let mut total = Tensor::f_zeros([r.constant.size()[0]], (Kind::Double, Device::Cpu))?;
    for Read { layer, rows, pos, vectors } in &r.reads {
        let x = match layer {
            Some(layer) => &x_in[*layer],
            None => x_final.ok_or_else(|| Error::Input("a logit is read from a forward without the final norm".into()))?,
        };
        let dots = x.f_index(&[Some(rows), Some(pos)])?.f_to_kind(Kind::Double)?.f_mul(&vectors.f_to_kind(Kind::Double)?)?.f_sum_dim_intlist(
            -1,
            false,
            Kind::Double,
        )?;
        total = total.f_index_add(0, &rows.f_to_device(Device::Cpu)?, &dots.f_to_device(Device::Cpu)?)?;
    }
    Ok(total.f_add(&r.constant)?)
}
