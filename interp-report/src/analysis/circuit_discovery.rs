//! Circuit discovery on a prompt set: EAP and EAP-IG edge scores with faithfulness curves of their
//! top-k circuits, optionally ACDC over a range of thresholds; tables, circuit drawings, JSON.

use std::path::{Path, PathBuf};

use interp_core::HookedTransformer;
use tch::{Kind, Tensor};

use crate::chart::{circuit_graph, line_chart, Series};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::{Table, Value};
use circuits::acdc::{acdc, circuit_nodes, AcdcConfig, AcdcResult, AttributionPrune};
use circuits::budget::MemoryBudget;
use circuits::eap::{top_k_masks, AttributionMethod};
use circuits::edge_graph::{Ablation, EdgeGraph, Qkv, Receiver};
use circuits::edge_run::EdgeRun;
use circuits::metric::{check_gap, Metric, MetricName};
use circuits::mib::{cmd, cpr, mib_counts, mib_folder, mib_prune, write_mib_scores, MIB_FRACTIONS};
use circuits::prompts::TaskPrompts;

/// Edge scores summed between two components: a sender and a head (its q, k and v inputs
/// together; under grouped-query attention k and v belong to a key-value head, named
/// `L{l}KV{h}`), an MLP or the logits.
struct ComponentConnection {
    sender: String,
    receiver: String,
    score: f64,
    /// The sum's parts into q, k and v (zero for an MLP or the logits).
    qkv: [f64; 3],
    edges: usize,
}

/// Every sender-component pair's summed score, largest |score| first.
fn component_connections(graph: &EdgeGraph, scores: &[f64]) -> Vec<ComponentConnection> {
    let mut sums: std::collections::BTreeMap<(String, String), ([f64; 3], f64, usize)> = std::collections::BTreeMap::new();
    for (e, s) in graph.edges.iter().zip(scores) {
        let (receiver, slot) = match e.receiver {
            Receiver::Head { layer, head, input: Qkv::Q } => (format!("L{layer}H{head}"), Some(0)),
            Receiver::Head { layer, head, input } if graph.kv_grouped() => (format!("L{layer}KV{head}"), Some(1 + (input == Qkv::V) as usize)),
            Receiver::Head { layer, head, input } => (format!("L{layer}H{head}"), Some(1 + (input == Qkv::V) as usize)),
            r => (r.to_string(), None),
        };
        let entry = sums.entry((e.sender.to_string(), receiver)).or_insert(([0.0; 3], 0.0, 0));
        if let Some(i) = slot {
            entry.0[i] += s;
        }
        entry.1 += s;
        entry.2 += 1;
    }
    let mut out: Vec<ComponentConnection> =
        sums.into_iter().map(|((sender, receiver), (qkv, score, edges))| ComponentConnection { sender, receiver, score, qkv, edges }).collect();
    out.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    out
}

/// What [`circuit_discovery`] runs.
#[derive(Clone, Debug)]
pub struct CircuitDiscoveryConfig {
    /// What a removed edge carries.
    pub ablation: Ablation,
    /// EAP-IG interpolation steps.
    pub steps: usize,
    /// Score edges with EAP and EAP-IG (with faithfulness curves and MIB's CPR and CMD).
    pub attribution: bool,
    /// Run ACDC.
    pub acdc: bool,
    /// Also run ACDC at tau x 1/4, 1/2, 2 and 4 for the faithfulness chart.
    pub tau_sweep: bool,
    /// ACDC keeps an edge if removing it worsens the metric by tau or more; `None`: 1.5% of the
    /// clean - corrupted gap (of the corrupted run's KL with `kl`).
    pub tau: Option<f64>,
    /// ACDC prunes by KL divergence to the clean output instead of the task metric.
    pub kl: bool,
    /// ACDC's candidate removals per forward; `None`: by device (see [`AcdcConfig::for_device`]).
    pub max_variants: Option<usize>,
    /// ACDC's checkpoint file: decisions are saved there as they are made, and a run given an
    /// existing checkpoint of the same graph, prompts and settings resumes from it.
    pub checkpoint: Option<std::path::PathBuf>,
    /// Stop ACDC after this long (resume from the checkpoint).
    pub time_limit: Option<std::time::Duration>,
    /// Opt-in approximate ACDC: edges whose EAP-IG score (`steps` steps, on the task metric) is
    /// below this fraction of tau are removed untested (see [`AttributionPrune`]); not with `kl`.
    pub prune_by_attribution: Option<f64>,
    /// EAP-IG's circuit: the fewest top edges reaching this faithfulness.
    pub target_faithfulness: f64,
    /// Working memory beyond the weights: prompts and edge sets per forward are chunked to fit.
    pub budget: MemoryBudget,
    /// Show progress bars (EAP, EAP-IG and their curves by forward passes, with an ETA; ACDC's
    /// by its tests' cost).
    pub progress: bool,
}

impl Default for CircuitDiscoveryConfig {
    fn default() -> Self {
        CircuitDiscoveryConfig {
            ablation: Ablation::Resample,
            steps: 5,
            attribution: true,
            acdc: true,
            tau_sweep: true,
            tau: None,
            kl: false,
            max_variants: None,
            checkpoint: None,
            time_limit: None,
            prune_by_attribution: None,
            target_faithfulness: 0.9,
            budget: MemoryBudget::DEFAULT,
            progress: false,
        }
    }
}

/// One attribution method's scores and faithfulness curve.
pub struct EdgeScores {
    /// EAP or EAP-IG.
    pub method: AttributionMethod,
    /// Per edge.
    pub scores: Vec<f64>,
    /// Edge indices, largest |score| first.
    pub order: Vec<usize>,
    /// Faithfulness of the top-k circuit by |score| for each of [`CircuitDiscovery::counts`],
    /// pruned as MIB prunes (at MIB's budgets these are the circuits of its CMD).
    pub faithfulness: Vec<f64>,
    /// MIB's scores of the method: faithfulness at [`circuits::MIB_FRACTIONS`] of the edges by
    /// signed and by absolute score, CPR and CMD.
    pub mib: MibScores,
    /// Time to score every edge.
    pub seconds: f64,
}

/// A method's faithfulness at MIB's edge budgets, and its CPR and CMD.
#[derive(Clone, Debug)]
pub struct MibScores {
    /// Faithfulness of the top edges by signed score at each budget.
    pub signed: Vec<f64>,
    /// Faithfulness of the top edges by absolute score at each budget.
    pub absolute: Vec<f64>,
    /// Area under `signed` (higher is better).
    pub cpr: f64,
    /// Area between `absolute` and 1 (lower is better).
    pub cmd: f64,
}

impl MibScores {
    /// Measures the circuits of `scores` [E] at MIB's budgets: the top edges, pruned to what is
    /// connected as MIB prunes them.
    pub fn measure(run: &EdgeRun, graph: &EdgeGraph, scores: &Tensor) -> Result<MibScores> {
        let counts = mib_counts(scores.size()[0] as usize);
        let both = Tensor::f_cat(&[top_k_masks(scores, &counts, false)?, top_k_masks(scores, &counts, true)?], 0)?;
        let f = run.faithfulness(&pruned(graph, &both)?)?;
        let (signed, absolute) = (f[..counts.len()].to_vec(), f[counts.len()..].to_vec());
        Ok(MibScores { cpr: cpr(&signed)?, cmd: cmd(&absolute)?, signed, absolute })
    }
}

/// Edge sets `masks` [V, E] (1 keeps) pruned to what is connected, as MIB prunes a circuit
/// before it measures one (see [`mib_prune`]).
fn pruned(graph: &EdgeGraph, masks: &Tensor) -> Result<Tensor> {
    let mut keep: Vec<bool> = Vec::<f32>::try_from(masks.f_flatten(0, -1)?)?.into_iter().map(|m| m > 0.5).collect();
    for row in keep.chunks_mut(graph.n_edges()) {
        mib_prune(graph, row);
    }
    Ok(Tensor::f_from_slice(&keep.iter().map(|&k| f32::from(u8::from(k))).collect::<Vec<f32>>())?.f_view([-1, graph.n_edges() as i64])?)
}

/// ACDC's circuit at the chosen tau, and the faithfulness of its runs at other taus.
pub struct AcdcRuns {
    /// The threshold of the main run.
    pub tau: f64,
    /// The main run's circuit.
    pub result: AcdcResult,
    /// Faithfulness of that circuit on the task metric.
    pub faithfulness: f64,
    /// (tau, edges kept, faithfulness) for tau x 1/4 .. 4 (empty without the sweep).
    pub sweep: Vec<(f64, usize, f64)>,
    /// MIB's scores of the circuits ACDC's ranking gives (kept edges first, each group by the
    /// loss increase measured when it was tested).
    pub mib: MibScores,
    /// Candidate removals per forward and why: `one edge per forward (CPU)`, ...
    pub strategy: String,
    /// Wall time of the main run.
    pub seconds: f64,
}

/// What [`circuit_discovery`] found.
pub struct CircuitDiscovery {
    /// What the prompts are (a task name, a file name).
    pub name: String,
    /// The config it ran with.
    pub config: CircuitDiscoveryConfig,
    /// Prompts (clean/corrupted pairs) scored.
    pub n_prompts: i64,
    /// The model's edge graph, whose edge order every score follows.
    pub graph: EdgeGraph,
    /// The task metric's name, and its value on the clean and corrupted prompts.
    pub metric: String,
    /// The metric on the clean prompts.
    pub clean: f64,
    /// The metric on the corrupted prompts.
    pub corrupted: f64,
    /// Edge counts of the faithfulness curves (MIB's budgets, and 1, 2, 3, 5, ... below them).
    pub counts: Vec<usize>,
    /// EAP, then EAP-IG.
    pub methods: Vec<EdgeScores>,
    /// ACDC's runs, when the config asked for them.
    pub acdc: Option<AcdcRuns>,
}

/// Edge counts for the faithfulness curves: MIB's budgets (see [`mib_counts`]), whose circuits
/// MIB's CMD measures too, and below and between them 1, 2, 3, 5, 8, ... (x1.5) up to 2,000
/// edges, or 1, 2, 4, 8, ... below MIB's smallest budget in larger graphs.
fn edge_counts(n: usize) -> Vec<usize> {
    let mib = mib_counts(n);
    let limit = if n > 2000 { mib.iter().copied().find(|k| *k > 0).unwrap_or(n) } else { n };
    let step = if n > 2000 { 2.0 } else { 1.5 };
    let mut out = mib;
    let mut k = 1.0f64;
    while (k as usize) < limit {
        out.push(k as usize);
        k *= step;
    }
    out.retain(|k| *k > 0);
    out.sort_unstable();
    out.dedup();
    out
}

/// Scores every edge of `model`'s edge graph with EAP and EAP-IG on `prompts`, measures the
/// faithfulness of their top-k circuits and MIB's CPR and CMD, and (with `cfg.acdc`) runs ACDC;
/// all within `cfg.budget`.
pub fn circuit_discovery(model: &HookedTransformer, prompts: &TaskPrompts, name: &str, cfg: &CircuitDiscoveryConfig) -> Result<CircuitDiscovery> {
    let graph = EdgeGraph::new(model)?;
    let run = EdgeRun::new(model, &graph, prompts, cfg.ablation, cfg.budget)?;
    let task_metric = &prompts.metric;
    let rows = run.chunk() as i64;
    let m_clean = task_metric.value_in_chunks(model, &prompts.clean, rows)?;
    let m_corrupt = task_metric.value_in_chunks(model, &prompts.corrupted, rows)?;
    check_gap(task_metric, m_clean, m_corrupt)?;
    let counts = edge_counts(graph.n_edges());
    let mut methods = Vec::new();
    let methods_run = if cfg.attribution { vec![AttributionMethod::Eap, AttributionMethod::EapIg { steps: cfg.steps.max(1) }] } else { vec![] };
    // One bar over every attribution and faithfulness pass, by forward passes.
    let curves = run.faithfulness_work(counts.len()) + run.faithfulness_work(2 * MIB_FRACTIONS.len());
    let work = methods_run.iter().map(|m| run.attribution_work(*m) + curves).sum::<u64>() + if methods_run.is_empty() { 0 } else { run.faithfulness_work(2) };
    let bar = interp_core::train::work_bar(work, cfg.progress && work > 0);
    let run = run.with_progress(bar.clone());
    for method in methods_run {
        bar.set_message(method.name());
        let t0 = std::time::Instant::now();
        let scores = run.attribution(method)?;
        let seconds = t0.elapsed().as_secs_f64();
        let faithfulness = run.faithfulness(&pruned(&graph, &top_k_masks(&scores, &counts, true)?)?)?;
        let mib = MibScores::measure(&run, &graph, &scores)?;
        let scores = Vec::<f64>::try_from(&scores.f_to_kind(Kind::Double)?)?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|i, j| scores[*j].abs().total_cmp(&scores[*i].abs()));
        methods.push(EdgeScores { method, scores, order, faithfulness, mib, seconds });
    }
    bar.finish_and_clear();
    let acdc_runs = if cfg.acdc { Some(acdc_runs(model, &graph, &run, prompts, (m_clean, m_corrupt), cfg)?) } else { None };
    Ok(CircuitDiscovery {
        name: name.to_string(),
        config: cfg.clone(),
        n_prompts: prompts.clean.size()[0],
        graph,
        metric: task_metric.name().to_string(),
        clean: m_clean,
        corrupted: m_corrupt,
        counts,
        methods,
        acdc: acdc_runs,
    })
}

/// ACDC at `cfg.tau` (and with the sweep at tau x 1/4 .. 4), each circuit's faithfulness on the
/// task metric, and MIB's scores of ACDC's ranking.
fn acdc_runs(
    model: &HookedTransformer,
    graph: &EdgeGraph,
    run: &EdgeRun,
    prompts: &TaskPrompts,
    (m_clean, m_corrupt): (f64, f64),
    cfg: &CircuitDiscoveryConfig,
) -> Result<AcdcRuns> {
    let acts = run.whole()?;
    let kl;
    let metric: &Metric = if cfg.kl {
        kl = prompts.metric_of(MetricName::Kl, model.cfg.d_vocab_out, Some(model))?;
        &kl
    } else {
        &prompts.metric
    };
    // Default tau: 1.5% of the gap the metric has to explain (KL: of the corrupted run's KL).
    let gap = if cfg.kl { metric.value_in_chunks(model, &prompts.corrupted, run.chunk() as i64)? } else { (m_clean - m_corrupt).abs() };
    let tau = cfg.tau.unwrap_or(0.015 * gap);
    let (by_device, strategy) = AcdcConfig::for_device(model.device());
    let max_variants = cfg.max_variants.unwrap_or(by_device).min(run.variants_per_forward()).max(1);
    let strategy = match cfg.max_variants {
        Some(v) => format!("{} candidate removals per forward (as asked)", v.min(max_variants)),
        None if max_variants < by_device => format!("{max_variants} candidate removals per forward (memory budget)"),
        None => strategy.to_string(),
    };
    // The approximation compares EAP-IG's estimates of each edge's effect on the task metric with
    // tau (EAP's, taken at the full circuit alone, missed saturated effects: greater-than's
    // faithfulness fell to 0 at a cut of 0.1 tau).
    let scores = match (cfg.prune_by_attribution, cfg.kl) {
        (Some(_), true) => {
            return Err(Error::Input("pruning by attribution compares EAP-IG's task-metric effects with tau: it cannot be used with --kl".into()))
        }
        (Some(_), false) => Some(Vec::<f64>::try_from(&run.attribution(AttributionMethod::EapIg { steps: cfg.steps.max(1) })?.f_to_kind(Kind::Double)?)?),
        (None, _) => None,
    };
    let factors: &[f64] = if cfg.tau_sweep { &[0.25, 0.5, 1.0, 2.0, 4.0] } else { &[1.0] };
    let (mut sweep, mut main) = (Vec::new(), None);
    for &factor in factors {
        let main_run = factor == 1.0;
        let acdc_cfg = AcdcConfig {
            tau: tau * factor,
            max_variants,
            progress: main_run,
            checkpoint: if main_run { cfg.checkpoint.clone() } else { None },
            time_limit: if main_run { cfg.time_limit } else { None },
            prune: cfg.prune_by_attribution.zip(scores.clone()).map(|(fraction, scores)| AttributionPrune { scores, fraction }),
            ..AcdcConfig::default()
        };
        let t0 = std::time::Instant::now();
        let found = acdc(model, graph, acts, metric, &acdc_cfg)?;
        let seconds = t0.elapsed().as_secs_f64();
        let f = run.faithfulness(&graph.mask_of(&found.kept)?.f_unsqueeze(0)?)?[0];
        if cfg.tau_sweep {
            sweep.push((acdc_cfg.tau, found.n_kept(), f));
        }
        if main_run {
            main = Some((found, f, seconds));
        }
    }
    let (result, faithfulness, seconds) = main.ok_or_else(|| Error::Input("no ACDC run at tau x 1".into()))?;
    let strategy = match cfg.prune_by_attribution {
        Some(f) => format!("{strategy}; approximate: {} edges with |EAP-IG score| below {f} x tau removed untested (EAP-IG run not counted)", result.n_pruned),
        None => strategy,
    };
    let mib = MibScores::measure(run, graph, &Tensor::f_from_slice(&result.ranking())?)?;
    Ok(AcdcRuns { tau, result, faithfulness, sweep, mib, strategy, seconds })
}

impl CircuitDiscovery {
    fn ablation(&self) -> String {
        format!("{:?}", self.config.ablation).to_lowercase()
    }

    /// The EAP-IG circuit: its kept edges, their number and its faithfulness (the fewest top
    /// edges that reach `target_faithfulness`, or all of them, pruned as MIB prunes).
    pub fn eap_ig_circuit(&self) -> Result<(Vec<bool>, usize, f64)> {
        let ig = self.methods.last().ok_or_else(|| Error::Input("no EAP-IG scores".into()))?;
        let at = ig.faithfulness.iter().position(|v| *v >= self.config.target_faithfulness).unwrap_or(self.counts.len() - 1);
        let mut kept = vec![false; ig.scores.len()];
        for i in &ig.order[..self.counts[at]] {
            kept[*i] = true;
        }
        mib_prune(&self.graph, &mut kept);
        let n = kept.iter().filter(|k| **k).count();
        Ok((kept, n, ig.faithfulness[at]))
    }

    /// The kept edges of a circuit as JSON: nodes, edges with their weights, and `info`.
    fn circuit_json(&self, kept: &[bool], weights: &[f64], info: serde_json::Value) -> serde_json::Value {
        let edges: Vec<serde_json::Value> = self
            .graph
            .edges
            .iter()
            .zip(kept.iter().zip(weights))
            .filter(|(_, (k, _))| **k)
            .map(|(e, (_, w))| serde_json::json!({"sender": e.sender.to_string(), "receiver": e.receiver.to_string(), "weight": w}))
            .collect();
        let mut json =
            serde_json::json!({ "n_edges_total": self.graph.n_edges(), "n_edges": edges.len(), "nodes": circuit_nodes(&self.graph, kept), "edges": edges });
        if let (Some(j), Some(extra)) = (json.as_object_mut(), info.as_object()) {
            j.extend(extra.clone());
        }
        json
    }

    /// A report section; `eap_scores` and `eap_ig_scores` tables (largest |score| first); the
    /// EAP-IG circuit drawn (`circuit_eap_ig`) and as `eap_ig_circuit.json`; with ACDC, its
    /// circuit (`circuit_acdc`, `circuit.json`) and `acdc_edges`; faithfulness curves (chart and
    /// table).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        let (name, graph) = (&self.name, &self.graph);
        let ablation = self.ablation();
        out.report.section(&format!("Circuits: {name}"));
        out.report.paragraph(&format!(
            "{} prompts; {} edges between the embedding, every head and MLP, and the logits; {} ablation. Metric {}: clean {:.4}, \
             corrupted {:.4}. Faithfulness = (circuit - corrupted) / (clean - corrupted) on the task metric.",
            self.n_prompts,
            graph.n_edges(),
            ablation,
            self.metric,
            self.clean,
            self.corrupted
        ));
        let mut curves: Vec<Series> = Vec::new();
        let mut curve_table = Table::new(&["method", "n_edges", "faithfulness"]);
        for m in &self.methods {
            for (k, v) in self.counts.iter().zip(&m.faithfulness) {
                curve_table.push(vec![m.method.name().into(), (*k).into(), (*v).into()]);
            }
            curves.push(Series { name: m.method.name(), points: self.counts.iter().map(|k| *k as f64).zip(m.faithfulness.iter().copied()).collect() });
            let mut table = Table::new(&["edge", "sender", "receiver", "score"]);
            for &i in &m.order {
                let e = &graph.edges[i];
                table.push(vec![e.to_string().into(), e.sender.to_string().into(), e.receiver.to_string().into(), m.scores[i].into()]);
            }
            let stem = if m.method == AttributionMethod::Eap { "eap_scores" } else { "eap_ig_scores" };
            out.table(stem, &format!("{} edge scores, largest |score| first", m.method.name()), &table)?;
        }
        if !self.methods.is_empty() {
            // The fewest top edges that reach each faithfulness, as numbers.
            let targets = [0.5, 0.8, 0.9];
            let reach: Vec<String> = self
                .methods
                .iter()
                .map(|m| {
                    let at = targets.map(|t| m.faithfulness.iter().position(|f| *f >= t).map_or("-".to_string(), |i| self.counts[i].to_string()));
                    format!("{} {}", m.method.name(), at.join(" / "))
                })
                .collect();
            out.report.paragraph(&format!(
                "The fewest top edges (of {}) whose circuit reaches faithfulness 0.5 / 0.8 / 0.9, on the curve's edge counts: {}.",
                graph.n_edges(),
                reach.join("; ")
            ));
            let (kept, n_kept, f) = self.eap_ig_circuit()?;
            let scores = &self.methods.last().ok_or_else(|| Error::Input("no EAP-IG scores".into()))?.scores;
            // The same scores at the level a reader thinks in: between heads, MLPs and the logits.
            let components = component_connections(graph, scores);
            let top: Vec<String> = components.iter().take(8).map(|c| format!("{} -> {} {:+.3}", c.sender, c.receiver, c.score)).collect();
            out.report.paragraph(&format!(
                "EAP-IG's scores summed over the edges between two components (a head's q, k and v inputs together; table \
                 `eap_ig_components`), largest |sum| first: {}.",
                top.join(", ")
            ));
            let mut table = Table::new(&["sender", "receiver", "score", "q", "k", "v", "edges"]);
            for c in &components {
                table.push(vec![
                    c.sender.clone().into(),
                    c.receiver.clone().into(),
                    c.score.into(),
                    c.qkv[0].into(),
                    c.qkv[1].into(),
                    c.qkv[2].into(),
                    c.edges.into(),
                ]);
            }
            out.table("eap_ig_components", "EAP-IG scores summed between components, largest |sum| first", &table)?;
            // A drawing of at most DRAWN edges: the circuit's top ones by |score|, pruned.
            const DRAWN: usize = 100;
            let (drawn, title) = if n_kept > DRAWN {
                let mut top: Vec<usize> = (0..kept.len()).filter(|&e| kept[e]).collect();
                top.sort_by(|a, b| scores[*b].abs().total_cmp(&scores[*a].abs()));
                let mut drawn = vec![false; kept.len()];
                for &e in &top[..DRAWN] {
                    drawn[e] = true;
                }
                mib_prune(graph, &mut drawn);
                let shown = drawn.iter().filter(|k| **k).count();
                (drawn, format!("{name}: EAP-IG circuit of {n_kept} edges (faithfulness {f:.2}); its top {DRAWN} edges drawn, {shown} connected"))
            } else {
                (kept.clone(), format!("{name}: EAP-IG top {n_kept} edges (faithfulness {f:.2})"))
            };
            out.chart("circuit_eap_ig", &title, |p| circuit_graph(p, &title, graph, &drawn, scores))?;
            let steps = self.config.steps.max(1);
            let info = serde_json::json!({ "task": name, "method": "EAP-IG", "steps": steps, "metric": self.metric, "ablation": ablation, "faithfulness": f });
            out.json("eap_ig_circuit.json", "EAP-IG circuit", &self.circuit_json(&kept, scores, info))?;
        }
        if let Some(a) = &self.acdc {
            for (tau, n, f) in &a.sweep {
                curve_table.push(vec![format!("ACDC tau={tau:.4}").into(), (*n).into(), (*f).into()]);
            }
            let mut points: Vec<(f64, f64)> = a.sweep.iter().map(|(_, n, f)| (*n as f64, *f)).collect();
            points.sort_by(|x, y| x.0.total_cmp(&y.0));
            let series = if points.is_empty() { format!("ACDC (tau {:.4})", a.tau) } else { "ACDC (tau x 1/4 .. 4)".into() };
            if points.is_empty() {
                points.push((a.result.n_kept() as f64, a.faithfulness));
                curve_table.push(vec![format!("ACDC tau={:.4}", a.tau).into(), a.result.n_kept().into(), a.faithfulness.into()]);
            }
            curves.push(Series { name: series, points });
            let found = &a.result;
            out.report.paragraph(&format!(
                "ACDC at tau {:.4}: {} of {} edges kept, faithfulness {:.3}; {} of {} edges tested in {} forwards ({}), {:.0} full-forward \
                 equivalents (one full forward per edge: {}, {:.1}x more), {:.1} s.",
                a.tau,
                found.n_kept(),
                graph.n_edges(),
                a.faithfulness,
                found.n_tested,
                graph.n_edges(),
                found.n_forwards,
                a.strategy,
                found.forward_equivalents,
                graph.n_edges() + 1,
                (graph.n_edges() + 1) as f64 / found.forward_equivalents.max(1e-9),
                a.seconds
            ));
            if !found.finished(graph) {
                out.report.paragraph(&format!(
                    "ACDC stopped at its time limit after deciding {} of {} receivers (from the logits down); the edges into the \
                     other receivers are kept untested, so this circuit is an upper bound. Run the same command again to resume \
                     from its checkpoint.",
                    found.receivers_done,
                    graph.receivers.len()
                ));
            }
            let title = format!("{name}: ACDC, tau {:.3} ({} edges, faithfulness {:.2})", a.tau, found.n_kept(), a.faithfulness);
            out.chart("circuit_acdc", &title, |p| circuit_graph(p, &title, graph, &found.kept, &found.effect))?;
            let mut table = Table::new(&["edge", "sender", "receiver", "kept", "effect"]);
            for (i, e) in graph.edges.iter().enumerate() {
                table.push(vec![
                    e.to_string().into(),
                    e.sender.to_string().into(),
                    e.receiver.to_string().into(),
                    i64::from(found.kept[i]).into(),
                    found.effect[i].into(),
                ]);
            }
            table.rows.sort_by_key(|row| row[3] != Value::Int(1));
            out.table("acdc_edges", "ACDC: every edge, kept ones first, with the loss increase when it was tested", &table)?;
            let metric = if self.config.kl { "kl".to_string() } else { self.metric.clone() };
            let info = serde_json::json!({
                "task": name, "method": "ACDC", "metric": metric, "tau": a.tau, "ablation": ablation, "faithfulness": a.faithfulness,
                "strategy": a.strategy, "seconds": a.seconds, "forwards": found.n_forwards, "edges_tested": found.n_tested,
                "edges_pruned_by_attribution": found.n_pruned,
                "full_forward_equivalents": found.forward_equivalents,
            });
            out.json("circuit.json", "ACDC circuit", &self.circuit_json(&found.kept, &found.effect, info))?;
        }
        let title = format!("faithfulness on {name} ({} edges)", graph.n_edges());
        out.chart("faithfulness", &title, |path| line_chart(path, &title, "edges kept", "faithfulness", &curves))?;
        out.table("faithfulness", "faithfulness curves", &curve_table)?;
        let mut mib = Table::new(&["method", "edge_fraction", "n_edges", "faithfulness_signed", "faithfulness_absolute"]);
        let mut summary = Table::new(&["method", "CPR", "CMD"]);
        let counts = mib_counts(graph.n_edges());
        for (method, scores) in self.mib_scores() {
            for (i, p) in MIB_FRACTIONS.iter().enumerate() {
                mib.push(vec![method.clone().into(), (*p).into(), counts[i].into(), scores.signed[i].into(), scores.absolute[i].into()]);
            }
            summary.push(vec![method.into(), scores.cpr.into(), scores.cmd.into()]);
        }
        if !summary.rows.is_empty() {
            out.report.paragraph(
                "MIB's scores: faithfulness of each method's top edges at 0.1% .. 100% of the edges; CPR = area under the curve of \
                 circuits chosen by signed score (higher is better; above 1 when those circuits do more than the full model), CMD = area between 1 and the curve of circuits \
                 chosen by absolute score (lower is better).",
            );
            out.table("mib_scores", "MIB CPR and CMD per method", &summary)?;
            out.table("mib_faithfulness", "faithfulness at MIB's edge budgets", &mib)?;
        }
        Ok(())
    }

    /// (method name, MIB scores) of every method run.
    pub fn mib_scores(&self) -> Vec<(String, &MibScores)> {
        let mut out: Vec<(String, &MibScores)> = self.methods.iter().map(|m| (m.method.name(), &m.mib)).collect();
        if let Some(a) = &self.acdc {
            out.push(("ACDC".into(), &a.mib));
        }
        out
    }

    /// Writes each method's edge scores in MIB's submission layout, as its `run_attribution.py`
    /// writes them: `dir/<method>_<ablation>_edge/<prompts>_<model>/importances.json` (MIB's
    /// `Graph.to_json`, node scores included; methods named as MIB names them: `EAP`,
    /// `EAP-IG-inputs`, and `ACDC`, whose score is its ranking: kept edges first, by measured
    /// effect). `model_name` is MIB's name where MIB knows the model (`gpt2`, `qwen2.5`, ...).
    pub fn export_mib(&self, dir: &Path, model: &HookedTransformer, model_name: &str) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        let mut write = |method: &str, scores: &[f64]| -> Result<()> {
            let path = dir.join(mib_folder(method, self.config.ablation, &self.name, model_name)).join("importances.json");
            write_mib_scores(&self.graph, scores, &model.cfg, &path)?;
            written.push(path);
            Ok(())
        };
        for m in &self.methods {
            let method = match m.method {
                AttributionMethod::Eap => "EAP",
                AttributionMethod::EapIg { .. } => "EAP-IG-inputs",
            };
            write(method, &m.scores)?;
        }
        if let Some(a) = &self.acdc {
            write("ACDC", &a.result.ranking().iter().map(|x| *x as f64).collect::<Vec<_>>())?;
        }
        Ok(written)
    }
}
