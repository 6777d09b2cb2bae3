//! Attribution patching of edges: EAP (one gradient at the clean run) and EAP-IG (gradients
//! averaged along the straight line from the ablated to the clean input).
//!
//! Scores follow MIB's convention (and the EAP-IG paper's, and what auto-circuit's users read):
//! positive means the edge supports the metric, i.e. removing it lowers the metric.

use interp_core::{HookedTransformer, NamesFilter};
use tch::{Kind, Tensor};

use crate::edge_graph::{senders_at_rows, EdgeActivations, EdgeGraph};
use crate::error::{Error, Result};
use crate::metric::Metric;

/// How edge scores are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributionMethod {
    /// Edge attribution patching: 1 forward and 1 backward on the clean prompts.
    Eap,
    /// EAP with integrated gradients over `steps` points between the ablated and the clean
    /// embeddings, as MIB's `get_scores_eap_ig` takes them: alpha = k / steps for
    /// k = 0..steps (the ablated input included, the clean one not). One forward and backward
    /// per step.
    EapIg {
        /// Interpolation points.
        steps: usize,
    },
}

impl AttributionMethod {
    /// `EAP` or `EAP-IG(steps)`.
    pub fn name(self) -> String {
        match self {
            AttributionMethod::Eap => "EAP".into(),
            AttributionMethod::EapIg { steps } => format!("EAP-IG({steps})"),
        }
    }
}

/// Score of every edge [E]: the first-order estimate of metric(clean) - metric(edge ablated),
/// `(clean_s - ablated_s) . dMetric/d(input of r)` with the gradient of the metric's mean over
/// prompts, summed over prompts, positions and dimensions (averaged over the EAP-IG steps): the
/// per-prompt mean, positive where the edge supports the metric. MIB's `attribute` gives the same
/// (sign included) at batch size 1; with larger batches its raw scores shrink by the batch size
/// (it divides a batch-mean gradient by the number of prompts again), which changes no ranking.
pub fn edge_attribution(model: &HookedTransformer, graph: &EdgeGraph, acts: &EdgeActivations, metric: &Metric, method: AttributionMethod) -> Result<Tensor> {
    let steps = match method {
        AttributionMethod::Eap => 1,
        AttributionMethod::EapIg { steps } => steps,
    };
    if steps == 0 {
        return Err(Error::setting("steps", steps, "at least 1 (EAP-IG interpolation steps)"));
    }
    let b = acts.tokens.size()[0];
    if metric.n_prompts() != b {
        return Err(Error::Count { what: "prompts the metric is for".into(), found: metric.n_prompts() as usize, expected: b as usize });
    }
    // One forward and backward per step (memory of one EAP run), from the residual entering
    // block 0 at ablated + alpha (clean - ablated): alpha = 1 for EAP, k / steps for EAP-IG.
    let clean0 = acts.clean.f_select(0, 0)?;
    let abl0 = acts.ablated.f_select(0, 0)?;
    let diff = acts.diff()?; // [S, B, P, D]
                             // The last block runs its queries, MLP and unembedding only at each prompt's answer
                             // position: the last MLP's and the logits' gradients are [B, 1, D], and so are their
                             // senders' differences at those rows.
    let size = diff.size();
    let rows = metric.answer_rows(b, size[2], diff.device())?;
    let diff_at_rows = senders_at_rows(diff, &rows)?.f_contiguous()?;
    let at_last = metric.at_last();
    let mut scores: Vec<Tensor> = Vec::with_capacity(graph.groups.len());
    let alphas: Vec<f64> = match method {
        AttributionMethod::Eap => vec![1.0],
        AttributionMethod::EapIg { steps } => (0..steps).map(|k| k as f64 / steps as f64).collect(),
    };
    for alpha in alphas {
        let resid = abl0.f_add(&clean0.f_sub(&abl0)?.f_mul_scalar(alpha)?)?;
        let out = model
            .runner_from_layer(&resid, 0)
            .last_block_at(&rows)
            .gradients(NamesFilter::names(graph.groups.iter().map(|g| g.point)), |logits| Ok(at_last.per_variant(logits)?.f_sum(Kind::Float)?))
            .run()?;
        let grads = out.grads.ok_or_else(|| Error::Input("the run returned no gradients".into()))?;
        for (gi, g) in graph.groups.iter().enumerate() {
            let grad = grads.get(g.point)?; // [B, P or 1, (R,) D]
            let grad = if g.per_head { grad.shallow_clone() } else { grad.f_unsqueeze(2)? };
            let diff = if grad.size()[1] == size[2] { diff } else { &diff_at_rows };
            // scores[r, s] = sum over (b, p, d) of grad[b, p, r, d] diff[s, b, p, d], as one matmul
            // of [R, BPD] by [BPD, S_g] (diff's sender prefix is already contiguous).
            let gsize = grad.size();
            let grad = grad.f_permute([2, 0, 1, 3])?.f_reshape([gsize[2], -1])?;
            let s = grad
                .f_matmul(&diff.f_narrow(0, 0, g.n_senders as i64)?.f_reshape([g.n_senders as i64, -1])?.f_transpose(0, 1)?)?
                .f_reshape([-1])?
                .f_to_kind(Kind::Float)?;
            match scores.get_mut(gi) {
                Some(acc) => *acc = acc.f_add(&s)?,
                None => scores.push(s),
            }
        }
    }
    // acts.diff() is ablated - clean: the sign turns it into clean - ablated.
    Ok(Tensor::f_cat(&scores, 0)?.f_div_scalar(-(steps as f64))?)
}

/// Edge masks [counts.len(), E] keeping the `k` edges of largest score (of largest |score| when
/// `absolute`) for each `k` in `counts`.
pub fn top_k_masks(scores: &Tensor, counts: &[usize], absolute: bool) -> Result<Tensor> {
    let e = scores.size()[0];
    let order = if absolute { scores.f_abs()? } else { scores.shallow_clone() }.f_argsort(0, true)?;
    let rank = Tensor::f_empty_like(&order)?.f_scatter(0, &order, &Tensor::f_arange(e, (Kind::Int64, order.device()))?)?;
    let rows: Vec<Tensor> = counts.iter().map(|&k| Ok(rank.f_lt(k as i64)?.f_to_kind(Kind::Float)?)).collect::<Result<_>>()?;
    Ok(Tensor::f_stack(&rows, 0)?)
}
