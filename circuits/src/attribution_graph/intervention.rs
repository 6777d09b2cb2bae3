//! Graphs checked by intervention: a feature's activation scaled in a forward of the model, the
//! change of a logit measured, beside what the graph predicts.
//!
//! The graph is linear: scaling a source's activation by `s` changes a target by `(s - 1)` times
//! the source's **total effect** on it, the sum over every path of the products of its edges, each
//! feature on the way passing its change on one to one (TopK, ReLU and JumpReLU are the identity
//! on an active feature). The measurement adds `(s - 1) a d` (activation `a`, decoder row `d`) to
//! the MLP output the feature writes, as circuit-tracer's `feature_intervention` does: the true
//! MLPs then respond downstream (so every transcoder's error is kept, not frozen), and the graph
//! parts from the model where MLPs, norms or (unfrozen) attention are not linear, or a feature
//! saturates or switches off. With attention patterns, norm scales and every MLP output frozen
//! ([`Freeze::DirectEffects`]), only the direct paths remain and the change is the graph's edge
//! times `(s - 1)` to rounding: a check of the graph itself (circuit-tracer's own test).

use std::cell::RefCell;

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer, Hooks};
use tch::{Device, Kind, Tensor};
use transcoders::TranscoderSet;

use super::{check_transcoders, AttributionGraph, Node};
use crate::error::{Error, Result};

/// What the forward that measures an intervention freezes at the prompt's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freeze {
    /// Attention patterns, norm scales and every MLP output (skip paths excepted): only the
    /// direct paths through the residual stream and attention remain, so the change equals the
    /// graph's edge.
    DirectEffects,
    /// Attention patterns and norm scales, as the graph freezes them: only the MLPs respond
    /// (through their transcoders' features and errors), so the change departs from the graph's
    /// total effect where a feature on the way saturates or switches, or an error responds.
    AttentionAndNorms,
    /// Attention patterns (circuit-tracer's `feature_intervention` default): MLPs and norms respond.
    Attention,
    /// Nothing: the model's own forward.
    Nothing,
}

impl Freeze {
    /// Every mode, in the order [`Intervention::measured`] holds them.
    pub const ALL: [Freeze; 4] = [Freeze::DirectEffects, Freeze::AttentionAndNorms, Freeze::Attention, Freeze::Nothing];

    /// Its place in [`Freeze::ALL`] and in [`Intervention::measured`] (the variants are declared
    /// in that order).
    fn index(self) -> usize {
        self as usize
    }

    /// "direct effects", "frozen attention and norms", "frozen attention", "free".
    pub fn name(self) -> &'static str {
        match self {
            Freeze::DirectEffects => "direct effects",
            Freeze::AttentionAndNorms => "frozen attention and norms",
            Freeze::Attention => "frozen attention",
            Freeze::Nothing => "free",
        }
    }
}

/// One feature's activation scaled: the change of the target predicted by the graph and measured.
#[derive(Clone, Debug)]
pub struct Intervention {
    /// The feature's node (an index into the graph's nodes).
    pub node: usize,
    /// Its activation is multiplied by this (0 ablates it).
    pub strength: f64,
    /// The graph's direct edge to the target times `strength - 1`.
    pub direct: f64,
    /// The graph's total effect on the target (every path through features) times `strength - 1`.
    pub predicted: f64,
    /// The change measured with each of [`Freeze::ALL`] frozen, in that order.
    pub measured: [f64; 4],
}

impl Intervention {
    /// What the graph predicts for the measurement with `freeze`: the direct edge with everything
    /// frozen, else the total effect.
    pub fn graph(&self, freeze: Freeze) -> f64 {
        if freeze == Freeze::DirectEffects {
            self.direct
        } else {
            self.predicted
        }
    }
}

/// Interventions on a graph's features and what they did to one logit target.
#[derive(Clone, Debug)]
pub struct InterventionCheck {
    /// The target's node: a logit (its value minus the mean logit, as in the graph).
    pub target: usize,
    /// One per (feature, strength), features in the order given.
    pub interventions: Vec<Intervention>,
}

impl InterventionCheck {
    /// Pearson's correlation between the graph's prediction (`direct` for
    /// [`Freeze::DirectEffects`], else `predicted`) and the change measured with `freeze`, over
    /// the finite measurements (see [`InterventionCheck::non_finite`]); `NaN` when either does not
    /// vary.
    pub fn correlation(&self, freeze: Freeze) -> f64 {
        let i = freeze.index();
        let pairs: Vec<(f64, f64)> = self.interventions.iter().map(|v| (v.graph(freeze), v.measured[i])).filter(|(_, m)| m.is_finite()).collect();
        pearson(&pairs)
    }

    /// "frozen attention 0.770", with "(1 overflowed, left out)" when measurements overflowed.
    pub fn describe(&self, freeze: Freeze) -> String {
        match self.non_finite(freeze) {
            0 => format!("{} {:.3}", freeze.name(), self.correlation(freeze)),
            n => format!("{} {:.3} ({n} overflowed, left out)", freeze.name(), self.correlation(freeze)),
        }
    }

    /// Measurements with `freeze` that overflowed to infinity or NaN. With norm scales frozen, a
    /// deep stack of gated MLPs can amplify a doubled feature layer after layer until it does.
    pub fn non_finite(&self, freeze: Freeze) -> usize {
        let i = freeze.index();
        self.interventions.iter().filter(|v| !v.measured[i].is_finite()).count()
    }

    /// The largest |measured - predicted| with `freeze`, relative to the largest |measured|, over
    /// the finite measurements.
    pub fn worst_relative_error(&self, freeze: Freeze) -> f64 {
        let i = freeze.index();
        let finite = || self.interventions.iter().filter(|v| v.measured[i].is_finite());
        let worst = finite().map(|v| (v.measured[i] - v.graph(freeze)).abs()).fold(0.0, f64::max);
        let scale = finite().map(|v| v.measured[i].abs()).fold(0.0, f64::max);
        if scale > 0.0 {
            worst / scale
        } else {
            worst
        }
    }
}

fn pearson(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mx, my) = (pairs.iter().map(|p| p.0).sum::<f64>() / n, pairs.iter().map(|p| p.1).sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

impl AttributionGraph {
    /// Every node's total effect on `target` [n_nodes]: the sum over paths of the products of
    /// their edges, a feature on the way passing its change on one to one (edge weights are
    /// activation times gradient, so a path through feature `i` is divided by `i`'s activation).
    /// Scaling a source by `s` changes the target by `(s - 1)` times its entry in the linearised
    /// replacement model.
    pub fn total_effects(&self, target: usize) -> Result<Vec<f64>> {
        let n = self.nodes.len();
        if target >= n {
            return Err(Error::Input(format!("node {target} is not in the graph, which has {n} nodes")));
        }
        let activation: Vec<f64> = self.nodes.iter().map(|node| if let Node::Feature { activation, .. } = node { *activation } else { 0.0 }).collect();
        let per_activation = Tensor::f_from_slice(&activation.iter().map(|&a| if a != 0.0 { 1.0 / a } else { 0.0 }).collect::<Vec<_>>())?;
        let mut row = Tensor::f_zeros([n as i64], (Kind::Double, Device::Cpu))?;
        let _ = row.f_get(target as i64)?.f_fill_(1.0)?;
        let mut total = Tensor::f_zeros([n as i64], (Kind::Double, Device::Cpu))?;
        let stored = Tensor::f_from_slice(self.adjacency.stored_nodes())?;
        // Paths have at most one feature per layer and end at the target: n_layers + 2 steps.
        for _ in 0..self.n_layers + 2 {
            let step = super::prune::left_product(&self.adjacency, &row.f_index_select(0, &stored)?, false)?;
            if step.f_count_nonzero(None::<i64>)?.f_int64_value(&[])? == 0 {
                return Ok(Vec::<f64>::try_from(&total)?);
            }
            total = total.f_add(&step)?;
            row = step.f_mul(&per_activation)?;
        }
        Err(Error::Input("total effects did not converge: the adjacency matrix has a cycle".into()))
    }
}

/// Scales each feature node of `features` (indices into `graph`'s nodes) by each of `strengths`
/// in forwards of `model` with `transcoders` (those the graph was built with) and measures the
/// change of the logit node `target` (default: the graph's most likely next token) with each
/// [`Freeze`], beside the graph's direct edge and total effect. An index that is not a feature
/// node is refused by name.
pub fn check_by_intervention(
    model: &HookedTransformer,
    transcoders: &TranscoderSet,
    graph: &AttributionGraph,
    features: &[usize],
    strengths: &[f64],
    target: Option<usize>,
) -> Result<InterventionCheck> {
    check_transcoders(model, transcoders)?;
    let target = match target {
        Some(t) => t,
        None => graph.nodes.iter().position(|n| matches!(n, Node::Logit { .. })).ok_or_else(|| Error::Input("the graph has no logit node".into()))?,
    };
    let Some(Node::Logit { token, .. }) = graph.nodes.get(target) else {
        return Err(Error::Input(format!("node {target} is not a logit node of the graph: interventions are measured on a logit")));
    };
    if strengths.is_empty() || strengths.iter().any(|s| !s.is_finite()) {
        return Err(Error::setting("strengths", format!("{strengths:?}"), "at least one finite factor"));
    }
    let direct = graph.adjacency.row(target)?.f_to_kind(Kind::Double)?;
    let total = graph.total_effects(target)?;
    let n_pos = graph.tokens.len() as i64;
    let tokens = Tensor::f_from_slice(&graph.tokens)?.f_view([1, n_pos])?.f_to_device(model.device())?;
    let n = model.cfg.n_layers;
    let mut names = vec![HookPoint::LnFinalScale];
    let hooks_io: Vec<(String, String)> = (0..n).map(|l| transcoders.hooks(l)).collect();
    for (l, (hook_in, _)) in hooks_io.iter().enumerate() {
        names.extend([BlockSite::Ln1Scale, BlockSite::Pattern, BlockSite::Ln2Scale, BlockSite::MlpOut].map(|s| HookPoint::block(l, s)));
        names.push(hook_in.parse::<HookPoint>()?);
    }
    let (_, clean) = tch::no_grad(|| model.run_with_cache(&tokens, CacheSpec::names(&names)))?;
    // The demeaned target logit of a forward with `deltas` added to MLP outputs, per Freeze.
    let measure = |freeze: Freeze, deltas: &[(usize, Tensor)]| -> Result<f64> {
        let inputs: RefCell<Vec<Option<Tensor>>> = RefCell::new((0..n).map(|_| None).collect());
        let mut hooks = Hooks::new();
        if freeze != Freeze::Nothing {
            hooks = hooks.add(BlockSite::Pattern, |_, ctx| Ok(Some(clean.get_point(ctx.point)?.shallow_clone())));
        }
        if matches!(freeze, Freeze::DirectEffects | Freeze::AttentionAndNorms) {
            for site in [BlockSite::Ln1Scale, BlockSite::Ln2Scale] {
                hooks = hooks.add(site, |_, ctx| Ok(Some(clean.get_point(ctx.point)?.shallow_clone())));
            }
            hooks = hooks.add(HookPoint::LnFinalScale, |_, ctx| Ok(Some(clean.get_point(ctx.point)?.shallow_clone())));
        }
        if freeze == Freeze::DirectEffects {
            for (l, (hook_in, _)) in hooks_io.iter().enumerate() {
                let inputs = &inputs;
                hooks = hooks.add(hook_in.as_str(), move |x, _| {
                    inputs.borrow_mut()[l] = Some(x.shallow_clone());
                    Ok(None)
                });
            }
        }
        for (l, (hook_in, _)) in hooks_io.iter().enumerate() {
            let mine: Vec<&Tensor> = deltas.iter().filter(|(at, _)| *at == l).map(|(_, d)| d).collect();
            if freeze != Freeze::DirectEffects && mine.is_empty() {
                continue;
            }
            let (inputs, clean, hook_in) = (&inputs, &clean, hook_in.as_str());
            hooks = hooks.add(HookPoint::block(l, BlockSite::MlpOut), move |x, ctx| {
                let mut out = if freeze == Freeze::DirectEffects { clean.get_point(ctx.point)?.shallow_clone() } else { x.shallow_clone() };
                if let (true, Some(now)) = (freeze == Freeze::DirectEffects, inputs.borrow()[l].as_ref()) {
                    // A skip path is linear in the replacement model: it responds (b_dec cancels).
                    let was = clean.get(hook_in)?;
                    let bias = |x: &Tensor| transcoders.decoder_bias(l, &x.f_to_kind(Kind::Float)?);
                    let diff = bias(now).and_then(|a| Ok(a.f_sub(&bias(was)?)?)).map_err(|e| interp_core::Error::Input(e.to_string()))?;
                    out = out.f_add(&diff.f_to_kind(out.kind())?)?;
                }
                for d in &mine {
                    out = out.f_add(&d.f_to_kind(out.kind())?)?;
                }
                Ok(Some(out))
            });
        }
        let logits = tch::no_grad(|| model.run_with_hooks(&tokens, hooks))?.f_select(0, 0)?.f_select(0, n_pos - 1)?.f_to_kind(Kind::Double)?;
        Ok(logits.f_double_value(&[*token])? - logits.f_mean(Kind::Double)?.f_double_value(&[])?)
    };
    let base: Vec<f64> = Freeze::ALL.iter().map(|&f| measure(f, &[])).collect::<Result<_>>()?;
    let mut interventions = Vec::new();
    for &node in features {
        let Some(&Node::Feature { layer, pos, feature, activation }) = graph.nodes.get(node) else {
            return Err(Error::Input(format!("node {node} is not a feature node of the graph: only features are intervened on")));
        };
        let rows = transcoders.decoders(layer, &Tensor::f_from_slice(&[feature])?.f_to_device(model.device())?)?.f_select(0, 0)?; // [written, d]
        for &strength in strengths {
            let mut deltas = Vec::new();
            for j in 0..rows.size()[0] {
                let delta = Tensor::f_zeros([1, n_pos, model.cfg.d_model], (Kind::Float, model.device()))?;
                delta.f_get(0)?.f_get(pos)?.f_copy_(&rows.f_get(j)?.f_mul_scalar((strength - 1.0) * activation)?)?;
                deltas.push((layer + j as usize, delta));
            }
            let mut measured = [0.0; 4];
            for (i, &f) in Freeze::ALL.iter().enumerate() {
                measured[i] = measure(f, &deltas)? - base[i];
            }
            let (edge, path_sum) = (direct.f_double_value(&[node as i64])?, total[node]);
            interventions.push(Intervention { node, strength, direct: (strength - 1.0) * edge, predicted: (strength - 1.0) * path_sum, measured });
        }
    }
    Ok(InterventionCheck { target, interventions })
}
