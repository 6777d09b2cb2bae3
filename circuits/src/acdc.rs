//! ACDC: greedy edge pruning in reverse topological order.
//!
//! For each receiver, from the logits backwards, each incoming edge is removed in turn and stays
//! removed if the loss (KL, or the negated task metric) grows by less than `tau`. The decisions
//! are sequential, but candidate removals are evaluated speculatively in batches: variant `j`
//! removes the next `j + 1` candidates together, so one forward decides every candidate up to the
//! first one that is kept, with exactly the decisions of the one-edge-per-forward loop. Each
//! forward restarts at the receiver's block from the cached clean residual, reads the removed
//! edges from a running sum per receiver, and runs its last block at the answer positions only.

use std::path::PathBuf;

use interp_core::{at_rows, HookedTransformer};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::edge_graph::{senders_at_rows, EdgeActivations, EdgeGraph, Receiver, RemovedSums};
use crate::error::{Error, Result};
use crate::metric::Metric;

/// ACDC settings.
#[derive(Clone, Debug)]
pub struct AcdcConfig {
    /// Keep an edge when removing it raises the loss by `tau` or more.
    pub tau: f64,
    /// Most candidate removals stacked in one forward (1 = one edge per forward).
    pub max_variants: usize,
    /// Restart each forward at the receiver's block (false: every forward runs the whole model).
    pub restart: bool,
    /// Show a progress bar (edges decided / total, an ETA by the tests' cost).
    pub progress: bool,
    /// Save the decisions here after each receiver; an existing checkpoint of the same graph,
    /// prompts, metric and tau is resumed.
    pub checkpoint: Option<PathBuf>,
    /// Stop after the receiver during which this much time has passed, with the decisions so
    /// far (resume later from the checkpoint); `None`: run to the end.
    pub time_limit: Option<std::time::Duration>,
    /// Opt-in approximation (not ACDC's decisions): remove untested the edges whose attribution
    /// says they matter little; `None`: exact ACDC.
    pub prune: Option<AttributionPrune>,
}

/// Edges whose estimated effect on the metric, |score| (an attribution such as EAP-IG's, in the
/// metric's units), is below `fraction x tau` are removed without a test; before the next test one
/// forward re-measures the circuit's loss, and the other edges are tested as usual.
/// On the task models' IOI and greater-than circuits, a cut of 0.1 tau with EAP-IG(5) scores
/// agreed with exact ACDC's edges at Jaccard 0.71-0.89, not always with fewer forwards (README).
#[derive(Clone, Debug)]
pub struct AttributionPrune {
    /// [E] each edge's attribution score.
    pub scores: Vec<f64>,
    /// The cut, as a fraction of tau.
    pub fraction: f64,
}

impl Default for AcdcConfig {
    fn default() -> Self {
        AcdcConfig { tau: 0.01, max_variants: 1, restart: true, progress: false, checkpoint: None, time_limit: None, prune: None }
    }
}

impl AcdcConfig {
    /// Candidate removals per forward on `device`, and why. On a CPU a forward is compute-bound:
    /// stacking k candidates costs k forwards, and candidates past the first kept edge are
    /// wasted, so one edge per forward is fastest. On a GPU a forward of a few prompts leaves the
    /// device idle, so 16 speculative removals ride along almost free.
    pub fn for_device(device: Device) -> (usize, &'static str) {
        match device {
            Device::Cpu => (1, "one edge per forward, as on a CPU"),
            _ => (16, "up to 16 speculative removals per forward, as on a GPU"),
        }
    }
}

/// What ACDC found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcdcResult {
    /// [E] whether each edge is in the circuit.
    pub kept: Vec<bool>,
    /// [E] the loss increase measured when the edge was tested (0 for edges of receivers that
    /// no longer reach the output, which are removed untested). A score for ROC curves.
    pub effect: Vec<f64>,
    /// Loss of the full model and of the circuit (KL: 0 for the full model).
    pub full_loss: f64,
    /// Loss of the circuit: every removed edge ablated.
    pub circuit_loss: f64,
    /// Forward passes run and edge sets evaluated.
    pub n_forwards: usize,
    /// Edge sets evaluated (each candidate removal is one).
    pub n_variants: usize,
    /// Edges tested (the others were cut off from the output and removed untested).
    pub n_tested: usize,
    /// The cost of every forward run, in full forwards of the prompts (by FLOPs: a pass from
    /// block l costs the blocks it runs; edges into the logits cost one unembedding per prompt).
    pub forward_equivalents: f64,
    /// Receivers decided (all of them when the run finished), for resuming.
    pub receivers_done: usize,
    /// Edges into receiver `receivers_done` already tested when a time limit stopped the run
    /// there, for resuming mid-receiver.
    #[serde(default)]
    pub tested_in_receiver: usize,
    /// Edges removed untested because their attribution was below the cut (0 unless
    /// [`AcdcConfig::prune`] asked for it); their `effect` is |score|.
    #[serde(default)]
    pub n_pruned: usize,
}

impl AcdcResult {
    /// ACDC's edge ranking [E]: kept edges above removed ones; within each, by the measured loss
    /// increase (what MIB's scores and ROC AUC of an ACDC run rank by).
    pub fn ranking(&self) -> Vec<f32> {
        let top = self.effect.iter().fold(0f64, |m, e| m.max(e.abs())) + 1.0;
        self.kept.iter().zip(&self.effect).map(|(k, e)| (if *k { e.abs() + top } else { e.abs() }) as f32).collect()
    }

    /// Edges kept in the circuit.
    pub fn n_kept(&self) -> usize {
        self.kept.iter().filter(|k| **k).count()
    }

    /// Whether every receiver of `graph` was decided (false after a time limit).
    pub fn finished(&self, graph: &EdgeGraph) -> bool {
        self.receivers_done == graph.receivers.len()
    }
}

/// A checkpoint: the run's state and what it belongs to.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    state: AcdcResult,
}

/// What a checkpoint must match: the graph, the prompts' activations, the metric and tau.
fn fingerprint(graph: &EdgeGraph, acts: &EdgeActivations, metric: &Metric, cfg: &AcdcConfig) -> Result<String> {
    let sum = |t: &Tensor| -> Result<f64> { Ok(t.f_to_kind(Kind::Double)?.f_sum(Kind::Double)?.f_double_value(&[])?) };
    Ok(format!(
        "edges {} prompts {:?} tokens {} clean {:.6e} ablated {:.6e} metric {} tau {:e}{}",
        graph.n_edges(),
        acts.tokens.size(),
        sum(&acts.tokens)?,
        sum(&acts.clean)?,
        sum(&acts.ablated)?,
        metric.name(),
        cfg.tau,
        cfg.prune.as_ref().map_or(String::new(), |p| format!(" pruned below {:e} tau by attribution", p.fraction))
    ))
}

/// Cost of one prompt row through blocks `start..` and the unembedding at the answer position
/// (or, `None`, only that unembedding), as a fraction of a full forward (every position
/// unembedded). Per token a block costs 2 d d_head (heads + 2 kv_heads) FLOPs for q, k and v
/// and 2 heads d_head (d + 2 pos) + 4 d d_mlp for the rest (output projection, scores and
/// values, MLP); the last block of a pass computes q, k and v at every position and the rest at
/// the answer position only; the unembedding costs 2 d d_vocab_out per position.
fn cost_fraction(model: &HookedTransformer, start: Option<usize>, positions: i64) -> f64 {
    let c = &model.cfg;
    let (d, p) = (c.d_model as f64, positions as f64);
    let (heads, kv, dh) = (c.n_heads as f64, c.n_kv_heads as f64, c.d_head as f64);
    let mlp = if c.attn_only { 0.0 } else { 4.0 * d * c.d_mlp as f64 * if c.gated_mlp { 1.5 } else { 1.0 } };
    let (qkv, rest) = (2.0 * d * dh * (heads + 2.0 * kv), 2.0 * heads * dh * (d + 2.0 * p) + mlp);
    let unembed = 2.0 * d * c.d_vocab_out as f64;
    let full = p * (c.n_layers as f64 * (qkv + rest) + unembed);
    match start {
        Some(l) => ((c.n_layers - l - 1) as f64 * p * (qkv + rest) + p * qkv + rest + unembed) / full,
        None => unembed / full,
    }
}

/// Runs ACDC on `graph` with the ablated values in `acts`.
///
/// Exact shortcuts that keep the one-edge-per-forward decisions: edges into the logits are tested
/// first, while every sender still gives its clean output, so they need only the final norm and
/// the unembedding at each prompt's answer position; every other test restarts at its
/// receiver's block from the clean residual, and its last block computes only what the metric
/// reads (keys and values at every position, the rest and the unembedding at the answer
/// positions); a component none of whose outputs is kept is cut off from the output, and its
/// inputs are removed untested.
pub fn acdc(model: &HookedTransformer, graph: &EdgeGraph, acts: &EdgeActivations, metric: &Metric, cfg: &AcdcConfig) -> Result<AcdcResult> {
    if cfg.tau.is_nan() || cfg.tau < 0.0 {
        return Err(Error::setting("tau", cfg.tau, "zero or positive"));
    }
    if cfg.max_variants == 0 {
        return Err(Error::setting("max_variants", cfg.max_variants, "at least 1"));
    }
    let n = graph.n_edges();
    if let Some(p) = &cfg.prune {
        if p.scores.len() != n || !p.fraction.is_finite() || p.fraction < 0.0 {
            return Err(Error::Input(format!(
                "attribution pruning needs one score per edge ({n}, found {}) and a finite non-negative fraction of tau (found {})",
                p.scores.len(),
                p.fraction
            )));
        }
    }
    let positions = acts.tokens.size()[1];
    let fingerprint = fingerprint(graph, acts, metric, cfg)?;
    let resumed = match &cfg.checkpoint {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
            let saved: Checkpoint = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                found: format!("no ACDC checkpoint: {e}"),
                expected: fingerprint.clone(),
            })?;
            if saved.fingerprint != fingerprint || saved.state.kept.len() != n {
                return Err(Error::Checkpoint { path: path.clone(), found: saved.fingerprint, expected: fingerprint });
            }
            Some(saved.state)
        }
        _ => None,
    };
    let save = |state: &AcdcResult| -> Result<()> {
        let Some(path) = &cfg.checkpoint else { return Ok(()) };
        let text = serde_json::to_string(&Checkpoint { fingerprint: fingerprint.clone(), state: state.clone() }).map_err(|e| Error::Input(e.to_string()))?;
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, text).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io(path))
    };
    let mut cost = Cost::default();
    // Loss of each edge set in `kept_sets`, the forward restarting at block `start`; `sums` holds
    // the run's removed edges.
    let eval = |kept_sets: &[Vec<bool>], start: usize, sums: &RemovedSums, cost: &mut Cost| -> Result<Vec<f64>> {
        let rows: Vec<Tensor> = kept_sets.iter().map(|k| graph.mask_of(k)).collect::<Result<_>>()?;
        let values = graph.masked_metric_from(model, acts, metric, &Tensor::f_stack(&rows, 0)?, start, Some(sums))?;
        cost.add(kept_sets.len(), cost_fraction(model, Some(start), positions));
        let v = Vec::<f64>::try_from(&values.f_to_kind(Kind::Double)?)?;
        Ok(v.into_iter().map(|x| metric.as_loss(x)).collect())
    };
    let last = graph.n_layers - 1;
    let full_loss = match &resumed {
        Some(state) => state.full_loss,
        None => eval(&[vec![true; n]], if cfg.restart { last } else { 0 }, &RemovedSums::new(graph, acts, &vec![true; n])?, &mut cost)?[0],
    };
    let mut state = resumed.unwrap_or(AcdcResult {
        kept: vec![true; n],
        effect: vec![0.0; n],
        full_loss,
        circuit_loss: full_loss,
        n_forwards: 0,
        n_variants: 0,
        n_tested: 0,
        forward_equivalents: 0.0,
        receivers_done: 0,
        tested_in_receiver: 0,
        n_pruned: 0,
    });
    let mut sums = RemovedSums::new(graph, acts, &state.kept)?;
    // Kept outgoing edges of each sender: a component with none no longer reaches the output.
    let mut out_kept = vec![0usize; graph.senders.len()];
    for (e, k) in graph.edges.iter().zip(&state.kept) {
        out_kept[graph.sender_index(e.sender)] += usize::from(*k);
    }
    let receivers: Vec<(usize, usize)> =
        (0..graph.groups.len()).rev().flat_map(|gi| (0..graph.groups[gi].n_receivers as usize).rev().map(move |r| (gi, r))).collect();
    // Where a test of group `gi`'s receivers starts: its block, block 0 without restarts, or
    // (`None`) the final norm for the logits, whose test needs only it and the unembedding.
    let test_start = |gi: usize| -> Option<usize> {
        let g = &graph.groups[gi];
        match (graph.receivers[g.first_receiver], cfg.restart) {
            (Receiver::Logits, true) => None,
            (_, true) => Some(g.layer),
            (_, false) => Some(0),
        }
    };
    // The bar's ETA is by work: a test's cost (in millionths of a full forward) grows with the
    // blocks after its receiver, so counting edges would underestimate the time left. Work that
    // turns out not to be needed (edges removed untested) comes off the total instead of
    // counting as done, so that the rate, and the ETA, are those of tests.
    let test_work = |gi: usize| (cost_fraction(model, test_start(gi), positions) * 1e6).ceil() as u64;
    let receiver_work = |&(gi, _): &(usize, usize)| test_work(gi) * graph.groups[gi].n_senders as u64;
    let bar = interp_core::train::work_bar(receivers.iter().map(receiver_work).sum(), cfg.progress);
    let done_receivers = &receivers[..state.receivers_done.min(receivers.len())];
    let mut decided: usize = done_receivers.iter().map(|(gi, _)| graph.groups[*gi].n_senders).sum();
    let mut done_work: u64 = done_receivers.iter().map(receiver_work).sum();
    // A resumed run starts where it stopped; its ETA counts only this run's rate.
    bar.set_position(done_work);
    bar.set_message(format!("{decided}/{n} edges"));
    bar.reset_eta();
    let mut logits_test: Option<LogitsTest> = None;
    // Untested removals since the circuit's loss was last measured (a checkpoint may have been
    // saved just after some).
    let mut stale = state.receivers_done > 0 && cfg.prune.is_some();
    let mut width = cfg.max_variants;
    let started = std::time::Instant::now();
    let out_of_time = || cfg.time_limit.is_some_and(|limit| started.elapsed() >= limit);
    let (resumed_at, resumed_tested) = (state.receivers_done, state.tested_in_receiver);
    for (ri, &(gi, r)) in receivers.iter().enumerate().skip(state.receivers_done) {
        // Edges of this receiver tested before a time limit stopped the run here.
        let already = if ri == resumed_at { resumed_tested } else { 0 };
        let mut stopped = false;
        let g = &graph.groups[gi];
        let first = graph.group_edges(gi).start + r * g.n_senders;
        let incoming: Vec<usize> = (first..first + g.n_senders).rev().collect();
        let receiver = graph.receivers[g.first_receiver + r];
        let nodes = graph.receiver_nodes(receiver);
        let untested_work;
        if !nodes.is_empty() && nodes.iter().all(|&s| out_kept[s] == 0) {
            for &e in &incoming {
                state.kept[e] = false;
                sums.remove(graph, acts, e)?;
                out_kept[graph.sender_index(graph.edges[e].sender)] -= 1;
            }
            untested_work = receiver_work(&(gi, r));
        } else {
            let start = test_start(gi);
            let logits_only = start.is_none();
            if logits_only && logits_test.is_none() {
                logits_test = Some(LogitsTest::new(model, graph, acts, metric)?);
            }
            let start = start.unwrap_or(g.layer);
            // The loss of each edge set, by the cheapest exact path.
            let measure = |sets: &[Vec<bool>], sums: &RemovedSums, cost: &mut Cost| -> Result<Vec<f64>> {
                match &logits_test {
                    Some(t) if logits_only => {
                        cost.add(sets.len(), cost_fraction(model, None, positions));
                        t.losses(model, graph, sets)
                    }
                    _ => eval(sets, start, sums, cost),
                }
            };
            let (pruned, to_test): (Vec<usize>, Vec<usize>) = match &cfg.prune {
                Some(p) => incoming.iter().partition(|&&e| p.scores[e].abs() < p.fraction * cfg.tau),
                None => (Vec::new(), incoming.clone()),
            };
            // (A run resumed mid-receiver removed them before it stopped.)
            if let (Some(p), false, 0) = (&cfg.prune, pruned.is_empty(), already) {
                for &e in &pruned {
                    state.kept[e] = false;
                    sums.remove(graph, acts, e)?;
                    state.effect[e] = p.scores[e].abs();
                    out_kept[graph.sender_index(graph.edges[e].sender)] -= 1;
                }
                state.n_pruned += pruned.len();
                stale = true;
            }
            untested_work = pruned.len() as u64 * test_work(gi);
            // The circuit's loss after untested removals, measured once before the next test.
            if stale && !to_test.is_empty() {
                state.circuit_loss = measure(&[state.kept.clone()], &sums, &mut cost)?[0];
                stale = false;
            }
            let mut i = already.min(to_test.len());
            while i < to_test.len() {
                let k = width.min(to_test.len() - i);
                let mut sets = Vec::with_capacity(k);
                let mut trial = state.kept.clone();
                for &e in &to_test[i..i + k] {
                    trial[e] = false;
                    sets.push(trial.clone());
                }
                let losses = measure(&sets, &sums, &mut cost)?;
                let mut done = 0;
                for (j, loss) in losses.iter().enumerate() {
                    let e = to_test[i + j];
                    state.effect[e] = loss - state.circuit_loss;
                    state.n_tested += 1;
                    done += 1;
                    if loss - state.circuit_loss < cfg.tau {
                        state.kept[e] = false;
                        sums.remove(graph, acts, e)?;
                        out_kept[graph.sender_index(graph.edges[e].sender)] -= 1;
                        state.circuit_loss = *loss;
                    } else {
                        break;
                    }
                }
                // Widen the speculation while removals run on; narrow it when an edge is kept early.
                width = if done == k { (2 * k).min(cfg.max_variants).max(width) } else { (done + 1).min(cfg.max_variants) };
                bar.inc(done as u64 * test_work(gi));
                bar.set_message(format!("{}/{n} edges", decided + pruned.len() + i + done));
                i += done;
                // A time limit stops between forwards; the checkpoint says how far this
                // receiver's tests got.
                if i < to_test.len() && out_of_time() {
                    state.tested_in_receiver = i;
                    stopped = true;
                    break;
                }
            }
        }
        state.n_forwards += cost.forwards;
        state.n_variants += cost.variants;
        state.forward_equivalents += cost.equivalents;
        cost = Cost::default();
        if stopped {
            save(&state)?;
            break;
        }
        decided += incoming.len();
        bar.set_length(bar.length().unwrap_or(0).saturating_sub(untested_work));
        done_work += receiver_work(&(gi, r)) - untested_work;
        bar.set_position(done_work);
        bar.set_message(format!("{decided}/{n} edges"));
        state.receivers_done = ri + 1;
        state.tested_in_receiver = 0;
        save(&state)?;
        if out_of_time() {
            break;
        }
    }
    if stale {
        state.circuit_loss = eval(&[state.kept.clone()], 0, &sums, &mut cost)?[0];
        state.n_forwards += cost.forwards;
        state.n_variants += cost.variants;
        state.forward_equivalents += cost.equivalents;
    }
    bar.finish_and_clear();
    Ok(state)
}

/// Forwards, edge sets and full-forward equivalents run since the last checkpoint.
#[derive(Default)]
struct Cost {
    forwards: usize,
    variants: usize,
    equivalents: f64,
}

impl Cost {
    fn add(&mut self, variants: usize, fraction: f64) {
        self.forwards += 1;
        self.variants += variants;
        self.equivalents += variants as f64 * fraction;
    }
}

/// Tests of edges into the logits while every sender gives its clean output: the final residual
/// is the clean one plus the removed edges' (ablated - clean) outputs, read at each prompt's
/// answer position and put through the final norm and the unembedding.
struct LogitsTest {
    /// [B, D] clean final residual at each answer position.
    resid: Tensor,
    /// [S, B, D] ablated - clean sender outputs at the answer positions.
    diff: Tensor,
    /// The metric read at the only position left.
    metric: Metric,
}

impl LogitsTest {
    fn new(model: &HookedTransformer, graph: &EdgeGraph, acts: &EdgeActivations, metric: &Metric) -> Result<LogitsTest> {
        let last = graph.n_layers - 1;
        let resid_in = acts.resid_pre.f_select(0, last as i64)?;
        let resid_final = model.runner_from_layer(&resid_in, last).stop_at_layer(graph.n_layers).run()?.output;
        let size = resid_final.size();
        let rows = metric.answer_rows(size[0], size[1], resid_final.device())?;
        // [S, B, P, D] -> [S, B, D] at each prompt's position
        let at = |t: &Tensor| -> Result<Tensor> { Ok(senders_at_rows(t, &rows)?.f_squeeze_dim(2)?) };
        Ok(LogitsTest { resid: at_rows(&resid_final, &rows)?.f_squeeze_dim(1)?, diff: at(&acts.ablated)?.f_sub(&at(&acts.clean)?)?, metric: metric.at_last() })
    }

    /// The loss of each edge set (only edges into the logits removed).
    fn losses(&self, model: &HookedTransformer, graph: &EdgeGraph, sets: &[Vec<bool>]) -> Result<Vec<f64>> {
        let g = graph.groups.last().ok_or_else(|| Error::Input("an empty edge graph".into()))?;
        let range = graph.group_edges(graph.groups.len() - 1);
        let removed: Vec<f32> = sets.iter().flat_map(|k| k[range.clone()].iter().map(|x| if *x { 0.0 } else { 1.0 })).collect();
        let removed =
            Tensor::f_from_slice(&removed)?.f_view([sets.len() as i64, g.n_senders as i64])?.f_to_kind(self.diff.kind())?.f_to_device(self.diff.device())?;
        let size = self.diff.size(); // [S, B, D]
        let delta = removed.f_matmul(&self.diff.f_reshape([size[0], -1])?)?.f_view([-1, size[1], size[2]])?; // [V, B, D]
        let resid = self.resid.f_unsqueeze(0)?.f_add(&delta)?.f_reshape([-1, 1, size[2]])?;
        let logits = model.runner_from_layer(&resid, graph.n_layers).run()?.output;
        let v = Vec::<f64>::try_from(&self.metric.per_variant(&logits)?.f_to_kind(Kind::Double)?)?;
        Ok(v.into_iter().map(|x| self.metric.as_loss(x)).collect())
    }
}

/// The nodes (senders and receivers) an edge set touches, by name.
pub fn circuit_nodes(graph: &EdgeGraph, kept: &[bool]) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for (e, k) in graph.edges.iter().zip(kept) {
        if *k {
            for name in [e.sender.to_string(), e.receiver.to_string()] {
                if !nodes.contains(&name) {
                    nodes.push(name);
                }
            }
        }
    }
    nodes
}

/// Area under the ROC curve of `scores` against the true edge set (ties count half).
pub fn roc_auc(scores: &[f64], truth: &[bool]) -> Result<f64> {
    if scores.len() != truth.len() {
        return Err(Error::Count { what: "scores for the true circuit's edges".into(), found: scores.len(), expected: truth.len() });
    }
    let pos: Vec<f64> = scores.iter().zip(truth).filter(|(_, t)| **t).map(|(s, _)| *s).collect();
    let neg: Vec<f64> = scores.iter().zip(truth).filter(|(_, t)| !**t).map(|(s, _)| *s).collect();
    if pos.is_empty() || neg.is_empty() {
        return Err(Error::Input("ROC AUC needs both circuit and non-circuit edges".into()));
    }
    let mut wins = 0.0;
    for p in &pos {
        for q in &neg {
            wins += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    Ok(wins / (pos.len() * neg.len()) as f64)
}
