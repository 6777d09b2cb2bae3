//! Circuit discovery on a prompt set: EAP and EAP-IG edge scores with faithfulness curves of their
//! top-k circuits, optionally ACDC over a range of thresholds; tables, circuit drawings, JSON.

use interp_core::HookedTransformer;
use tch::Kind;

use crate::acdc::{acdc, circuit_nodes, AcdcConfig, AcdcResult};
use crate::chart::{circuit_graph, line_chart, Series};
use crate::eap::{edge_attribution, top_k_masks, AttributionMethod};
use crate::edge_graph::{Ablation, EdgeGraph};
use crate::error::{Error, Result};
use crate::metric::{clean_and_corrupted, Metric};
use crate::prompts::TaskPrompts;
use crate::output::Output;
use crate::table::{Table, Value};

/// What [`circuit_discovery`] runs.
#[derive(Clone, Debug)]
pub struct CircuitDiscoveryConfig {
    /// What a removed edge carries.
    pub ablation: Ablation,
    /// EAP-IG interpolation steps.
    pub steps: usize,
    /// Also run ACDC (at tau x 1/4, 1/2, 1, 2, 4).
    pub acdc: bool,
    /// ACDC keeps an edge if removing it worsens the metric by tau or more; `None`: 1.5% of the
    /// clean - corrupted gap (of the corrupted run's KL with `kl`).
    pub tau: Option<f64>,
    /// ACDC prunes by KL divergence to the clean output instead of the task metric.
    pub kl: bool,
    /// EAP-IG's circuit: the fewest top edges reaching this faithfulness.
    pub target_faithfulness: f64,
}

impl Default for CircuitDiscoveryConfig {
    fn default() -> Self {
        CircuitDiscoveryConfig { ablation: Ablation::Resample, steps: 5, acdc: true, tau: None, kl: false, target_faithfulness: 0.9 }
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
    /// Faithfulness of the top-k circuit for each of [`CircuitDiscovery::counts`].
    pub faithfulness: Vec<f64>,
    /// Time to score every edge.
    pub seconds: f64,
}

/// ACDC's circuit at the chosen tau, and the faithfulness of its runs at other taus.
pub struct AcdcRuns {
    /// The threshold of the main run.
    pub tau: f64,
    /// The main run's circuit.
    pub result: AcdcResult,
    /// Faithfulness of that circuit on the task metric.
    pub faithfulness: f64,
    /// (tau, edges kept, faithfulness) for tau x 1/4 .. 4.
    pub sweep: Vec<(f64, usize, f64)>,
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
    /// Edge counts of the faithfulness curves: 1, 2, 3, 5, 8, ... up to every edge.
    pub counts: Vec<usize>,
    /// EAP, then EAP-IG.
    pub methods: Vec<EdgeScores>,
    /// ACDC's runs, when the config asked for them.
    pub acdc: Option<AcdcRuns>,
}

/// Edge counts for the faithfulness curves: 1, 2, 3, 5, 8, ... up to every edge.
fn edge_counts(n: usize) -> Vec<usize> {
    let mut out = vec![];
    let mut k = 1.0f64;
    while (k as usize) < n {
        if out.last() != Some(&(k as usize)) {
            out.push(k as usize);
        }
        k *= 1.5;
    }
    out.push(n);
    out
}

/// Scores every edge of `model`'s edge graph with EAP and EAP-IG on `prompts`, measures the
/// faithfulness of their top-k circuits, and (with `cfg.acdc`) runs ACDC.
pub fn circuit_discovery(model: &HookedTransformer, prompts: &TaskPrompts, name: &str, cfg: &CircuitDiscoveryConfig) -> Result<CircuitDiscovery> {
    let graph = EdgeGraph::new(model)?;
    let acts = graph.prompt_activations(model, prompts, cfg.ablation)?;
    let task_metric = &prompts.metric;
    let clean_logits = model.forward(&prompts.clean)?;
    let corrupted_logits = model.forward(&prompts.corrupted)?;
    let (m_clean, m_corrupt) = clean_and_corrupted(task_metric, &clean_logits, &corrupted_logits)?;
    let counts = edge_counts(graph.n_edges());
    let mut methods = Vec::new();
    for method in [AttributionMethod::Eap, AttributionMethod::EapIg { steps: cfg.steps.max(1) }] {
        let t0 = std::time::Instant::now();
        let scores = edge_attribution(model, &graph, &acts, task_metric, method)?;
        let seconds = t0.elapsed().as_secs_f64();
        let faithfulness = graph.faithfulness(model, &acts, task_metric, &top_k_masks(&scores, &counts)?)?;
        let scores = Vec::<f64>::try_from(&scores.f_to_kind(Kind::Double)?)?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|i, j| scores[*j].abs().total_cmp(&scores[*i].abs()));
        methods.push(EdgeScores { method, scores, order, faithfulness, seconds });
    }
    let acdc_runs = if cfg.acdc {
        let kl;
        let metric: &Metric = if cfg.kl {
            kl = Metric::kl_to(&clean_logits, prompts.metric.positions.as_ref())?;
            &kl
        } else {
            task_metric
        };
        // Default tau: 1.5% of the gap the metric has to explain (KL: of the corrupted run's KL).
        let gap = if cfg.kl { metric.value(&corrupted_logits)? } else { (m_clean - m_corrupt).abs() };
        let tau = cfg.tau.unwrap_or(0.015 * gap);
        let (mut sweep, mut main) = (Vec::new(), None);
        for factor in [0.25, 0.5, 1.0, 2.0, 4.0] {
            let acdc_cfg = AcdcConfig { tau: tau * factor, progress: factor == 1.0, ..AcdcConfig::default() };
            let found = acdc(model, &graph, &acts, metric, &acdc_cfg)?;
            let f = graph.faithfulness(model, &acts, task_metric, &graph.mask_of(&found.kept)?.f_unsqueeze(0)?)?[0];
            sweep.push((acdc_cfg.tau, found.n_kept(), f));
            if factor == 1.0 {
                main = Some((found, f));
            }
        }
        let (result, faithfulness) = main.ok_or_else(|| Error::Input("no ACDC run at tau x 1".into()))?;
        Some(AcdcRuns { tau, result, faithfulness, sweep })
    } else {
        None
    };
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

impl CircuitDiscovery {
    fn ablation(&self) -> String {
        format!("{:?}", self.config.ablation).to_lowercase()
    }

    /// The EAP-IG circuit: its kept edges and faithfulness (the fewest top edges that reach
    /// `target_faithfulness`, or all of them).
    pub fn eap_ig_circuit(&self) -> Result<(Vec<bool>, usize, f64)> {
        let ig = self.methods.last().ok_or_else(|| Error::Input("no EAP-IG scores".into()))?;
        let at = ig.faithfulness.iter().position(|v| *v >= self.config.target_faithfulness).unwrap_or(self.counts.len() - 1);
        let mut kept = vec![false; ig.scores.len()];
        for i in &ig.order[..self.counts[at]] {
            kept[*i] = true;
        }
        Ok((kept, self.counts[at], ig.faithfulness[at]))
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
        let mut json = serde_json::json!({ "n_edges_total": self.graph.n_edges(), "n_edges": edges.len(), "nodes": circuit_nodes(&self.graph, kept), "edges": edges });
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
        let (kept, n_kept, f) = self.eap_ig_circuit()?;
        let scores = &self.methods.last().ok_or_else(|| Error::Input("no EAP-IG scores".into()))?.scores;
        let title = format!("{name}: EAP-IG top {n_kept} edges (faithfulness {f:.2})");
        out.chart("circuit_eap_ig", &title, |p| circuit_graph(p, &title, graph, &kept, scores))?;
        let steps = self.config.steps.max(1);
        let info = serde_json::json!({ "task": name, "method": "EAP-IG", "steps": steps, "metric": self.metric, "ablation": ablation, "faithfulness": f });
        out.json("eap_ig_circuit.json", "EAP-IG circuit", &self.circuit_json(&kept, scores, info))?;
        if let Some(a) = &self.acdc {
            for (tau, n, f) in &a.sweep {
                curve_table.push(vec![format!("ACDC tau={tau:.4}").into(), (*n).into(), (*f).into()]);
            }
            let mut points: Vec<(f64, f64)> = a.sweep.iter().map(|(_, n, f)| (*n as f64, *f)).collect();
            points.sort_by(|x, y| x.0.total_cmp(&y.0));
            curves.push(Series { name: "ACDC (tau x 1/4 .. 4)".into(), points });
            let found = &a.result;
            let title = format!("{name}: ACDC, tau {:.3} ({} edges, faithfulness {:.2})", a.tau, found.n_kept(), a.faithfulness);
            out.chart("circuit_acdc", &title, |p| circuit_graph(p, &title, graph, &found.kept, &found.effect))?;
            let mut table = Table::new(&["edge", "sender", "receiver", "kept", "effect"]);
            for (i, e) in graph.edges.iter().enumerate() {
                table.push(vec![e.to_string().into(), e.sender.to_string().into(), e.receiver.to_string().into(), i64::from(found.kept[i]).into(), found.effect[i].into()]);
            }
            table.rows.sort_by_key(|row| row[3] != Value::Int(1));
            out.table("acdc_edges", "ACDC: every edge, kept ones first, with the loss increase when it was tested", &table)?;
            let metric = if self.config.kl { "kl".to_string() } else { self.metric.clone() };
            let info = serde_json::json!({ "task": name, "method": "ACDC", "metric": metric, "tau": a.tau, "ablation": ablation, "faithfulness": a.faithfulness });
            out.json("circuit.json", "ACDC circuit", &self.circuit_json(&found.kept, &found.effect, info))?;
        }
        let title = format!("faithfulness on {name} ({} edges)", graph.n_edges());
        out.chart("faithfulness", &title, |path| line_chart(path, &title, "edges kept", "faithfulness", &curves))?;
        out.table("faithfulness", "faithfulness curves", &curve_table)
    }
}
