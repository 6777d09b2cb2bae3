//! `interp patch | trace | acdc | eap`: circuit analysis on the built-in tasks, writing tables
//! (parquet + CSV), JSON, charts (SVG + PNG) and a report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use interp::circuits::{
    acdc, activation_patching, causal_trace, circuit_graph, circuit_nodes, edge_attribution, estimate_sigma, heatmaps, line_chart, summarize,
    top_k_masks, Ablation, AcdcConfig, AttributionMethod, Corruption, EdgeGraph, Heatmap, Metric, PatchSite, Series, Table, TaskPrompts,
    TraceConfig, TracePrompt, Value, TOKEN_ROLES,
};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer};
use tch::{Kind, Tensor};

use super::output::Output;

/// The model the circuit commands run on when none is given: the committed task model.
pub const TASK_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tasks-bilinear");

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskName {
    Ioi,
    GreaterThan,
    Facts,
    ModularAddition,
    Induction,
}

impl TaskName {
    fn task(self) -> Task {
        match self {
            TaskName::Ioi => Task::Ioi,
            TaskName::GreaterThan => Task::GreaterThan,
            TaskName::Facts => Task::Facts,
            TaskName::ModularAddition => Task::ModularAddition,
            TaskName::Induction => Task::Induction { half: 12 },
        }
    }
}

#[derive(clap::Args)]
pub struct TaskArgs {
    /// Checkpoint directory of a model trained on the built-in tasks (default: models/tasks-bilinear).
    pub model_dir: Option<PathBuf>,
    /// Built-in task whose clean and corrupted prompts are compared.
    #[arg(long, value_enum, default_value = "ioi")]
    pub task: TaskName,
    /// Number of prompts.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda, or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct Setup {
    model: HookedTransformer,
    vocab: TaskVocab,
    prompts: TaskPrompts,
}

fn setup(args: &TaskArgs) -> Result<Setup> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(TASK_MODEL));
    let model = HookedTransformer::from_pretrained_dir(&dir, super::device(&args.device)?, Kind::Float)?;
    let vocab = TaskVocab::of_model(&model).with_context(|| format!("{}: these commands need a model trained on the built-in tasks", dir.display()))?;
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let prompts = TaskPrompts::new(args.task.task(), &vocab, args.n, args.seed)?;
    Ok(Setup { model, vocab, prompts })
}

pub fn patch(args: &TaskArgs, sites: &[String], out: &mut Output) -> Result<()> {
    let s = setup(args)?;
    out.report.section(&format!("Activation patching: {}", Task::name(args.task.task())));
    out.report.paragraph(&format!(
        "Each activation of the clean run patched into the corrupted run ({} prompts, metric {}); 1 = the clean value restored, 0 = no change.",
        args.n,
        s.prompts.metric.name()
    ));
    let sites: Vec<PatchSite> = if sites.is_empty() || sites.iter().any(|x| x == "all") {
        PatchSite::ALL.iter().copied().filter(|p| !(s.model.cfg.attn_only && *p == PatchSite::MlpOut)).collect()
    } else {
        sites.iter().map(|x| x.parse()).collect::<interp::circuits::Result<_>>()?
    };
    let mut table = Table::default();
    let tokens: Vec<String> = Vec::<i64>::try_from(&s.prompts.clean.get(0))?.iter().enumerate().map(|(i, t)| format!("{i} {}", s.vocab.word(*t))).collect();
    for site in sites {
        let r = activation_patching(&s.model, &s.prompts.clean, &s.prompts.corrupted, &s.prompts.metric, site, 4096)?;
        println!("{:<10} clean {:.4} corrupted {:.4} ({} forwards)", site.name(), r.clean, r.corrupted, r.forwards);
        table.extend(r.to_table()?)?;
        let n = r.normalized.f_to_kind(Kind::Double)?;
        let layers: Vec<String> = (0..s.model.cfg.n_layers).map(|l| format!("L{l}")).collect();
        let panels: Vec<Heatmap> = match site.axes() {
            ["layer", "pos"] => vec![grid(&format!("{}: patched clean -> corrupted (normalised)", site.name()), &n.f_transpose(0, 1)?, tokens.clone(), layers, "layer", "position")?],
            ["layer", "head"] => {
                let heads = (0..n.size()[1]).map(|h| format!("H{h}")).collect();
                vec![grid(&format!("{} per head (normalised)", site.name()), &n, layers, heads, "head", "layer")?]
            }
            _ => (0..n.size()[0])
                .map(|l| {
                    let heads = (0..n.size()[2]).map(|h| format!("H{h}")).collect();
                    grid(&format!("{} L{l} by position (normalised)", site.name()), &n.f_select(0, l)?, tokens.clone(), heads, "head", "position")
                })
                .collect::<Result<_>>()?,
        };
        out.chart(&format!("patch_{}", site.name()), &format!("patching {}", site.name()), |path| heatmaps(path, &panels))?;
    }
    out.table("patching", "patching results", &table)
}

fn grid(title: &str, values: &Tensor, rows: Vec<String>, cols: Vec<String>, x: &str, y: &str) -> Result<Heatmap> {
    let v: Vec<Vec<f64>> = (0..values.size()[0]).map(|r| Vec::<f64>::try_from(&values.get(r).to_kind(Kind::Double))).collect::<Result<_, _>>()?;
    Ok(Heatmap { title: title.into(), rows, cols, values: v, x_label: x.into(), y_label: y.into() })
}

pub struct TraceArgs {
    pub samples: usize,
    pub scale: f64,
    pub sigma: Option<f64>,
    pub window: usize,
    pub severed: bool,
    pub charts: usize,
}

pub fn trace(args: &TaskArgs, t: &TraceArgs, out: &mut Output) -> Result<()> {
    let s = setup(args)?;
    let task = args.task.task();
    if !matches!(task, Task::Facts | Task::ModularAddition) {
        bail!("causal tracing needs prompts with a subject: use --task facts (or modular-addition, whose first operand is the subject)");
    }
    let sigma = match t.sigma {
        Some(v) => v,
        None => estimate_sigma(&s.model, &s.prompts.clean)?,
    };
    println!("noise: {} x sigma {sigma:.4}, {} samples", t.scale, t.samples);
    let rows = s.prompts.clean.size()[0];
    out.report.section(&format!("Causal tracing: {}", Task::name(task)));
    out.report.paragraph(&format!(
        "ROME's causal tracing on {} prompts: Gaussian noise ({} x sigma {sigma:.4}, {} samples) on the subject's embeddings, then the clean \
         residual (and MLP / attention outputs over a window of {} layers) restored at each (token, layer). Heatmaps show the probability \
         of the correct answer; average indirect effects (AIE) are grouped by prompt type (label) and ROME's token roles.",
        rows,
        t.scale,
        t.samples,
        t.window
    ));
    let answers = Vec::<i64>::try_from(&s.prompts.answer)?;
    let bar = interp::interp_core::train::progress_bar(rows as u64, "prompts", true);
    let (mut traces, mut table) = (Vec::new(), Table::default());
    for i in 0..rows {
        let tokens = Vec::<i64>::try_from(&s.prompts.clean.get(i))?;
        // Facts: the three subject tokens after BOS; modular addition: the first operand.
        let subject = if task == Task::Facts { tokens[1..4].to_vec() } else { tokens[1..2].to_vec() };
        let prompt = TracePrompt::new(tokens, &subject, answers[i as usize], s.prompts.labels[i as usize].clone())?;
        let cfg = TraceConfig {
            corruption: Corruption::Noise { sigma, scale: t.scale, samples: t.samples, seed: args.seed + i as u64 },
            window: t.window,
            severed_mlp: t.severed,
            max_rows: 4096,
        };
        let tr = causal_trace(&s.model, &prompt, &cfg)?;
        table.extend(tr.to_table()?)?;
        if (i as usize) < t.charts {
            let labels: Vec<String> = prompt.tokens.iter().map(|t| s.vocab.word(*t).to_string()).collect();
            let layers: Vec<String> = (0..s.model.cfg.n_layers).map(|l| format!("L{l}")).collect();
            let mut panels = vec![
                grid("residual restored", &tr.resid, labels.clone(), layers.clone(), "layer", "token")?,
                grid(&format!("MLP window {}", t.window), &tr.mlp, labels.clone(), layers.clone(), "layer", "token")?,
                grid(&format!("attention window {}", t.window), &tr.attn, labels.clone(), layers.clone(), "layer", "token")?,
            ];
            if let Some(sev) = &tr.severed_mlp {
                panels.push(grid("residual, later MLPs severed", sev, labels.clone(), layers, "layer", "token")?);
            }
            let caption = format!("prompt {i} ({}): {}", prompt.label, labels.join(" "));
            out.chart(&format!("trace_{i}"), &caption, |path| heatmaps(path, &panels))?;
        }
        traces.push(tr);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut summary_table = Table::new(&["label", "n_prompts", "total_effect", "kind", "role", "layer", "aie"]);
    for sm in summarize(&traces)? {
        println!("{:<8} {} prompts, mean total effect {:.4}", sm.label, sm.n_prompts, sm.total_effect);
        let layers: Vec<String> = (0..s.model.cfg.n_layers).map(|l| format!("L{l}")).collect();
        let roles: Vec<String> = TOKEN_ROLES.iter().map(|r| r.to_string()).collect();
        let mut panels = Vec::new();
        for (kind, g) in [("resid", &sm.resid), ("mlp", &sm.mlp), ("attn", &sm.attn)] {
            for (role, role_name) in TOKEN_ROLES.iter().enumerate() {
                for layer in 0..s.model.cfg.n_layers {
                    summary_table.push(vec![
                        sm.label.clone().into(),
                        sm.n_prompts.into(),
                        sm.total_effect.into(),
                        kind.into(),
                        (*role_name).into(),
                        layer.into(),
                        g.double_value(&[role as i64, layer as i64]).into(),
                    ]);
                }
            }
            panels.push(grid(&format!("AIE {kind} ({}, n={})", sm.label, sm.n_prompts), g, roles.clone(), layers.clone(), "layer", "token role")?);
        }
        let caption = format!("average indirect effects, {} prompts ({} of them), mean total effect {:.3}", sm.label, sm.n_prompts, sm.total_effect);
        out.chart(&format!("aie_{}", sm.label), &caption, |path| heatmaps(path, &panels))?;
    }
    out.table("aie", "average indirect effects", &summary_table)?;
    out.table("traces", "every traced cell", &table)
}

pub struct AcdcArgs {
    pub tau: Option<f64>,
    pub kl: bool,
    pub ablation: Ablation,
    pub steps: usize,
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

/// The kept edges of a circuit as JSON: nodes, edges with their weights, faithfulness.
fn circuit_json(graph: &EdgeGraph, kept: &[bool], weights: &[f64], info: serde_json::Value) -> serde_json::Value {
    let edges: Vec<serde_json::Value> = graph
        .edges
        .iter()
        .zip(kept.iter().zip(weights))
        .filter(|(_, (k, _))| **k)
        .map(|(e, (_, w))| serde_json::json!({"sender": e.sender.to_string(), "receiver": e.receiver.to_string(), "weight": w}))
        .collect();
    let mut json = serde_json::json!({ "n_edges_total": graph.n_edges(), "n_edges": edges.len(), "nodes": circuit_nodes(graph, kept), "edges": edges });
    if let (Some(j), Some(extra)) = (json.as_object_mut(), info.as_object()) {
        j.extend(extra.clone());
    }
    json
}

/// EAP and EAP-IG edge scores with faithfulness curves of their top-k circuits, the EAP-IG
/// circuit drawn; with `with_acdc` also ACDC at tau x 1/4 .. 4, its circuit drawn.
pub fn run_acdc(args: &TaskArgs, a: &AcdcArgs, with_acdc: bool, out: &mut Output) -> Result<()> {
    let s = setup(args)?;
    let task = Task::name(args.task.task());
    let graph = EdgeGraph::new(&s.model)?;
    let acts = graph.activations(&s.model, &s.prompts.clean, &s.prompts.corrupted, a.ablation)?;
    let task_metric = &s.prompts.metric;
    let clean_logits = s.model.forward(&s.prompts.clean)?;
    let corrupted_logits = s.model.forward(&s.prompts.corrupted)?;
    let (m_clean, m_corrupt) = interp::circuits::metric::clean_and_corrupted(task_metric, &clean_logits, &corrupted_logits)?;
    let kl;
    let metric: &Metric = if a.kl {
        kl = Metric::kl_to(&clean_logits)?;
        &kl
    } else {
        task_metric
    };
    let ablation = format!("{:?}", a.ablation).to_lowercase();
    println!("{} edges; {} clean {m_clean:.4}, corrupted {m_corrupt:.4}", graph.n_edges(), task_metric.name());
    out.report.section(&format!("Circuits: {task}"));
    out.report.paragraph(&format!(
        "{} prompts; {} edges between the embedding, every head and MLP, and the logits; {} ablation. Metric {}: clean {m_clean:.4}, \
         corrupted {m_corrupt:.4}. Faithfulness = (circuit - corrupted) / (clean - corrupted) on the task metric.",
        args.n,
        graph.n_edges(),
        ablation,
        task_metric.name()
    ));
    let mut curves: Vec<Series> = Vec::new();
    let mut curve_table = Table::new(&["method", "n_edges", "faithfulness"]);
    let counts = edge_counts(graph.n_edges());
    let mut eap_ig = None;
    for method in [AttributionMethod::Eap, AttributionMethod::EapIg { steps: a.steps.max(1) }] {
        let t0 = std::time::Instant::now();
        let scores = edge_attribution(&s.model, &graph, &acts, task_metric, method)?;
        let secs = t0.elapsed().as_secs_f64();
        let f = graph.faithfulness(&s.model, &acts, task_metric, &top_k_masks(&scores, &counts)?)?;
        println!("{:<10} scores in {secs:.2}s; faithfulness at {} edges {:.3}", method.name(), counts[counts.len() / 2], f[counts.len() / 2]);
        for (k, v) in counts.iter().zip(&f) {
            curve_table.push(vec![method.name().into(), (*k).into(), (*v).into()]);
        }
        curves.push(Series { name: method.name(), points: counts.iter().map(|k| *k as f64).zip(f.iter().copied()).collect() });
        let scores = Vec::<f64>::try_from(&scores.to_kind(Kind::Double))?;
        let mut table = Table::new(&["edge", "sender", "receiver", "score"]);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|i, j| scores[*j].abs().total_cmp(&scores[*i].abs()));
        for &i in &order {
            let e = &graph.edges[i];
            table.push(vec![e.to_string().into(), e.sender.to_string().into(), e.receiver.to_string().into(), scores[i].into()]);
        }
        let stem = if method == AttributionMethod::Eap { "eap_scores" } else { "eap_ig_scores" };
        out.table(stem, &format!("{} edge scores, largest |score| first", method.name()), &table)?;
        if method != AttributionMethod::Eap {
            eap_ig = Some((scores, f, order));
        }
    }
    let (scores, f, order) = eap_ig.context("EAP-IG scores")?;
    // The EAP-IG circuit: the fewest top edges reaching faithfulness 0.9 (or all of them).
    let at = f.iter().position(|v| *v >= 0.9).unwrap_or(counts.len() - 1);
    let mut kept = vec![false; scores.len()];
    for i in &order[..counts[at]] {
        kept[*i] = true;
    }
    let title = format!("{task}: EAP-IG top {} edges (faithfulness {:.2})", counts[at], f[at]);
    out.chart("circuit_eap_ig", &title, |p| circuit_graph(p, &title, &graph, &kept, &scores))?;
    let info = serde_json::json!({ "task": task, "method": "EAP-IG", "steps": a.steps.max(1), "metric": task_metric.name(), "ablation": ablation, "faithfulness": f[at] });
    out.json("eap_ig_circuit.json", "EAP-IG circuit", &circuit_json(&graph, &kept, &scores, info))?;
    if with_acdc {
        // Default tau: 1.5% of the gap the metric has to explain (KL: of the corrupted run's KL).
        let gap = if a.kl { metric.value(&corrupted_logits)? } else { (m_clean - m_corrupt).abs() };
        let tau = a.tau.unwrap_or(0.015 * gap);
        let mut points = Vec::new();
        let mut main = None;
        for factor in [0.25, 0.5, 1.0, 2.0, 4.0] {
            let cfg = AcdcConfig { tau: tau * factor, progress: factor == 1.0, ..AcdcConfig::default() };
            let found = acdc(&s.model, &graph, &acts, metric, &cfg)?;
            let f = graph.faithfulness(&s.model, &acts, task_metric, &graph.mask_of(&found.kept)?.f_unsqueeze(0)?)?[0];
            curve_table.push(vec![format!("ACDC tau={:.4}", cfg.tau).into(), found.n_kept().into(), f.into()]);
            points.push((found.n_kept() as f64, f));
            if factor == 1.0 {
                main = Some((found, f));
            }
        }
        points.sort_by(|x, y| x.0.total_cmp(&y.0));
        curves.push(Series { name: "ACDC (tau x 1/4 .. 4)".into(), points });
        let (found, f) = main.context("the main ACDC run")?;
        println!("ACDC tau {tau:.4}: {} of {} edges kept, faithfulness {f:.3} ({} forwards, {} edge sets)", found.n_kept(), graph.n_edges(), found.n_forwards, found.n_variants);
        let title = format!("{task}: ACDC, tau {tau:.3} ({} edges, faithfulness {f:.2})", found.n_kept());
        out.chart("circuit_acdc", &title, |p| circuit_graph(p, &title, &graph, &found.kept, &found.effect))?;
        let mut table = Table::new(&["edge", "sender", "receiver", "kept", "effect"]);
        for (i, e) in graph.edges.iter().enumerate() {
            table.push(vec![e.to_string().into(), e.sender.to_string().into(), e.receiver.to_string().into(), i64::from(found.kept[i]).into(), found.effect[i].into()]);
        }
        table.rows.sort_by_key(|row| row[3] != Value::Int(1));
        out.table("acdc_edges", "ACDC: every edge, kept ones first, with the loss increase when it was tested", &table)?;
        let info = serde_json::json!({ "task": task, "method": "ACDC", "metric": metric.name(), "tau": tau, "ablation": ablation, "faithfulness": f });
        out.json("circuit.json", "ACDC circuit", &circuit_json(&graph, &found.kept, &found.effect, info))?;
    }
    let title = format!("faithfulness on {task} ({} edges)", graph.n_edges());
    out.chart("faithfulness", &title, |path| line_chart(path, &title, "edges kept", "faithfulness", &curves))?;
    out.table("faithfulness", "faithfulness curves", &curve_table)
}
