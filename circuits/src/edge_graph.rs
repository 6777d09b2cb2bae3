//! The edge graph of ACDC and EAP, the activations an edge patch needs, and a forward pass that
//! patches any set of edges, for many edge sets at once.
//!
//! Senders are the embedding, each head's output (`attn.hook_result`) and each MLP's output;
//! receivers are each head's q, k and v input (`hook_q_input`, ...), each MLP's input
//! (`hook_mlp_in`) and the final residual stream. Every sender feeds every later receiver: a
//! receiver's input is the sum of its senders' outputs (plus constant biases), so patching edge
//! `s -> r` adds `ablated_s - current_s` to `r`'s input alone.

use std::fmt;

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks};
use interp_core::config::Positional;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::prompts::TaskPrompts;

/// A component that writes into the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// Token (and learned position) embeddings.
    Embed,
    /// Head `head` of block `layer` (its `hook_result`).
    Head {
        /// Block.
        layer: usize,
        /// Head index.
        head: i64,
    },
    /// The MLP of block `layer` (its `hook_mlp_out`).
    Mlp {
        /// Block.
        layer: usize,
    },
}

/// Which input of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qkv {
    /// The query input.
    Q,
    /// The key input.
    K,
    /// The value input.
    V,
}

impl Qkv {
    /// `q`, `k` or `v`.
    pub fn letter(self) -> &'static str {
        match self {
            Qkv::Q => "q",
            Qkv::K => "k",
            Qkv::V => "v",
        }
    }
}

/// A component input that reads the residual stream. Under grouped-query attention the `K` and
/// `V` receivers are the key/value heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Receiver {
    /// One input of a head (`hook_q_input`, `hook_k_input`, `hook_v_input`).
    Head {
        /// Block.
        layer: usize,
        /// Head index (key/value head for K and V).
        head: i64,
        /// Which input.
        input: Qkv,
    },
    /// The MLP's input (`hook_mlp_in`).
    Mlp {
        /// Block.
        layer: usize,
    },
    /// The residual stream after the last block, read by the unembedding.
    Logits,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Embed => f.write_str("embed"),
            Sender::Head { layer, head } => write!(f, "L{layer}H{head}"),
            Sender::Mlp { layer } => write!(f, "MLP{layer}"),
        }
    }
}

impl fmt::Display for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Receiver::Head { layer, head, input } => write!(f, "L{layer}H{head}.{}", input.letter()),
            Receiver::Mlp { layer } => write!(f, "MLP{layer}"),
            Receiver::Logits => f.write_str("logits"),
        }
    }
}

/// A connection from a sender's output to a receiver's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Where it starts.
    pub sender: Sender,
    /// Where it ends.
    pub receiver: Receiver,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.sender, self.receiver)
    }
}

/// Receivers that read one hook point: the q (or k, or v) inputs of one layer's heads, one MLP's
/// input, or the final residual. Their edges are contiguous: receiver-major, then sender order.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// The hook point whose activation holds the receivers' inputs.
    pub point: HookPoint,
    /// The block the hook point is in.
    pub layer: usize,
    /// Number of receivers (heads) in the group; 1 for MLPs and logits (no head axis).
    pub n_receivers: i64,
    pub per_head: bool,
    /// Every sender before this index feeds the group.
    pub n_senders: usize,
    pub first_edge: usize,
    pub first_receiver: usize,
}

/// What replaces a removed edge's sender output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Ablation {
    /// The sender's output on the corrupted prompt of the same row (resample ablation).
    Resample,
    /// Zero.
    Zero,
    /// The sender's output averaged over the corrupted prompts, per position (over the prompts
    /// that reach it, when they differ in length).
    Mean,
}

impl std::str::FromStr for Ablation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resample" => Ok(Ablation::Resample),
            "zero" => Ok(Ablation::Zero),
            "mean" => Ok(Ablation::Mean),
            _ => Err(Error::Input(format!("unknown ablation `{s}`; use resample, zero or mean"))),
        }
    }
}

/// Sender outputs on the clean prompts and their ablated values, and the clean residual stream
/// entering each block (where a patched forward restarts).
pub struct EdgeActivations {
    /// Clean prompts [B, P].
    pub tokens: Tensor,
    /// [S, B, P, D] every sender's output on the clean prompts.
    pub clean: Tensor,
    /// [S, B, P, D] what replaces a removed edge's sender output.
    pub ablated: Tensor,
    /// [L, B, P, D] clean residual stream entering each block.
    pub resid_pre: Tensor,
    /// [S, B, P, D] ablated - clean, computed once when first needed.
    diff: std::cell::OnceCell<Tensor>,
}

impl EdgeActivations {
    /// Activations from their parts: `tokens` [B, P], `clean` and `ablated` [S, B, P, D],
    /// `resid_pre` [L, B, P, D].
    pub fn new(tokens: Tensor, clean: Tensor, ablated: Tensor, resid_pre: Tensor) -> EdgeActivations {
        EdgeActivations { tokens, clean, ablated, resid_pre, diff: std::cell::OnceCell::new() }
    }

    /// The activations of prompts `start .. start + len` (views, no copy).
    pub fn narrow(&self, start: i64, len: i64) -> Result<EdgeActivations> {
        Ok(EdgeActivations::new(
            self.tokens.f_narrow(0, start, len)?,
            self.clean.f_narrow(1, start, len)?,
            self.ablated.f_narrow(1, start, len)?,
            self.resid_pre.f_narrow(1, start, len)?,
        ))
    }

    /// [S, B, P, D] ablated - clean sender outputs: what removing an edge adds to its receiver.
    pub fn diff(&self) -> Result<&Tensor> {
        if let Some(d) = self.diff.get() {
            return Ok(d);
        }
        let d = self.ablated.f_sub(&self.clean)?;
        Ok(self.diff.get_or_init(|| d))
    }
}

/// The edge graph of a model.
pub struct EdgeGraph {
    /// Every sender, in order.
    pub senders: Vec<Sender>,
    /// Every receiver, in order.
    pub receivers: Vec<Receiver>,
    /// Every edge: each sender before a receiver to that receiver.
    pub edges: Vec<Edge>,
    pub(crate) groups: Vec<Group>,
    /// Layers of the model.
    pub n_layers: usize,
    n_heads: i64,
    n_kv_heads: i64,
    has_mlp: bool,
}

impl EdgeGraph {
    /// The graph of `model`. Errors for layouts where component outputs do not add into the
    /// residual stream (Gemma-2's post-attention and post-MLP norms).
    pub fn new(model: &HookedTransformer) -> Result<EdgeGraph> {
        let c = &model.cfg;
        if c.post_norms {
            let what = match c.post_ln_alpha {
                Some(_) => "normalises the residual stream after each sublayer (post-norm blocks)",
                None => "normalises each attention and MLP output before adding it to the residual stream",
            };
            return Err(Error::UnsupportedLayout(format!("`{}` {what}, so head outputs are not additive senders", c.model_type)));
        }
        let (h, kv, has_mlp) = (c.n_heads, c.n_kv_heads, !c.attn_only);
        let mut senders = vec![Sender::Embed];
        for layer in 0..c.n_layers {
            senders.extend((0..h).map(|head| Sender::Head { layer, head }));
            if has_mlp {
                senders.push(Sender::Mlp { layer });
            }
        }
        let per_layer = h as usize + usize::from(has_mlp);
        let (mut receivers, mut edges, mut groups) = (Vec::new(), Vec::new(), Vec::new());
        let mut add_group = |point: HookPoint, layer: usize, recv: Vec<Receiver>, per_head: bool, n_senders: usize| {
            groups.push(Group {
                point,
                layer,
                n_receivers: recv.len() as i64,
                per_head,
                n_senders,
                first_edge: edges.len(),
                first_receiver: receivers.len(),
            });
            for r in recv {
                edges.extend(senders[..n_senders].iter().map(|&s| Edge { sender: s, receiver: r }));
                receivers.push(r);
            }
        };
        for layer in 0..c.n_layers {
            let before = 1 + layer * per_layer;
            for (input, n, site) in [(Qkv::Q, h, BlockSite::QInput), (Qkv::K, kv, BlockSite::KInput), (Qkv::V, kv, BlockSite::VInput)] {
                let recv = (0..n).map(|head| Receiver::Head { layer, head, input }).collect();
                add_group(HookPoint::block(layer, site), layer, recv, true, before);
            }
            if has_mlp {
                let n_senders = if c.parallel_attn_mlp { before } else { before + h as usize };
                add_group(HookPoint::block(layer, BlockSite::MlpIn), layer, vec![Receiver::Mlp { layer }], false, n_senders);
            }
        }
        let last = c.n_layers.saturating_sub(1);
        add_group(HookPoint::block(last, BlockSite::ResidPost), last, vec![Receiver::Logits], false, senders.len());
        Ok(EdgeGraph { senders, receivers, edges, groups, n_layers: c.n_layers, n_heads: h, n_kv_heads: kv, has_mlp })
    }

    /// Number of edges.
    pub fn n_edges(&self) -> usize {
        self.edges.len()
    }

    /// Parses an edge written as its `Display` form (`L0H1 -> L1H0.k`).
    pub fn find_edge(&self, text: &str) -> Result<usize> {
        let wanted = text.split_whitespace().collect::<Vec<_>>().join(" ");
        self.edges
            .iter()
            .position(|e| e.to_string() == wanted)
            .ok_or_else(|| Error::Input(format!("no edge `{text}` in this model's graph (edges look like `L0H1 -> L1H0.k`)")))
    }

    pub(crate) fn sender_index(&self, s: Sender) -> usize {
        let per_layer = self.n_heads as usize + usize::from(self.has_mlp);
        match s {
            Sender::Embed => 0,
            Sender::Head { layer, head } => 1 + layer * per_layer + head as usize,
            Sender::Mlp { layer } => 1 + layer * per_layer + self.n_heads as usize,
        }
    }

    /// The senders a receiver's component feeds: the head itself (for each query head sharing a
    /// key/value head), the MLP, or none for the logits.
    pub(crate) fn receiver_nodes(&self, r: Receiver) -> Vec<usize> {
        match r {
            Receiver::Head { layer, head, input: Qkv::Q } => vec![self.sender_index(Sender::Head { layer, head })],
            Receiver::Head { layer, head, .. } => {
                let g = self.n_heads / self.n_kv_heads;
                (head * g..(head + 1) * g).map(|h| self.sender_index(Sender::Head { layer, head: h })).collect()
            }
            Receiver::Mlp { layer } => vec![self.sender_index(Sender::Mlp { layer })],
            Receiver::Logits => vec![],
        }
    }

    /// Hook names whose cache holds every sender output and the residual entering each block.
    fn sender_hooks(&self, model: &HookedTransformer) -> Vec<&'static str> {
        let mut names = vec!["hook_embed", "blocks.*.attn.hook_result", "blocks.*.hook_resid_pre"];
        if model.cfg.positional == Positional::Learned {
            names.push("hook_pos_embed");
        }
        if self.has_mlp {
            names.push("blocks.*.hook_mlp_out");
        }
        names
    }

    /// Sender outputs [S, B, P, D] and residuals entering each block [L, B, P, D] on `tokens`.
    fn sender_outputs(&self, model: &HookedTransformer, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, cache) = model.run_with_cache(tokens, CacheSpec::names(self.sender_hooks(model)))?;
        let mut embed = cache.get("hook_embed")?.shallow_clone();
        if cache.contains("hook_pos_embed") {
            embed = embed.f_add(cache.get("hook_pos_embed")?)?;
        }
        let mut outs = vec![embed.f_unsqueeze(0)?];
        let mut resid = Vec::new();
        for l in 0..self.n_layers {
            outs.push(cache.get(HookPoint::block(l, BlockSite::Result))?.f_permute([2, 0, 1, 3])?);
            if self.has_mlp {
                outs.push(cache.get(HookPoint::block(l, BlockSite::MlpOut))?.f_unsqueeze(0)?);
            }
            resid.push(cache.get(HookPoint::block(l, BlockSite::ResidPre))?.shallow_clone());
        }
        Ok((Tensor::f_cat(&outs, 0)?, Tensor::f_stack(&resid, 0)?))
    }

    /// Everything a patched forward needs: clean sender outputs, their ablated values (from the
    /// corrupted prompts for resample and mean ablation) and the clean residuals.
    ///
    /// Shapes: `clean`, `corrupted` [B, P] int64 of equal shape (`corrupted` unused for zero ablation).
    pub fn activations(&self, model: &HookedTransformer, clean: &Tensor, corrupted: &Tensor, ablation: Ablation) -> Result<EdgeActivations> {
        self.activations_with(model, clean, corrupted, ablation, None)
    }

    /// [`EdgeGraph::activations`] of a prompt set, whose pairs may differ in length: the mean
    /// ablation averages each position over the prompts that reach it.
    pub fn prompt_activations(&self, model: &HookedTransformer, prompts: &TaskPrompts, ablation: Ablation) -> Result<EdgeActivations> {
        let mean = match ablation {
            Ablation::Mean => Some(self.mean_outputs(model, prompts, prompts.len())?),
            _ => None,
        };
        self.activations_with(model, &prompts.clean, &prompts.corrupted, ablation, mean.as_ref())
    }

    /// Sender outputs [S, 1, P, D] averaged over the corrupted prompts that reach each position,
    /// `chunk` prompts per forward.
    pub fn mean_outputs(&self, model: &HookedTransformer, prompts: &TaskPrompts, chunk: usize) -> Result<Tensor> {
        let p = prompts.clean.size()[1];
        let (mut sum, mut count): (Option<Tensor>, Vec<f64>) = (None, vec![0.0; p as usize]);
        for start in (0..prompts.len()).step_by(chunk.max(1)) {
            let part = prompts.narrow(start, chunk.min(prompts.len() - start))?;
            let (corr, _) = self.sender_outputs(model, &part.corrupted.f_to_device(model.device())?)?;
            // valid[b, p] = 1 where prompt b has a token at position p.
            let valid: Vec<f32> = part.lengths.iter().flat_map(|len| (0..p).map(move |i| if i < *len { 1.0 } else { 0.0 })).collect();
            for (i, v) in valid.iter().enumerate() {
                count[i % p as usize] += *v as f64;
            }
            let valid = Tensor::f_from_slice(&valid)?.f_view([1, -1, p, 1])?.f_to_kind(corr.kind())?.f_to_device(corr.device())?;
            let s = corr.f_mul(&valid)?.f_sum_dim_intlist(1, true, corr.kind())?;
            sum = Some(match sum {
                Some(acc) => acc.f_add(&s)?,
                None => s,
            });
        }
        let sum = sum.ok_or_else(|| Error::Input("no prompts to average".into()))?;
        let count: Vec<f32> = count.iter().map(|c| c.max(1.0) as f32).collect();
        let count = Tensor::f_from_slice(&count)?.f_view([1, 1, p, 1])?.f_to_kind(sum.kind())?.f_to_device(sum.device())?;
        Ok(sum.f_div(&count)?)
    }

    /// Activations with the ablated values of `ablation`; `mean` [S, 1, P, D] is required for
    /// [`Ablation::Mean`] (see [`EdgeGraph::mean_outputs`]).
    pub(crate) fn activations_with(&self, model: &HookedTransformer, clean: &Tensor, corrupted: &Tensor, ablation: Ablation, mean: Option<&Tensor>) -> Result<EdgeActivations> {
        crate::metric::check_aligned(clean, corrupted)?;
        let (clean, corrupted) = (clean.f_to_device(model.device())?, corrupted.f_to_device(model.device())?);
        let (clean_out, resid_pre) = self.sender_outputs(model, &clean)?;
        let ablated = match (ablation, mean) {
            (Ablation::Zero, _) => clean_out.f_zeros_like()?,
            (Ablation::Resample, _) => self.sender_outputs(model, &corrupted)?.0,
            (Ablation::Mean, Some(mean)) => mean.f_expand_as(&clean_out)?.f_contiguous()?,
            (Ablation::Mean, None) => {
                let (corr, _) = self.sender_outputs(model, &corrupted)?;
                corr.f_mean_dim(1, true, corr.kind())?.f_expand_as(&corr)?.f_contiguous()?
            }
        };
        Ok(EdgeActivations::new(clean, clean_out, ablated, resid_pre))
    }

    /// Logits [V * B, P, d_vocab] of the clean prompts with, in variant `v`, every edge `e` with
    /// `mask[v, e] == 0` patched to its ablated sender output (`mask` [V, E], 1 keeps the edge;
    /// fractional values interpolate). Rows are variant-major.
    ///
    /// The pass starts at block `start_layer` from the clean residual: every edge into an
    /// earlier block must be kept in every variant.
    pub fn run_masked(&self, model: &HookedTransformer, acts: &EdgeActivations, mask: &Tensor, start_layer: usize) -> Result<Tensor> {
        let resid = self.masked_residual(model, acts, mask, start_layer)?;
        Ok(model.runner_from_layer(&resid, self.n_layers).run()?.output)
    }

    /// `metric` of each edge set in `mask` [V, E] (see [`EdgeGraph::run_masked`]), per variant
    /// [V]: the final norm and the unembedding run only at each prompt's answer position.
    pub fn masked_metric(&self, model: &HookedTransformer, acts: &EdgeActivations, metric: &crate::Metric, mask: &Tensor, start_layer: usize) -> Result<Tensor> {
        metric.per_variant_of_residual(model, &self.masked_residual(model, acts, mask, start_layer)?)
    }

    /// The residual stream after the last block [V * B, P, D] of a masked forward.
    fn masked_residual(&self, model: &HookedTransformer, acts: &EdgeActivations, mask: &Tensor, start_layer: usize) -> Result<Tensor> {
        let e = self.edges.len() as i64;
        if mask.dim() != 2 || mask.size()[1] != e {
            return Err(Error::Shape { what: "the edge mask".into(), expected: format!("[variants, {e}]"), found: mask.size() });
        }
        if start_layer >= self.n_layers {
            return Err(interp_core::Error::LayerOutOfRange { layer: start_layer, n_layers: self.n_layers }.into());
        }
        let kind = acts.clean.kind();
        let device = acts.clean.device();
        let removed = mask.f_to_kind(kind)?.f_to_device(device)?.f_neg()?.f_add_scalar(1.0)?; // [V, E]
        let size = acts.clean.size();
        let (v, b, p, d) = (mask.size()[0], size[1], size[2], size[3]);
        // Senders computed in this pass start here; earlier ones keep their clean outputs.
        let first_live = self.sender_index(Sender::Head { layer: start_layer, head: 0 });
        // Per patched group: the senders some variant removes, split into those before the pass
        // (whose output here is the clean one) and those computed in it.
        let mut active: Vec<(usize, Tensor, Vec<i64>, Vec<i64>)> = Vec::new(); // (group, weights [V, R, S_g], before, live)
        let mut needed = vec![false; self.senders.len()];
        for (gi, g) in self.groups.iter().enumerate() {
            let w = removed.f_narrow(1, g.first_edge as i64, g.n_receivers * g.n_senders as i64)?.f_view([v, g.n_receivers, g.n_senders as i64])?;
            let used: Vec<i64> = Vec::<f64>::try_from(&w.f_abs()?.f_sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Double)?)?
                .iter()
                .enumerate()
                .filter(|(_, x)| **x != 0.0)
                .map(|(s, _)| s as i64)
                .collect();
            if used.is_empty() {
                continue;
            }
            if g.layer < start_layer {
                return Err(Error::Input(format!("edges into `{}` are patched, but the pass starts at block {start_layer}", g.point)));
            }
            let (before, live): (Vec<i64>, Vec<i64>) = used.into_iter().partition(|s| (*s as usize) < first_live);
            for s in &live {
                needed[*s as usize] = true;
            }
            active.push((gi, w, before, live));
        }
        // Senders computed in this pass whose output some patched edge reads get a slot, in sender
        // order, of `live` [V, slots, B, P, D]; a group's live senders lie in a prefix of the slots.
        let slot_of: Vec<Option<i64>> = {
            let mut next = 0;
            needed.iter().map(|n| n.then(|| (next, next += 1).0)).collect()
        };
        let slot_senders: Vec<i64> = (0..self.senders.len() as i64).filter(|s| needed[*s as usize]).collect();
        let live = Tensor::f_zeros([v, slot_senders.len() as i64, b, p, d], (kind, device))?;
        let diff = acts.diff()?;
        let mut hooks = Hooks::new();
        for l in start_layer..self.n_layers {
            let heads: Vec<(i64, i64)> = (0..self.n_heads).filter_map(|h| slot_of[self.sender_index(Sender::Head { layer: l, head: h })].map(|s| (h, s))).collect();
            if let Some(&(_, first_slot)) = heads.first() {
                let live = live.shallow_clone();
                let idx = Tensor::f_from_slice(&heads.iter().map(|(h, _)| *h).collect::<Vec<_>>())?.f_to_device(device)?;
                hooks = hooks.add(HookPoint::block(l, BlockSite::Result), move |x, _| {
                    // x [V * B, P, H, D] -> the needed heads [V, k, B, P, D] (consecutive slots)
                    let out = x.f_view([v, b, p, -1, d])?.f_index_select(3, &idx)?.f_permute([0, 3, 1, 2, 4])?;
                    live.f_narrow(1, first_slot, idx.size()[0])?.f_copy_(&out)?;
                    Ok(None)
                });
            }
            if self.has_mlp {
                if let Some(slot) = slot_of[self.sender_index(Sender::Mlp { layer: l })] {
                    let live = live.shallow_clone();
                    hooks = hooks.add(HookPoint::block(l, BlockSite::MlpOut), move |x, _| {
                        live.f_select(1, slot)?.f_copy_(&x.f_view([v, b, p, d])?)?;
                        Ok(None)
                    });
                }
            }
        }
        let bpd = b * p * d;
        for (gi, w, before, live_senders) in active {
            let g = &self.groups[gi];
            let (r, per_head) = (g.n_receivers, g.per_head);
            let on = |ids: &[i64]| Tensor::f_from_slice(ids).and_then(|t| t.f_to_device(device));
            // delta[v, b, p, r, d] = sum_s w[v, r, s] * (ablated_s - current_s), computed when the
            // hook fires (one group's delta alive at a time): for the senders before the pass
            // (current = clean) from `diff`, for the live ones `ablated` minus their outputs.
            // Few patched senders are gathered; many take one dense product over the sender range
            // (unpatched senders have weight 0; the values are views, not copies).
            let pre = first_live.min(g.n_senders) as i64;
            let term = |ids: &[i64], values: Tensor, start: i64, len: i64| -> Result<(Tensor, Tensor, Option<Tensor>)> {
                if ids.len() as i64 * 4 <= len {
                    let idx = on(ids)?;
                    Ok((w.f_index_select(2, &idx)?, values, Some(idx.f_sub_scalar(start)?)))
                } else {
                    Ok((w.f_narrow(2, start, len)?.f_contiguous()?, values, None))
                }
            };
            let mut terms = Vec::new();
            if !before.is_empty() {
                terms.push(term(&before, diff.f_narrow(0, 0, pre)?, 0, pre)?);
            }
            let current = if live_senders.is_empty() {
                None
            } else {
                let n_live = g.n_senders as i64 - pre;
                terms.push(term(&live_senders, acts.ablated.f_narrow(0, pre, n_live)?, pre, n_live)?);
                // Every slot's sender before this group's end (slots are in sender order, so
                // they are a prefix of `live`, read as a view); weight 0 for those it does not use.
                let prefix: Vec<i64> = slot_senders.iter().copied().take_while(|s| (*s as usize) < g.n_senders).collect();
                Some((w.f_index_select(2, &on(&prefix)?)?, prefix.len() as i64))
            };
            let live = live.shallow_clone();
            hooks = hooks.add(g.point, move |x, _| {
                let mut delta: Option<Tensor> = None;
                for (weights, values, idx) in &terms {
                    let values = match idx {
                        Some(i) => values.f_index_select(0, i)?,
                        None => values.shallow_clone(),
                    };
                    let k = weights.size()[2];
                    let t = weights.f_reshape([v * r, k])?.f_matmul(&values.f_reshape([k, bpd])?)?.f_view([v, r, bpd])?;
                    delta = Some(match delta {
                        Some(d) => d.f_add(&t)?,
                        None => t,
                    });
                }
                let mut delta = delta.ok_or("a patched group without patched senders")?;
                if let Some((wl, k)) = &current {
                    let outputs = live.f_narrow(1, 0, *k)?.f_reshape([v, *k, bpd])?;
                    delta = delta.f_sub(&wl.f_bmm(&outputs)?)?;
                }
                let delta = delta.f_view([v, r, b, p, d])?.f_permute([0, 2, 3, 1, 4])?;
                let delta = if per_head { delta.f_reshape([v * b, p, r, d])? } else { delta.f_reshape([v * b, p, d])? };
                Ok(Some(x.f_add(&delta)?))
            });
        }
        let resid = acts.resid_pre.f_select(0, start_layer as i64)?.f_unsqueeze(0)?.f_expand([v, b, p, d], false)?.f_reshape([v * b, p, d])?;
        Ok(model.runner_from_layer(&resid, start_layer).hooks(hooks).stop_at_layer(self.n_layers).run()?.output)
    }

    /// The metric of each edge set in `masks` [V, E], `max_rows` prompt rows per forward at most.
    pub fn circuit_metrics(
        &self,
        model: &HookedTransformer,
        acts: &EdgeActivations,
        metric: &crate::Metric,
        masks: &Tensor,
        max_rows: i64,
    ) -> Result<Vec<f64>> {
        let b = acts.tokens.size()[0];
        let per = (max_rows / b).max(1);
        let mut out = Vec::new();
        for chunk in masks.f_split(per, 0)? {
            out.extend(Vec::<f64>::try_from(&self.masked_metric(model, acts, metric, &chunk, 0)?.f_to_kind(Kind::Double)?)?);
        }
        Ok(out)
    }

    /// Per-receiver-group edge ranges, for the attribution and ACDC code.
    pub(crate) fn group_edges(&self, gi: usize) -> std::ops::Range<usize> {
        let g = &self.groups[gi];
        g.first_edge..g.first_edge + g.n_receivers as usize * g.n_senders
    }

    /// The edge set as a mask row [E] (1 keeps).
    pub fn mask_of(&self, kept: &[bool]) -> Result<Tensor> {
        let v: Vec<f32> = kept.iter().map(|k| if *k { 1.0 } else { 0.0 }).collect();
        Ok(Tensor::f_from_slice(&v)?)
    }
}
