//! The edge graph of ACDC and EAP, the activations an edge patch needs, and a forward pass that
//! patches any set of edges, for many edge sets at once.
//!
//! Senders are the embedding, each head's output (`attn.hook_result`) and each MLP's output;
//! receivers are each head's q, k and v input (`hook_q_input`, ...), each MLP's input
//! (`hook_mlp_in`) and the final residual stream. Every sender feeds every later receiver: a
//! receiver's input is the sum of its senders' outputs (plus constant biases), so patching edge
//! `s -> r` adds `ablated_s - current_s` to `r`'s input alone.

use std::fmt;

use interp_core::config::Positional;
use interp_core::{at_rows, BlockSite, CacheSpec, HookName, HookPoint, HookedTransformer, Hooks};
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
            _ => Err(Error::setting("ablation", s, "resample, zero or mean")),
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

/// The removed edges of one edge set, summed per receiver: `sum_s removed_rs (ablated_s - clean_s)`
/// for each receiver `r`. A masked forward of this set, or of this set less a few more edges,
/// reads one tensor per receiver group instead of every removed sender's outputs; ACDC adds each
/// edge it removes.
pub(crate) struct RemovedSums {
    /// [E] whether each edge is removed.
    removed: Vec<bool>,
    /// Per receiver group: [B, P, R, D] (heads' inputs) or [B, P, D], `None` while none of its
    /// edges is removed.
    sums: Vec<Option<Tensor>>,
}

impl RemovedSums {
    /// The sums of the edge set `kept` [E] on `acts`.
    pub(crate) fn new(graph: &EdgeGraph, acts: &EdgeActivations, kept: &[bool]) -> Result<RemovedSums> {
        if kept.len() != graph.n_edges() {
            return Err(Error::Count { what: "edges in the edge set for the graph's edges".into(), found: kept.len(), expected: graph.n_edges() });
        }
        let mut sums = RemovedSums { removed: vec![false; kept.len()], sums: graph.groups.iter().map(|_| None).collect() };
        let size = acts.clean.size();
        let (b, p, d) = (size[1], size[2], size[3]);
        for (gi, g) in graph.groups.iter().enumerate() {
            let range = graph.group_edges(gi);
            if kept[range.clone()].iter().all(|k| *k) {
                continue;
            }
            let w: Vec<f32> = kept[range.clone()].iter().map(|k| if *k { 0.0 } else { 1.0 }).collect();
            let n = g.n_senders as i64;
            let w = Tensor::f_from_slice(&w)?.f_view([g.n_receivers, n])?.f_to_kind(acts.clean.kind())?.f_to_device(acts.clean.device())?;
            // [R, B P D] -> [B, P, R, D]
            let product = |t: &Tensor| -> Result<Tensor> { Ok(w.f_matmul(&t.f_narrow(0, 0, n)?.f_reshape([n, -1])?)?) };
            let sum = product(&acts.ablated)?.f_sub(&product(&acts.clean)?)?.f_view([g.n_receivers, b, p, d])?.f_permute([1, 2, 0, 3])?;
            sums.sums[gi] = Some(if g.per_head { sum.f_contiguous()? } else { sum.f_reshape([b, p, d])? });
            for e in range {
                sums.removed[e] = !kept[e];
            }
        }
        Ok(sums)
    }

    /// Adds edge `e` to the removed ones (nothing if it is already).
    pub(crate) fn remove(&mut self, graph: &EdgeGraph, acts: &EdgeActivations, e: usize) -> Result<()> {
        if std::mem::replace(&mut self.removed[e], true) {
            return Ok(());
        }
        let gi = graph.groups.iter().rposition(|g| g.first_edge <= e).ok_or_else(|| Error::Input(format!("no edge {e}")))?;
        let g = &graph.groups[gi];
        let (r, s) = (((e - g.first_edge) / g.n_senders) as i64, ((e - g.first_edge) % g.n_senders) as i64);
        let diff = acts.ablated.f_select(0, s)?.f_sub(&acts.clean.f_select(0, s)?)?; // [B, P, D]
        let sum = match &mut self.sums[gi] {
            Some(t) => t,
            slot => {
                let size = diff.size();
                let shape = if g.per_head { vec![size[0], size[1], g.n_receivers, size[2]] } else { size };
                slot.insert(Tensor::f_zeros(shape.as_slice(), (diff.kind(), diff.device()))?)
            }
        };
        let mut target = if g.per_head { sum.f_select(2, r)? } else { sum.shallow_clone() };
        let _ = target.f_add_(&diff)?;
        Ok(())
    }

    /// The removed edges as a row [1, E] of ones.
    fn mask(&self, kind: Kind, device: tch::Device) -> Result<Tensor> {
        let v: Vec<f32> = self.removed.iter().map(|r| if *r { 1.0 } else { 0.0 }).collect();
        Ok(Tensor::f_from_slice(&v)?.f_view([1, -1])?.f_to_kind(kind)?.f_to_device(device)?)
    }
}

/// The ablated - clean outputs a patched group's removed edges carry: a few senders' gathered from
/// the stored outputs when the group's hook fires, or a prefix of the shared difference tensor.
enum Differences {
    /// Sender indices, the ablated and the clean outputs [S, B, P, D].
    Gather(Tensor, Tensor, Tensor),
    /// [n_senders, B, P, D].
    Dense(Tensor),
}

/// The live slots a patched group's product reads.
enum Slots {
    /// The first k slots (a view).
    Prefix(i64),
    /// These slots, gathered.
    Gather(Tensor),
}

/// A receiver group some variant of a masked forward patches.
struct PatchedGroup {
    group: usize,
    /// [V, R, S_g] each variant's removed edges into the group.
    removed: Tensor,
    /// [V, R, S_g] those beyond the removed edges already summed.
    extra: Tensor,
    /// Senders where some variant's `extra` is not zero.
    differ: Vec<i64>,
    /// Removed senders that the pass computes.
    live: Vec<i64>,
    /// Whether the group's inputs start from the ablated sum (see [`EdgeGraph::masked_residual`]).
    from_ablated: bool,
}

/// Sender outputs [S, B, P, D] at one position per prompt, `rows` [B] int64: [S, B, 1, D].
pub(crate) fn senders_at_rows(t: &Tensor, rows: &Tensor) -> Result<Tensor> {
    Ok(at_rows(&t.f_permute([1, 2, 0, 3])?, rows)?.f_permute([2, 0, 1, 3])?)
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
            groups.push(Group { point, layer, n_receivers: recv.len() as i64, per_head, n_senders, first_edge: edges.len(), first_receiver: receivers.len() });
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

    /// Whether heads share key-value heads (grouped-query attention): then the `K` and `V`
    /// receivers are key-value heads.
    pub fn kv_grouped(&self) -> bool {
        self.n_kv_heads < self.n_heads
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

    /// The index of sender `s` among the graph's senders (the row of its node score).
    pub fn sender_index(&self, s: Sender) -> usize {
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
    fn sender_hooks(&self, model: &HookedTransformer) -> Vec<String> {
        let mut names = vec![HookPoint::Embed.hook_name(), BlockSite::Result.hook_name(), BlockSite::ResidPre.hook_name()];
        if model.cfg.positional == Positional::Learned {
            names.push(HookPoint::PosEmbed.hook_name());
        }
        if self.has_mlp {
            names.push(BlockSite::MlpOut.hook_name());
        }
        names
    }

    /// Sender outputs [S, B, P, D] and residuals entering each block [L, B, P, D] on `tokens`.
    fn sender_outputs(&self, model: &HookedTransformer, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        // Every sender and residual is read before the final norm: no unembedding.
        let out = model.runner(tokens).cache(CacheSpec::names(self.sender_hooks(model))).stop_at_layer(self.n_layers).run()?;
        let cache = out.cache.ok_or_else(|| Error::Input("the run returned no cache".into()))?;
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
    pub(crate) fn activations_with(
        &self,
        model: &HookedTransformer,
        clean: &Tensor,
        corrupted: &Tensor,
        ablation: Ablation,
        mean: Option<&Tensor>,
    ) -> Result<EdgeActivations> {
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
        let resid = self.masked_residual(model, acts, mask, start_layer, None, None)?;
        Ok(model.runner_from_layer(&resid, self.n_layers).run()?.output)
    }

    /// `metric` of each edge set in `mask` [V, E] (see [`EdgeGraph::run_masked`]), per variant
    /// [V]: the final norm and the unembedding run only at each prompt's answer position.
    pub fn masked_metric(
        &self,
        model: &HookedTransformer,
        acts: &EdgeActivations,
        metric: &crate::Metric,
        mask: &Tensor,
        start_layer: usize,
    ) -> Result<Tensor> {
        self.masked_metric_from(model, acts, metric, mask, start_layer, None)
    }

    /// [`EdgeGraph::masked_metric`] with the removed edges of `sums` already summed per receiver:
    /// each variant patches only the edges where it differs from `sums`' edge set.
    pub(crate) fn masked_metric_from(
        &self,
        model: &HookedTransformer,
        acts: &EdgeActivations,
        metric: &crate::Metric,
        mask: &Tensor,
        start_layer: usize,
        sums: Option<&RemovedSums>,
    ) -> Result<Tensor> {
        // The last block runs only at each prompt's answer position (the metric reads nothing else).
        let size = acts.tokens.size();
        let rows = metric.answer_rows(mask.size()[0] * size[0], size[1], acts.clean.device())?;
        metric.at_last().per_variant_of_residual(model, &self.masked_residual(model, acts, mask, start_layer, sums, Some(&rows))?)
    }

    /// The residual stream after the last block [V * B, P, D] of a masked forward; with `rows`
    /// [V * B], the last block runs at those positions only ([V * B, 1, D]).
    ///
    /// Receiver `r` gets `sum_s removed_rs (ablated_s - current_s)`, written as
    /// `sum_s removed_rs (ablated_s - clean_s) + sum_{s in the pass} removed_rs (clean_s - current_s)`:
    /// the first sum is read from `sums` for its edge set plus a product over the senders where a
    /// variant differs from it, the second from the outputs of the senders this pass computes
    /// (earlier senders keep their clean outputs).
    ///
    /// Without `sums`, a group whose variants keep fewer senders' edges than they remove starts
    /// from the ablated sum instead: `sum_s (ablated_s - current_s) - sum_s kept_rs (ablated_s -
    /// current_s)`, the first sum a running total over the senders (one add per sender), the
    /// second a product over the few kept senders: a small circuit's pass costs about a plain
    /// forward.
    fn masked_residual(
        &self,
        model: &HookedTransformer,
        acts: &EdgeActivations,
        mask: &Tensor,
        start_layer: usize,
        sums: Option<&RemovedSums>,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
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
                                                                                              // What each variant patches beyond `sums`' edge set.
        let extra = match sums {
            Some(s) => removed.f_sub(&s.mask(kind, device)?)?,
            None => removed.shallow_clone(),
        };
        let size = acts.clean.size();
        let (v, b, p, d) = (mask.size()[0], size[1], size[2], size[3]);
        // Senders computed in this pass start here; earlier ones keep their clean outputs.
        let first_live = self.sender_index(Sender::Head { layer: start_layer, head: 0 });
        let nonzero = |w: &Tensor| -> Result<Vec<i64>> {
            let total = Vec::<f64>::try_from(&w.f_abs()?.f_sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Double)?)?;
            Ok(total.iter().enumerate().filter(|(_, x)| **x != 0.0).map(|(s, _)| s as i64).collect())
        };
        let mut active: Vec<PatchedGroup> = Vec::new();
        let mut needed = vec![false; self.senders.len()];
        for (gi, g) in self.groups.iter().enumerate() {
            let narrow = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_narrow(1, g.first_edge as i64, g.n_receivers * g.n_senders as i64)?.f_view([v, g.n_receivers, g.n_senders as i64])?)
            };
            let (w, dw) = (narrow(&removed)?, narrow(&extra)?);
            let (used, differ) = (nonzero(&w)?, nonzero(&dw)?);
            if used.is_empty() && differ.is_empty() {
                continue;
            }
            if g.layer < start_layer {
                return Err(Error::Input(format!("edges into `{}` are patched, but the pass starts at block {start_layer}", g.point)));
            }
            // Fewer kept senders than removed ones: start from the ablated sum (weights -kept).
            let kept = w.f_neg()?.f_add_scalar(1.0)?;
            // The running total holds every sender before the group when its hook fires (an MLP
            // beside its attention, in parallel blocks, reads fewer).
            let whole_prefix = match g.point {
                HookPoint::Block(_, BlockSite::MlpIn) => g.n_senders == self.sender_index(Sender::Mlp { layer: g.layer }),
                _ => true,
            };
            let kept_used = if sums.is_none() && whole_prefix { nonzero(&kept)? } else { used.clone() };
            let (w, dw, differ, used, from_ablated) = if kept_used.len() < used.len() {
                let minus = kept.f_neg()?;
                (minus.shallow_clone(), minus, kept_used.clone(), kept_used, true)
            } else {
                (w, dw, differ, used, false)
            };
            let live: Vec<i64> = used.into_iter().filter(|s| *s as usize >= first_live).collect();
            // Without `sums`, live slots hold ablated - current: the stored differences are read
            // only for the senders before the pass.
            let differ = if sums.is_none() { differ.into_iter().filter(|s| (*s as usize) < first_live).collect() } else { differ };
            for s in &live {
                needed[*s as usize] = true;
            }
            active.push(PatchedGroup { group: gi, removed: w, extra: dw, differ, live, from_ablated });
        }
        // The running total `sum_s (ablated_s - current_s)` over the senders computed so far
        // [V, B, P, D], for the groups that start from the ablated sum: the senders before the
        // pass are added now, each later one when its hook fires.
        let total = if active.iter().any(|g| g.from_ablated) {
            let before = acts.ablated.f_narrow(0, 0, first_live as i64)?.f_sub(&acts.clean.f_narrow(0, 0, first_live as i64)?)?.f_sum_dim_intlist(
                [0i64].as_slice(),
                false,
                kind,
            )?;
            Some(before.f_unsqueeze(0)?.f_repeat([v, 1, 1, 1])?)
        } else {
            None
        };
        // Senders computed in this pass whose output some patched edge reads get a slot, in sender
        // order, of `live` [V, slots, B, P, D] holding `reference` - current (the clean outputs
        // with `sums`, else the ablated ones); a group's live senders lie
        // in a prefix of the slots.
        let slot_of: Vec<Option<i64>> = {
            let mut next = 0;
            needed.iter().map(|n| n.then(|| (next, next += 1).0)).collect()
        };
        let slot_senders: Vec<i64> = (0..self.senders.len() as i64).filter(|s| needed[*s as usize]).collect();
        let live = Tensor::f_zeros([v, slot_senders.len() as i64, b, p, d], (kind, device))?;
        let on = |ids: &[i64]| Tensor::f_from_slice(ids).and_then(|t| t.f_to_device(device));
        // With `rows`, the last block's outputs and the inputs read after its attention (its
        // MLP's and the logits') are at one position per row: live slots get that position,
        // the other positions are never read.
        let last = self.n_layers - 1;
        let row_of = |l: usize| rows.filter(|_| l == last).map(|r| r.f_narrow(0, 0, b)).transpose();
        let reference = if sums.is_some() { &acts.clean } else { &acts.ablated };
        let mut hooks = Hooks::new();
        if let Some(total) = &total {
            for l in start_layer..self.n_layers {
                let first = self.sender_index(Sender::Head { layer: l, head: 0 }) as i64;
                let mut add = |point: HookPoint, first: i64, n: i64| -> Result<()> {
                    // [B, P, D] the ablated outputs of these senders, summed
                    let ablated = acts.ablated.f_narrow(0, first, n)?.f_sum_dim_intlist([0i64].as_slice(), false, kind)?;
                    let (mut total, row) = (total.shallow_clone(), row_of(l)?);
                    hooks = std::mem::take(&mut hooks).add(point, move |x, _| {
                        // x [V * B, P, H, D] (heads) or [V * B, P, D]: current outputs, summed
                        let out = if x.dim() == 4 {
                            x.f_view([v, b, x.size()[1], -1, d])?.f_sum_dim_intlist([3i64].as_slice(), false, kind)?
                        } else {
                            x.f_view([v, b, -1, d])?
                        };
                        match &row {
                            None => {
                                let _ = total.f_add_(&ablated.f_unsqueeze(0)?.f_sub(&out)?)?;
                            }
                            Some(row) => {
                                let at = row.f_view([1, b, 1, 1])?.f_expand([v, b, 1, d], false)?;
                                let _ = total.f_scatter_add_(2, &at, &at_rows(&ablated, row)?.f_unsqueeze(0)?.f_sub(&out)?)?;
                            }
                        }
                        Ok(None)
                    });
                    Ok(())
                };
                add(HookPoint::block(l, BlockSite::Result), first, self.n_heads)?;
                if self.has_mlp {
                    add(HookPoint::block(l, BlockSite::MlpOut), first + self.n_heads, 1)?;
                }
            }
        }
        for l in start_layer..self.n_layers {
            let heads: Vec<(i64, i64)> =
                (0..self.n_heads).filter_map(|h| slot_of[self.sender_index(Sender::Head { layer: l, head: h })].map(|s| (h, s))).collect();
            if let Some(&(_, first_slot)) = heads.first() {
                let live = live.shallow_clone();
                let idx = on(&heads.iter().map(|(h, _)| *h).collect::<Vec<_>>())?;
                let from = reference
                    .f_index_select(0, &on(&heads.iter().map(|(h, _)| self.sender_index(Sender::Head { layer: l, head: *h }) as i64).collect::<Vec<_>>())?)?;
                let row = row_of(l)?;
                hooks = hooks.add(HookPoint::block(l, BlockSite::Result), move |x, _| {
                    // x [V * B, P, H, D] -> the needed heads [V, k, B, P, D] (consecutive slots)
                    let out = x.f_view([v, b, x.size()[1], -1, d])?.f_index_select(3, &idx)?.f_permute([0, 3, 1, 2, 4])?;
                    let mut slots = live.f_narrow(1, first_slot, idx.size()[0])?;
                    match &row {
                        None => slots.f_copy_(&from.f_unsqueeze(0)?.f_sub(&out)?)?,
                        Some(row) => {
                            let k = idx.size()[0];
                            let from = senders_at_rows(&from, row)?; // [k, B, 1, D]
                            let at = row.f_view([1, 1, b, 1, 1])?.f_expand([v, k, b, 1, d], false)?;
                            let _ = slots.f_scatter_(3, &at, &from.f_unsqueeze(0)?.f_sub(&out)?)?;
                        }
                    }
                    Ok(None)
                });
            }
            if self.has_mlp {
                let sender = self.sender_index(Sender::Mlp { layer: l });
                if let Some(slot) = slot_of[sender] {
                    let live = live.shallow_clone();
                    let from = reference.f_select(0, sender as i64)?;
                    let row = row_of(l)?;
                    hooks = hooks.add(HookPoint::block(l, BlockSite::MlpOut), move |x, _| {
                        let mut slot = live.f_select(1, slot)?;
                        let out = x.f_view([v, b, -1, d])?;
                        match &row {
                            None => slot.f_copy_(&from.f_unsqueeze(0)?.f_sub(&out)?)?,
                            Some(row) => {
                                let at = row.f_view([1, b, 1, 1])?.f_expand([v, b, 1, d], false)?;
                                let _ = slot.f_scatter_(2, &at, &at_rows(&from, row)?.f_unsqueeze(0)?.f_sub(&out)?)?;
                            }
                        }
                        Ok(None)
                    });
                }
            }
        }
        let bpd = b * p * d;
        for PatchedGroup { group: gi, removed: w, extra: dw, differ, live: live_senders, from_ablated } in active {
            let g = &self.groups[gi];
            let (r, per_head) = (g.n_receivers, g.per_head);
            // delta[v, b, p, r, d]: `sums`' tensor, plus the differing senders' ablated - clean
            // (few are gathered; many take one dense product over the group's senders, the
            // others weighing 0), plus the live senders' slots, filled when their hooks
            // fires (one group's delta alive at a time).
            let n = g.n_senders as i64;
            // Few differing senders are gathered when the hook fires, so that only one group's
            // gathered differences are alive at a time (every group's at once took gigabytes on
            // a 30-layer model); many read the shared difference tensor.
            let differing = if differ.is_empty() {
                None
            } else if differ.len() as i64 * 4 <= n {
                let idx = on(&differ)?;
                Some((dw.f_index_select(2, &idx)?, Differences::Gather(idx, acts.ablated.shallow_clone(), acts.clean.shallow_clone())))
            } else {
                Some((dw.f_contiguous()?, Differences::Dense(acts.diff()?.f_narrow(0, 0, n)?)))
            };
            let current = if live_senders.is_empty() {
                None
            } else {
                // Every slot's sender before this group's end (slots are in sender order, so
                // they are a prefix of `live`, read as a view), weight 0 for those it does not
                // use; or, when it uses few of them, those slots gathered when the hook fires.
                let prefix: Vec<i64> = slot_senders.iter().copied().take_while(|s| *s < n).collect();
                if live_senders.len() * 4 <= prefix.len() {
                    let slots: Vec<i64> = live_senders.iter().filter_map(|s| slot_of[*s as usize]).collect();
                    Some((w.f_index_select(2, &on(&live_senders)?)?, Slots::Gather(on(&slots)?)))
                } else {
                    Some((w.f_index_select(2, &on(&prefix)?)?, Slots::Prefix(prefix.len() as i64)))
                }
            };
            let base = sums.and_then(|s| s.sums[gi].as_ref()).map(|t| t.shallow_clone());
            let start = if from_ablated { total.as_ref().map(|t| t.shallow_clone()) } else { None };
            let live = live.shallow_clone();
            // The MLP's and the logits' inputs of a last block run at `rows`.
            let row = match g.point {
                HookPoint::Block(_, BlockSite::MlpIn | BlockSite::ResidPost) => rows.filter(|_| g.layer == last).map(|r| r.shallow_clone()),
                _ => None,
            };
            hooks = hooks.add(g.point, move |x, _| {
                let mut delta: Option<Tensor> = None;
                if let Some((weights, values)) = &differing {
                    let k = weights.size()[2];
                    let values = match values {
                        Differences::Gather(idx, ablated, clean) => ablated.f_index_select(0, idx)?.f_sub(&clean.f_index_select(0, idx)?)?,
                        Differences::Dense(values) => values.shallow_clone(),
                    };
                    delta = Some(weights.f_reshape([v * r, k])?.f_matmul(&values.f_reshape([k, bpd])?)?.f_view([v, r, bpd])?);
                }
                if let Some((weights, slots)) = &current {
                    let all = live.f_view([v, live.size()[1], bpd])?;
                    let t = match slots {
                        // A view of the first k slots (no copy: bmm takes the batch stride as it is).
                        Slots::Prefix(k) => weights.f_bmm(&all.f_narrow(1, 0, *k)?)?,
                        Slots::Gather(idx) => weights.f_bmm(&all.f_index_select(1, idx)?)?,
                    };
                    delta = Some(match delta {
                        Some(dl) => dl.f_add(&t)?,
                        None => t,
                    });
                }
                // [V * B, P, R, D] or [V * B, P, D], as x
                let shape = if per_head { vec![v * b, p, r, d] } else { vec![v * b, p, d] };
                let mut total = match delta {
                    Some(delta) => Some(delta.f_view([v, r, b, p, d])?.f_permute([0, 2, 3, 1, 4])?.f_reshape(shape.as_slice())?),
                    None => None,
                };
                if let Some(base) = &base {
                    // [B, P, R, D] or [B, P, D], the same for every variant
                    let base = base.f_view([1, b, p, r * d])?.f_expand([v, b, p, r * d], false)?.f_reshape(shape.as_slice())?;
                    total = Some(match total {
                        Some(t) => t.f_add(&base)?,
                        None => base,
                    });
                }
                if let Some(start) = &start {
                    // The running total as it stands now: [V * B, P, (1,) D]
                    let start = start.f_view([v * b, p, d])?;
                    let start = if per_head { start.f_unsqueeze(2)? } else { start };
                    total = Some(match total {
                        Some(t) => t.f_add(&start)?,
                        None => start,
                    });
                }
                let total = total.ok_or("a patched group with nothing to add")?;
                let total = match &row {
                    Some(row) => at_rows(&total, row)?,
                    None => total,
                };
                Ok(Some(x.f_add(&total)?))
            });
        }
        let resid = acts.resid_pre.f_select(0, start_layer as i64)?.f_unsqueeze(0)?.f_expand([v, b, p, d], false)?.f_reshape([v * b, p, d])?;
        let runner = model.runner_from_layer(&resid, start_layer).hooks(hooks).stop_at_layer(self.n_layers);
        Ok(match rows {
            Some(rows) => runner.last_block_at(rows),
            None => runner,
        }
        .run()?
        .output)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A masked forward reading an edge set's summed removals equals the plain one, for variants
    /// that remove more edges or restore some, from block 0 and from the last block, and with the
    /// last block run at one position per row; sums built edge by edge equal sums built at once.
    #[test]
    fn removed_sums_give_the_plain_masked_forward() -> Result<()> {
        for family in ["gpt2", "llama", "gpt_neox"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(family);
            let model = HookedTransformer::from_pretrained_dir(&dir, Device::Cpu, Kind::Float)?;
            let graph = EdgeGraph::new(&model)?;
            tch::manual_seed(0);
            let tokens = || Tensor::f_randint(model.cfg.d_vocab, [3, 5], (Kind::Int64, Device::Cpu));
            let acts = graph.activations(&model, &tokens()?, &tokens()?, Ablation::Resample)?;
            let n = graph.n_edges();
            for start in [0, graph.n_layers - 1] {
                let first = graph.groups.iter().find(|g| g.layer >= start).map_or(n, |g| g.first_edge);
                let removed: Vec<usize> = (first..n).filter(|e| e * 7919 % 3 == 0).collect();
                let mut kept = vec![true; n];
                for &e in &removed[..removed.len() / 2] {
                    kept[e] = false;
                }
                let mut sums = RemovedSums::new(&graph, &acts, &kept)?;
                for &e in &removed[removed.len() / 2..] {
                    kept[e] = false;
                    sums.remove(&graph, &acts, e)?;
                }
                let mut more = kept.clone();
                more[first + 1] = false;
                more[n - 1] = false;
                let mut fewer = kept.clone();
                fewer[removed[0]] = true;
                fewer[removed[removed.len() - 1]] = true;
                let mask = Tensor::f_stack(&[graph.mask_of(&kept)?, graph.mask_of(&more)?, graph.mask_of(&fewer)?, graph.mask_of(&vec![true; n])?], 0)?;
                let plain = graph.masked_residual(&model, &acts, &mask, start, None, None)?;
                let summed = graph.masked_residual(&model, &acts, &mask, start, Some(&sums), None)?;
                let err = plain.f_sub(&summed)?.f_abs()?.f_max()?.f_double_value(&[])?;
                assert!(err < 1e-4, "{family} from block {start}: {err}");
                // The last block at one position per row: those rows of the full pass.
                let rows = Tensor::f_from_slice(&[4i64, 2, 0])?.f_repeat([4])?;
                let at_one = graph.masked_residual(&model, &acts, &mask, start, Some(&sums), Some(&rows))?;
                let err = at_rows(&plain, &rows)?.f_sub(&at_one)?.f_abs()?.f_max()?.f_double_value(&[])?;
                assert!(err < 1e-4, "{family} from block {start}, last block at one position: {err}");
                // A small circuit (a few kept edges per patched group) starts from the ablated
                // sum; the same circuit patched edge by edge from the clean run (`sums` of no
                // removed edges) gives the same residual.
                let small: Vec<bool> = (0..n).map(|e| e < first || e * 7919 % 17 == 0).collect();
                let none_removed = RemovedSums::new(&graph, &acts, &vec![true; n])?;
                let smaller: Vec<bool> = (0..n).map(|e| e < first || e * 7919 % 29 == 0).collect();
                let mask = Tensor::f_stack(&[graph.mask_of(&small)?, graph.mask_of(&smaller)?], 0)?;
                for rows in [None, Some(Tensor::f_from_slice(&[4i64, 2, 0])?.f_repeat([2])?)] {
                    let from_ablated = graph.masked_residual(&model, &acts, &mask, start, None, rows.as_ref())?;
                    let from_clean = graph.masked_residual(&model, &acts, &mask, start, Some(&none_removed), rows.as_ref())?;
                    let err = from_ablated.f_sub(&from_clean)?.f_abs()?.f_max()?.f_double_value(&[])?;
                    assert!(err < 1e-4, "{family} from block {start}, a small circuit (rows {}): {err}", rows.is_some());
                }
                let b = acts.tokens.size()[0];
                let moved = plain.f_narrow(0, 0, b)?.f_sub(&plain.f_narrow(0, 3 * b, b)?)?.f_abs()?.f_max()?.f_double_value(&[])?;
                assert!(moved > 1e-3, "{family}: the removals change nothing ({moved})");
            }
        }
        Ok(())
    }
}
