//! QK attribution: why a head attends where it does. An attribution graph freezes attention
//! patterns, so it says what a head moved but not why it looked there. Here the pre-softmax score
//! of one (head, query position, key position) is split into pairs of sources: the residual
//! stream at the query and at the key is a sum of source vectors (the embedding, every earlier
//! head's output, every earlier MLP's output or, with transcoders, its active features and its
//! error, and the vectors fixed at this prompt: biases and skip paths), and with the norm scales
//! frozen at their values on the prompt (as graphs freeze them) the query and the key are linear
//! in those vectors plus a bias of their own. The score, `scale * <q, k>` after rotary, is then
//! exactly the sum over pairs `scale * <q(a_i), k(b_j)>`, with a row for the query's bias and a
//! column for the key's. Soft-capped scores are not bilinear and are refused.

use interp_core::config::Positional;
use interp_core::{BlockSite, CacheSpec, HookName, HookPoint, HookedTransformer, Hooks};
use tch::{Device, Kind, Tensor};
use transcoders::TranscoderSet;

use crate::error::{Error, Result};

/// A source of the residual stream at one position.
#[derive(Clone, Debug, PartialEq)]
pub enum QkSource {
    /// The token embedding (with the position embedding, when the model learns one).
    Embedding,
    /// A head's output.
    Head {
        /// Its layer.
        layer: usize,
        /// The head.
        head: i64,
    },
    /// An MLP's output (when no transcoders split it).
    Mlp {
        /// Its layer.
        layer: usize,
    },
    /// A transcoder feature: its activation times its decoder, summed over the layers below the
    /// head's that it writes to.
    Feature {
        /// The layer it reads.
        layer: usize,
        /// Its index.
        feature: i64,
        /// Its activation at this position.
        activation: f64,
    },
    /// A transcoder's error at a layer: the MLP's output minus the reconstruction.
    Error {
        /// The layer.
        layer: usize,
    },
    /// Vectors fixed at this prompt that belong to no node: attention output biases, decoder
    /// biases and skip paths.
    Fixed,
}

impl std::fmt::Display for QkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QkSource::Embedding => write!(f, "embedding"),
            QkSource::Head { layer, head } => write!(f, "L{layer}H{head}"),
            QkSource::Mlp { layer } => write!(f, "MLP {layer}"),
            QkSource::Feature { layer, feature, .. } => write!(f, "L{layer}/{feature}"),
            QkSource::Error { layer } => write!(f, "error L{layer}"),
            QkSource::Fixed => write!(f, "fixed (biases, skip paths)"),
        }
    }
}

impl QkSource {
    /// The graph node this source is at position `pos` of the prompt `tokens`, for a model of
    /// `n_layers` layers: a feature, an error or a token embedding; `None` for heads, MLPs and
    /// fixed vectors, which are no nodes of an attribution graph.
    pub fn node(&self, pos: i64, tokens: &[i64]) -> Option<super::Node> {
        match *self {
            QkSource::Feature { layer, feature, activation } => Some(super::Node::Feature { layer, pos, feature, activation }),
            QkSource::Error { layer } => Some(super::Node::Error { layer, pos }),
            QkSource::Embedding => tokens.get(pos as usize).map(|&token| super::Node::Token { pos, token }),
            QkSource::Head { .. } | QkSource::Mlp { .. } | QkSource::Fixed => None,
        }
    }
}

/// A pair's query source, key source (`None`: that side's own bias) and contribution.
pub type QkPair<'a> = (Option<&'a QkSource>, Option<&'a QkSource>, f64);

/// One attention score split into pairs of (query-side source, key-side source).
#[derive(Debug)]
pub struct QkAttribution {
    /// The head's layer.
    pub layer: usize,
    /// The head.
    pub head: i64,
    /// The query position.
    pub query_pos: i64,
    /// The key position.
    pub key_pos: i64,
    /// The score (before the mask and the softmax) in the model's own forward.
    pub score: f64,
    /// The sources at the query position.
    pub query: Vec<QkSource>,
    /// The sources at the key position.
    pub key: Vec<QkSource>,
    /// [query.len() + 1, key.len() + 1] (f64): `pairs[i, j]` is the part of the score from query
    /// source `i` and key source `j`; the last row is the query's own bias (the norm's shift and
    /// the Q bias) against each key source, the last column the key's bias likewise. They sum to
    /// `score`.
    pub pairs: Tensor,
}

/// A pair's side as a reader names it: the source (`L3H1`, `L2/804`, `MLP 5`, ...), or for `None`
/// that side's own bias (`side` is `"query"` or `"key"`).
pub fn source_name(source: Option<&QkSource>, side: &str) -> String {
    source.map_or(format!("{side}'s own bias"), QkSource::to_string)
}

impl QkAttribution {
    /// The `n` pairs of largest |contribution|: (query source, key source, contribution), `None`
    /// standing for the side's own bias.
    pub fn top_pairs(&self, n: usize) -> Result<Vec<QkPair<'_>>> {
        let flat = Vec::<f64>::try_from(&self.pairs.f_flatten(0, -1)?)?;
        let cols = self.key.len() + 1;
        let mut order: Vec<usize> = (0..flat.len()).collect();
        order.sort_by(|&a, &b| flat[b].abs().total_cmp(&flat[a].abs()));
        Ok(order.into_iter().take(n).map(|i| (self.query.get(i / cols), self.key.get(i % cols), flat[i])).collect())
    }

    /// Each query source's part of the score (its row of pairs summed), the query's own bias last;
    /// with `by_key`, each key source's (its column).
    pub fn marginals(&self, by_key: bool) -> Result<Vec<f64>> {
        Ok(Vec::<f64>::try_from(&self.pairs.f_sum_dim_intlist(if by_key { 0 } else { 1 }, false, Kind::Double)?)?)
    }

    /// |sum of the pairs - score|.
    pub fn completeness_error(&self) -> Result<f64> {
        Ok((self.pairs.f_sum(Kind::Double)?.f_double_value(&[])? - self.score).abs())
    }
}

/// Splits the score of head `head` of layer `layer` from query position `query_pos` to key
/// position `key_pos` (negative: from the end) on `tokens` into pairs of sources (see the module
/// docs). With `transcoders`, each MLP below `layer` is split into its active features and its
/// error. Memory: the prompt's cache of every layer's head outputs, and the sources run through
/// the layer in chunks of about 1 GB.
pub fn qk_attribution(
    model: &HookedTransformer,
    transcoders: Option<&TranscoderSet>,
    tokens: &[i64],
    layer: usize,
    head: i64,
    query_pos: i64,
    key_pos: i64,
) -> Result<QkAttribution> {
    let c = &model.cfg;
    let n_pos = tokens.len() as i64;
    // Negative positions count from the end, as Python's indices do.
    let from_end = |p: i64| if p < 0 { p + n_pos } else { p };
    let (query_pos, key_pos) = (from_end(query_pos), from_end(key_pos));
    if layer >= c.n_layers || !(0..c.n_heads).contains(&head) {
        return Err(Error::NoHead { layer, head, n_layers: c.n_layers, n_heads: c.n_heads });
    }
    if !(0..n_pos).contains(&query_pos) || !(0..=query_pos).contains(&key_pos) {
        return Err(Error::Input(format!(
            "query position {query_pos} and key position {key_pos}: a prompt of {n_pos} tokens attends from a position to itself or an earlier one"
        )));
    }
    if c.attn_softcap.is_some() || c.positional == Positional::Shortformer {
        return Err(Error::UnsupportedLayout(
            "QK attribution needs scores bilinear in the residual stream (no attention soft-capping, no position embeddings added to q and k)".into(),
        ));
    }
    if let Some(t) = transcoders {
        if t.n_layers() != c.n_layers {
            return Err(Error::Transcoders(format!("{} transcoders for a model of {} layers", t.n_layers(), c.n_layers)));
        }
    }
    let at = |s| HookPoint::Block(layer, s);
    let tokens_t = Tensor::f_from_slice(tokens)?.f_view([1, n_pos])?.f_to_device(model.device())?;
    let mut names = vec![HookPoint::Embed.hook_name(), BlockSite::Result.hook_name(), BlockSite::AttnOut.hook_name(), at(BlockSite::ResidPre).hook_name()];
    if c.positional == Positional::Learned {
        names.push(HookPoint::PosEmbed.hook_name());
    }
    let scales = [BlockSite::Ln1Scale, BlockSite::QNormScale, BlockSite::KNormScale];
    let frozen: Vec<HookPoint> = scales.into_iter().map(at).filter(|p| model.hook_point(&p.hook_name()).is_ok()).collect();
    names.extend(frozen.iter().map(|p| p.hook_name()));
    let has_mlp = !c.attn_only;
    if has_mlp {
        names.push(BlockSite::MlpOut.hook_name());
    }
    if let Some(t) = transcoders {
        names.extend((0..layer).map(|l| t.hooks(l).0));
    }
    let score_point = at(BlockSite::AttnScores);
    names.push(score_point.hook_name());
    let (_, cache) = tch::no_grad(|| model.run_with_cache(&tokens_t, CacheSpec::names(names)))?;
    let score = cache.get(score_point)?.f_double_value(&[0, head, query_pos, key_pos])?;

    // The sources at each position; they must add up to the residual stream entering `layer`.
    let sources = |pos: i64| -> Result<(Vec<QkSource>, Tensor)> {
        let row = |point: HookPoint| -> Result<Tensor> { Ok(cache.get(point)?.f_select(0, 0)?.f_select(0, pos)?.f_to_kind(Kind::Double)?) };
        let (mut labels, mut vectors) = (vec![QkSource::Embedding], vec![row(HookPoint::Embed)?]);
        if c.positional == Positional::Learned {
            vectors[0] = vectors[0].f_add(&row(HookPoint::PosEmbed)?)?;
        }
        let mut fixed = Tensor::f_zeros([c.d_model], (Kind::Double, model.device()))?;
        for l in 0..layer {
            let heads = row(HookPoint::Block(l, BlockSite::Result))?; // [heads, d_model]
            for h in 0..c.n_heads {
                labels.push(QkSource::Head { layer: l, head: h });
                vectors.push(heads.f_get(h)?);
            }
            fixed = fixed.f_add(&row(HookPoint::Block(l, BlockSite::AttnOut))?.f_sub(&heads.f_sum_dim_intlist(0, false, Kind::Double)?)?)?;
        }
        if has_mlp {
            match transcoders {
                None => {
                    for l in 0..layer {
                        labels.push(QkSource::Mlp { layer: l });
                        vectors.push(row(HookPoint::Block(l, BlockSite::MlpOut))?);
                    }
                }
                Some(t) => {
                    // Each MLP below `layer`: its output minus what the features decode to is its error.
                    let mut reconstructed: Vec<Tensor> =
                        (0..layer).map(|_| Tensor::f_zeros([c.d_model], (Kind::Double, model.device()))).collect::<std::result::Result<_, _>>()?;
                    for l in 0..layer {
                        let x = cache.get(&t.hooks(l).0)?.f_select(0, 0)?.f_select(0, pos)?;
                        let bias = t.decoder_bias(l, &x)?.f_to_kind(Kind::Double)?;
                        reconstructed[l] = reconstructed[l].f_add(&bias)?;
                        fixed = fixed.f_add(&bias)?;
                        let acts = t.encode(l, &x.f_unsqueeze(0)?)?.f_squeeze_dim(0)?;
                        let active = acts.f_nonzero()?.f_squeeze_dim(1)?;
                        if active.numel() == 0 {
                            continue;
                        }
                        let values = acts.f_index_select(0, &active)?.f_to_kind(Kind::Double)?;
                        let decoders = t.decoders(l, &active)?.f_to_kind(Kind::Double)?; // [n, written, d]
                        let written = (decoders.size()[1] as usize).min(layer - l) as i64;
                        let parts = decoders.f_narrow(1, 0, written)?.f_mul(&values.f_view([-1, 1, 1])?)?; // [n, written, d]
                        for j in 0..written {
                            reconstructed[l + j as usize] =
                                reconstructed[l + j as usize].f_add(&parts.f_select(1, j)?.f_sum_dim_intlist(0, false, Kind::Double)?)?;
                        }
                        let features = Vec::<i64>::try_from(&active.f_to_device(Device::Cpu)?)?;
                        let activations = Vec::<f64>::try_from(&values.f_to_device(Device::Cpu)?)?;
                        let per_feature = parts.f_sum_dim_intlist(1, false, Kind::Double)?;
                        for (i, (feature, activation)) in features.into_iter().zip(activations).enumerate() {
                            labels.push(QkSource::Feature { layer: l, feature, activation });
                            vectors.push(per_feature.f_get(i as i64)?);
                        }
                    }
                    for (l, r) in reconstructed.iter().enumerate() {
                        labels.push(QkSource::Error { layer: l });
                        vectors.push(row(HookPoint::Block(l, BlockSite::MlpOut))?.f_sub(r)?);
                    }
                }
            }
        }
        labels.push(QkSource::Fixed);
        vectors.push(fixed);
        let stacked = Tensor::f_stack(&vectors, 0)?; // [n, d_model]
        let resid = row(at(BlockSite::ResidPre))?;
        let gap = stacked.f_sum_dim_intlist(0, false, Kind::Double)?.f_sub(&resid)?.f_abs()?.f_max()?.f_double_value(&[])?;
        let size = resid.f_abs()?.f_max()?.f_double_value(&[])?;
        // NaN fails the check too.
        if gap.is_nan() || gap > 1e-3 * size.max(1.0) {
            return Err(Error::UnsupportedLayout(format!(
                "the residual stream entering layer {layer} is not the sum of its sources at position {pos} (off by {gap:.2e}); this block layout is not supported"
            )));
        }
        Ok((labels, stacked))
    };
    let (query, q_vectors) = sources(query_pos)?;
    let (key, k_vectors) = sources(key_pos)?;

    // Each source through the layer's attention, alone at its position, norm scales frozen, on
    // the prompt up to the query (nothing after it matters); rows in chunks of about 1 GB. A zero
    // source gives the bias.
    let (q_point, k_point) = match c.positional {
        Positional::Rotary(_) => (at(BlockSite::RotQ), at(BlockSite::RotK)),
        _ => (at(BlockSite::Q), at(BlockSite::K)),
    };
    let kv_head = head / (c.n_heads / c.n_kv_heads);
    let len = query_pos + 1;
    let per_row = (len * (c.d_model + 4 * c.n_heads * c.d_head) * 8) as usize;
    let chunk = ((1usize << 30) / per_row.max(1)).max(1);
    // Query and key [n, d_head] of `vectors` [n, d_model] placed at `pos`.
    let through = |vectors: &Tensor, pos: i64| -> Result<(Tensor, Tensor)> {
        let (mut q, mut k) = (Vec::new(), Vec::new());
        for start in (0..vectors.size()[0]).step_by(chunk) {
            let part = vectors.f_narrow(0, start, (chunk as i64).min(vectors.size()[0] - start))?;
            let resid = Tensor::f_zeros([part.size()[0], len, c.d_model], (Kind::Double, model.device()))?;
            resid.f_select(1, pos)?.f_copy_(&part)?;
            let resid = resid.f_to_kind(model.kind())?;
            let mut hooks = Hooks::new();
            for p in &frozen {
                let clean = cache.get(*p)?.f_narrow(1, 0, len)?;
                hooks = hooks.add(*p, move |x: &Tensor, _| Ok(Some(clean.f_expand(x.size(), false)?.f_contiguous()?)));
            }
            let out = tch::no_grad(|| {
                model.runner_from_layer(&resid, layer).hooks(hooks).cache(CacheSpec::names([q_point, k_point])).stop_at_layer(layer + 1).run()
            })?;
            let out = out.cache.ok_or_else(|| Error::Input("the run kept no cache".into()))?;
            q.push(out.get(q_point)?.f_select(1, pos)?.f_select(1, head)?.f_to_kind(Kind::Double)?);
            k.push(out.get(k_point)?.f_select(1, pos)?.f_select(1, kv_head)?.f_to_kind(Kind::Double)?);
        }
        Ok((Tensor::f_cat(&q, 0)?, Tensor::f_cat(&k, 0)?))
    };
    let zero = Tensor::f_zeros([1, c.d_model], (Kind::Double, model.device()))?;
    let (q0, k0) = (through(&zero, query_pos)?.0, through(&zero, key_pos)?.1); // [1, d_head]
    let q_parts = Tensor::f_cat(&[through(&q_vectors, query_pos)?.0.f_sub(&q0)?, q0], 0)?; // [n_q + 1, d_head]
    let k_parts = Tensor::f_cat(&[through(&k_vectors, key_pos)?.1.f_sub(&k0)?, k0], 0)?;
    let mut scale = c.attn_scale;
    if c.scale_attn_by_inverse_layer_idx {
        scale /= (layer + 1) as f64;
    }
    let pairs = q_parts.f_matmul(&k_parts.f_transpose(0, 1)?)?.f_mul_scalar(scale)?.f_to_device(Device::Cpu)?;
    Ok(QkAttribution { layer, head, query_pos, key_pos, score, query, key, pairs })
}
