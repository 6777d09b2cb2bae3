//! The attribution graph of one prompt, pruned, as the files circuit-tracer's viewer reads
//! (`<slug>.json`, `graph-metadata.json`, one feature file per feature node), an HTML view and a
//! node table.

use std::path::{Path, PathBuf};

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer};
use serde_json::json;
use tch::Tensor;
use transcoders::{set_dashboards, visible_token, LatentDashboard, TranscoderSet};

use crate::chart::{scatter_panels, LinePanel, Series};
use crate::error::{Error, Result};
use crate::html::{dashboards_html, graph_view, write_graph_page};
use crate::output::Output;
use crate::table::{Table, Value};
use circuits::attribution_graph::{
    attribution_graph, cantor, check_by_intervention, qk_attribution, source_name, AttributionGraph, Freeze, GraphConfig, InterventionCheck, Node, Pruned,
    QkAttribution, QkSource, Subgraph,
};

/// How [`graph_analysis`] builds and prunes the graph.
#[derive(Clone, Debug)]
pub struct GraphAnalysisConfig {
    /// How the graph is built (logit targets, batch size, progress).
    pub graph: GraphConfig,
    /// Keep the nodes carrying this fraction of the influence on the logits (circuit-tracer: 0.8).
    pub node_threshold: f64,
    /// Then keep the edges carrying this fraction (circuit-tracer: 0.98).
    pub edge_threshold: f64,
    /// Top contexts in each feature file (when contexts are given).
    pub feature_examples: usize,
    /// QK attribution of these scores: (layer, head, query position, key position; negative
    /// positions count from the end).
    pub qk: Vec<(usize, i64, i64, i64)>,
    /// And of this many more: the heads that attend most strongly from the last position to one
    /// key (position 0, the usual attention sink, left out), at that key.
    pub qk_top_heads: usize,
    /// Pinned nodes and supernodes saved in the graph's `qParams`, as circuit-tracer's viewer
    /// saves a subgraph.
    pub subgraph: Subgraph,
    /// Check the graph by intervention on this many features, those the pruned graph keeps of
    /// highest influence on the logits (0: none) ...
    pub interventions: usize,
    /// ... or on these (node ids of kept features, e.g. 3_1204_5).
    pub intervene: Vec<String>,
    /// Each checked feature's activation is multiplied by each of these.
    pub strengths: Vec<f64>,
}

impl Default for GraphAnalysisConfig {
    fn default() -> Self {
        GraphAnalysisConfig {
            graph: GraphConfig { progress: true, ..GraphConfig::default() },
            node_threshold: 0.8,
            edge_threshold: 0.98,
            feature_examples: 8,
            qk: Vec::new(),
            qk_top_heads: 3,
            subgraph: Subgraph::default(),
            interventions: 10,
            intervene: Vec::new(),
            strengths: vec![0.0, 0.5, 2.0],
        }
    }
}

/// Where circuit-tracer's viewer finds the feature files this analysis writes (`features/` next
/// to the graph files, which its local server serves under `./graph_data/`).
pub const VIEWER_SCAN: &str = "./graph_data/features";

/// `path` as a report shows it: relative to the working directory when it lies below it, else
/// its last two components (no machine's absolute paths in a report).
fn shown_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    match cwd.as_deref().and_then(|c| path.strip_prefix(c).ok()) {
        Some(rel) => rel.display().to_string(),
        None if path.is_absolute() => path.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<PathBuf>().display().to_string(),
        None => path.display().to_string(),
    }
}

/// A feature dashboard in circuit-tracer's feature-file format (`frontend/feature_models.py`):
/// top contexts cut to `window` tokens around their peak.
fn feature_file(layer: usize, d: &LatentDashboard, window: usize) -> serde_json::Value {
    let examples: Vec<serde_json::Value> = d
        .top_contexts
        .iter()
        .map(|c| {
            let (range, peak) = c.window(window);
            json!({
                "tokens_acts_list": c.activations[range.clone()],
                "train_token_ind": peak,
                "is_repeated_datapoint": false,
                "tokens": c.tokens[range],
            })
        })
        .collect();
    json!({
        "transcoder_id": format!("layer_{layer}"),
        "index": cantor(layer, d.latent),
        "examples_quantiles": [{ "quantile_name": "Top activations", "examples": examples }],
        "top_logits": d.top_logits.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        "bottom_logits": d.bottom_logits.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        "act_min": 0.0,
        "act_max": d.max_activation,
        "quantile_values": [],
        "histogram": d.histogram.iter().map(|(_, n)| *n as f64).collect::<Vec<_>>(),
        "activation_frequency": d.density,
    })
}

/// A prompt's attribution graph and its pruning.
pub struct GraphAnalysis {
    /// The prompt as given.
    pub prompt: String,
    /// Its token ids, BOS first.
    pub tokens: Vec<i64>,
    /// Token text of every id in the graph, by id.
    pub token_text: std::collections::HashMap<i64, String>,
    /// circuit-tracer's slug and scan: the model folder's name.
    pub slug: String,
    /// Where the transcoders came from (shown in the report).
    pub transcoders: PathBuf,
    /// The full graph.
    pub graph: AttributionGraph,
    /// What survives pruning.
    pub pruned: Pruned,
    /// Layers of the model.
    pub n_layers: usize,
    /// Time to build the graph.
    pub seconds: f64,
    /// Dashboards of the features the pruned graph keeps, by layer (empty without contexts).
    pub features: Vec<(usize, LatentDashboard)>,
    /// Why heads attend where they do: each score split into pairs of sources, with the head's
    /// attention weight there.
    pub qk: Vec<(QkAttribution, f64)>,
    /// The pinned nodes and supernodes saved with the graph.
    pub subgraph: Subgraph,
    /// The top features' interventions against the graph's predictions.
    pub interventions: Option<InterventionCheck>,
}

/// Builds and prunes the attribution graph of `prompt` (tokenized with the model's tokenizer, BOS
/// prepended) through `transcoders` (loaded from `transcoders_dir`); `slug` names it. With
/// `contexts` [n, ctx] (token ids), the features the pruned graph keeps get dashboards over them.
pub fn graph_analysis(
    model: &HookedTransformer,
    transcoders: &TranscoderSet,
    transcoders_dir: &Path,
    prompt: &str,
    slug: &str,
    contexts: Option<&Tensor>,
    cfg: &GraphAnalysisConfig,
) -> Result<GraphAnalysis> {
    let tok = model.require_tokenizer("to encode the prompt")?;
    let tokens = tok.encode(prompt, true)?;
    let start = std::time::Instant::now();
    let graph = attribution_graph(model, transcoders, &tokens, &cfg.graph)?;
    let seconds = start.elapsed().as_secs_f64();
    let pruned = graph.prune(cfg.node_threshold, cfg.edge_threshold)?;
    let mut ids: Vec<i64> = tokens.clone();
    ids.extend(graph.nodes.iter().filter_map(|n| if let Node::Logit { token, .. } = n { Some(*token) } else { None }));
    let token_text = ids.into_iter().map(|t| (t, tok.decode(&[t]).unwrap_or_default())).collect();
    let mut features = Vec::new();
    if let Some(contexts) = contexts {
        for layer in 0..transcoders.n_layers() {
            let mut latents: Vec<i64> = graph
                .nodes
                .iter()
                .zip(&pruned.node_mask)
                .filter_map(|(n, &kept)| match n {
                    Node::Feature { layer: l, feature, .. } if kept && *l == layer => Some(*feature),
                    _ => None,
                })
                .collect();
            latents.sort_unstable();
            latents.dedup();
            features.extend(set_dashboards(transcoders, layer, model, contexts, &latents, cfg.feature_examples)?.into_iter().map(|d| (layer, d)));
        }
    }
    let qk = head_scores_explained(model, transcoders, &tokens, cfg)?;
    let mut top: Vec<usize> = (0..graph.nodes.len()).filter(|&i| matches!(graph.nodes[i], Node::Feature { .. }) && pruned.node_mask[i]).collect();
    top.sort_by(|&a, &b| pruned.influence[b].total_cmp(&pruned.influence[a]));
    top.truncate(cfg.interventions);
    if !cfg.intervene.is_empty() {
        top = cfg.intervene.iter().map(|id| graph.kept_node(&pruned, id)).collect::<circuits::Result<_>>()?;
    }
    let interventions = match top.is_empty() {
        true => None,
        false => Some(check_by_intervention(model, transcoders, &graph, &top, &cfg.strengths, None)?),
    };
    Ok(GraphAnalysis {
        interventions,
        qk,
        subgraph: cfg.subgraph.clone(),
        prompt: prompt.to_string(),
        tokens,
        token_text,
        slug: slug.to_string(),
        transcoders: transcoders_dir.to_path_buf(),
        graph,
        pruned,
        n_layers: model.cfg.n_layers,
        seconds,
        features,
    })
}

/// The QK attributions `cfg` asks for, each with the head's attention weight at its key.
fn head_scores_explained(
    model: &HookedTransformer,
    transcoders: &TranscoderSet,
    tokens: &[i64],
    cfg: &GraphAnalysisConfig,
) -> Result<Vec<(QkAttribution, f64)>> {
    let n_pos = tokens.len() as i64;
    let ids = Tensor::f_from_slice(tokens)?.f_view([1, n_pos])?.f_to_device(model.device())?;
    let (_, cache) = tch::no_grad(|| model.run_with_cache(&ids, CacheSpec::names([BlockSite::Pattern])))?;
    let pattern = |l: usize| -> Result<Tensor> { Ok(cache.get(HookPoint::block(l, BlockSite::Pattern))?.f_select(0, 0)?.f_to_device(tch::Device::Cpu)?) }; // [heads, q, k]
    let mut queries = cfg.qk.clone();
    if cfg.qk_top_heads > 0 && n_pos > 1 {
        let mut strongest = Vec::new();
        for l in 0..model.cfg.n_layers {
            let from_last = pattern(l)?.f_select(1, n_pos - 1)?.f_narrow(1, 1, n_pos - 1)?; // [heads, keys 1..]
            let (weight, key) = from_last.f_max_dim(1, false)?;
            for h in 0..model.cfg.n_heads {
                strongest.push((weight.f_double_value(&[h])?, (l, h, n_pos - 1, key.f_int64_value(&[h])? + 1)));
            }
        }
        strongest.sort_by(|a, b| b.0.total_cmp(&a.0));
        queries.extend(strongest.into_iter().map(|(_, q)| q).filter(|q| !cfg.qk.contains(q)).take(cfg.qk_top_heads));
    }
    queries
        .into_iter()
        .map(|(l, h, q, k)| {
            let qk = qk_attribution(model, Some(transcoders), tokens, l, h, q, k)?;
            let weight = pattern(l)?.f_double_value(&[h, qk.query_pos, qk.key_pos])?;
            Ok((qk, weight))
        })
        .collect()
}

impl GraphAnalysis {
    fn text(&self, t: i64) -> String {
        self.token_text.get(&t).cloned().unwrap_or_default()
    }

    /// A report section with the graph's view; the files circuit-tracer's viewer reads
    /// (`<slug>.json`; `graph-metadata.json`, created or updated so that one folder collects
    /// many graphs; `features/<index>.json` for every kept feature when there are dashboards),
    /// `graph.html` (a page of its own) and `nodes` (every node by influence).
    pub fn write(&self, out: &mut Output) -> Result<()> {
        let (graph, pruned) = (&self.graph, &self.pruned);
        let text = |t: i64| self.text(t);
        let scan = if self.features.is_empty() { self.slug.as_str() } else { VIEWER_SCAN };
        let mut json = graph.to_circuit_tracer_json(pruned, &self.slug, scan, &text)?;
        self.subgraph.save_into(&mut json)?;
        let labels: std::collections::HashMap<(usize, i64), String> =
            self.features.iter().filter_map(|(layer, d)| d.top_logits.first().map(|(t, _)| ((*layer, d.latent), t.clone()))).collect();
        if !self.qk.is_empty() {
            // The viewer ignores keys it does not know; readers of the file find each head's
            // pairs next to the nodes they name.
            json["qk_attributions"] = self.qk_json(&labels)?;
        }
        out.report.section("Transcoder attribution graph");
        out.report.paragraph(&format!(
            "Prompt {:?} through the transcoders in {}: direct effects between active features, transcoder errors, token embeddings and the top \
             logits in the replacement model with attention patterns and norm scales frozen; pruned to {} of the influence on the logits (nodes) and {} (edges).",
            self.prompt,
            shown_path(&self.transcoders),
            pruned.node_threshold,
            pruned.edge_threshold
        ));
        let (replacement, completeness) = graph.replacement_and_completeness()?;
        out.report.paragraph(&format!(
            "Replacement score {replacement:.3} (the share of the tokens' and errors' influence on the logits that the tokens carry, through \
             features) and completeness score {completeness:.3} (each node's share of non-error inputs, weighted by its influence), as \
             circuit-tracer's compute_graph_scores defines them."
        ));
        let mut view = graph_view(graph, pruned, &text, &labels)?;
        // Each kept feature's dashboard, hidden until its node is clicked.
        for (layer, d) in &self.features {
            view.push_str(&format!("<div id=\"dash-{layer}-{}\" hidden>{}</div>\n", d.latent, dashboards_html(std::slice::from_ref(d))));
        }
        out.report.html(&view);
        out.json(&format!("{}.json", self.slug), "the graph for circuit-tracer's viewer", &json)?;
        self.add_to_viewer_metadata(&out.dir, &json["metadata"])?;
        if !self.features.is_empty() {
            let dir = out.dir.join("features");
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            for (layer, d) in &self.features {
                let path = dir.join(format!("{}.json", cantor(*layer, d.latent)));
                let text = serde_json::to_string(&feature_file(*layer, d, 32)).map_err(|e| Error::Input(e.to_string()))?;
                std::fs::write(&path, text).map_err(Error::io(&path))?;
            }
            out.report.paragraph(&format!(
                "circuit-tracer's viewer: `circuit-tracer start-server --graph_file_dir {}`, then http://localhost:8032 ({} feature files in features/).",
                out.dir.display(),
                self.features.len()
            ));
        }
        write_graph_page(&out.dir.join("graph.html"), &format!("Attribution graph: {}", self.prompt), &view)?;
        self.write_qk(out, &labels)?;
        self.write_interventions(out, &labels)?;
        // Token text next to every id; activations for features, probabilities for logits (empty
        // where they do not apply).
        let mut table = Table::new(&["node", "kind", "layer", "pos", "feature", "token", "activation", "probability", "influence", "kept"]);
        for (i, node) in graph.nodes.iter().enumerate() {
            let at = |pos: i64| visible_token(&self.text(self.tokens[pos as usize]));
            let (kind, layer, pos, feature, token, act, prob) = match *node {
                Node::Feature { layer, pos, feature, activation } => ("feature", layer as i64, pos, feature, at(pos), activation, f64::NAN),
                Node::Error { layer, pos } => ("error", layer as i64, pos, -1, at(pos), f64::NAN, f64::NAN),
                Node::Token { pos, token } => ("token", -1, pos, token, at(pos), f64::NAN, f64::NAN),
                Node::Logit { token, probability } => {
                    ("logit", self.n_layers as i64, self.tokens.len() as i64 - 1, token, visible_token(&self.text(token)), f64::NAN, probability)
                }
            };
            table.push(vec![
                Value::Int(i as i64),
                Value::Text(kind.into()),
                Value::Int(layer),
                Value::Int(pos),
                Value::Int(feature),
                Value::Text(token),
                Value::Float(act),
                Value::Float(prob),
                Value::Float(pruned.influence[i]),
                Value::Int(pruned.node_mask[i] as i64),
            ]);
        }
        table.rows.sort_by(|x, y| match (&x[8], &y[8]) {
            (Value::Float(a), Value::Float(b)) => b.total_cmp(a),
            _ => std::cmp::Ordering::Equal,
        });
        out.table("nodes", "nodes by influence on the logits", &table)
    }

    /// A QK source's name, with the top token of its feature's dashboard when there is one.
    fn qk_source_name(&self, s: Option<&QkSource>, side: &str, labels: &std::collections::HashMap<(usize, i64), String>) -> String {
        match s {
            Some(QkSource::Feature { layer, feature, .. }) if labels.contains_key(&(*layer, *feature)) => {
                format!("{} ({})", source_name(s, side), visible_token(&labels[&(*layer, *feature)]))
            }
            _ => source_name(s, side),
        }
    }

    /// Every QK attribution as JSON: its head, positions, score, sources and top pairs, each pair's
    /// sources with the graph node ids they are (features, errors, embeddings; null for heads
    /// and fixed vectors).
    fn qk_json(&self, labels: &std::collections::HashMap<(usize, i64), String>) -> Result<serde_json::Value> {
        let name = |s: Option<&QkSource>, side: &str| self.qk_source_name(s, side, labels);
        let id = |s: Option<&QkSource>, pos: i64| s.and_then(|s| s.node(pos, &self.tokens)).map(|n| self.graph.id_of(&n));
        let mut all = Vec::new();
        for (qk, weight) in &self.qk {
            let pairs = qk.top_pairs(8)?;
            all.push(json!({
                "layer": qk.layer, "head": qk.head, "query_pos": qk.query_pos, "key_pos": qk.key_pos, "attention": weight, "score": qk.score,
                "completeness_error": qk.completeness_error()?,
                "query_sources": qk.query.iter().map(|s| name(Some(s), "")).chain([name(None, "query")]).collect::<Vec<_>>(),
                "key_sources": qk.key.iter().map(|s| name(Some(s), "")).chain([name(None, "key")]).collect::<Vec<_>>(),
                "top_pairs": pairs.iter().map(|(q, k, v)| json!({
                    "query": name(*q, "query"), "key": name(*k, "key"), "contribution": v,
                    "query_node": id(*q, qk.query_pos), "key_node": id(*k, qk.key_pos),
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(serde_json::Value::Array(all))
    }

    /// The QK attributions: a table of each score's top pairs in the report, and every pair's
    /// contribution in `qk.json` (also in the graph's JSON, as `qk_attributions`).
    fn write_qk(&self, out: &mut Output, labels: &std::collections::HashMap<(usize, i64), String>) -> Result<()> {
        if self.qk.is_empty() {
            return Ok(());
        }
        let name = |s: Option<&QkSource>, side: &str| self.qk_source_name(s, side, labels);
        let at = |pos: i64| format!("{} ({pos})", visible_token(&self.text(self.tokens[pos as usize])));
        out.report.subsection("Why heads attend: QK attribution");
        out.report.paragraph(
            "Each score (before the softmax) split into pairs of sources: the residual stream at the query and at the key is the embedding, every earlier \
             head's output, every earlier transcoder's active features and its error, and fixed biases; with the norm scales frozen as in the graph, the score \
             is exactly the sum over pairs, plus the query's and the key's own bias. The heads are those asked for (`--qk`) and those that attend most strongly from the last position to one key.",
        );
        let mut table = Table::new(&["head", "query", "key", "attention", "score", "query_source", "key_source", "contribution", "share"]);
        for (qk, weight) in &self.qk {
            for (q, k, v) in qk.top_pairs(8)? {
                table.push(vec![
                    Value::Text(format!("L{}H{}", qk.layer, qk.head)),
                    Value::Text(at(qk.query_pos)),
                    Value::Text(at(qk.key_pos)),
                    Value::Float(*weight),
                    Value::Float(qk.score),
                    Value::Text(name(q, "query")),
                    Value::Text(name(k, "key")),
                    Value::Float(v),
                    Value::Float(v / qk.score),
                ]);
            }
        }
        out.table("qk_pairs", "the top 8 pairs of each score", &table)?;
        out.json("qk.json", "QK attributions: each score's sources and top pairs", &json!({ "qk_attributions": self.qk_json(labels)? }))
    }

    /// The interventions: correlations in a paragraph, predicted against measured per freeze in a
    /// chart, every intervention in a table.
    fn write_interventions(&self, out: &mut Output, labels: &std::collections::HashMap<(usize, i64), String>) -> Result<()> {
        let Some(check) = &self.interventions else { return Ok(()) };
        let target = match self.graph.nodes[check.target] {
            Node::Logit { token, .. } => visible_token(&self.text(token)),
            _ => String::new(),
        };
        out.report.subsection("Checked by intervention");
        let strengths: Vec<String> = self.strengths().iter().map(|s| format!("{s}")).collect();
        let corr: Vec<String> = Freeze::ALL.iter().map(|&f| check.describe(f)).collect();
        out.report.paragraph(&format!(
            "The {} kept features of highest influence, each with its activation multiplied by {} in a forward of the model (the change of its              decoder rows added to the MLP outputs it writes, as circuit-tracer's feature_intervention does), and the change of the logit of {target:?}              (minus the mean logit) beside what the graph predicts: its direct edge with attention patterns, norm scales and MLP outputs frozen, else              its total effect along every path through features. Correlation of prediction and measurement: {}. With attention and norms frozen only the              MLPs respond, so what is left is their nonlinearity (features that saturate or switch, errors that respond); the last two measurements              let the norm scales and then the attention patterns respond as well.",
            check.interventions.len() / strengths.len().max(1),
            strengths.join(", "),
            corr.join(", ")
        ));
        let panels: Vec<LinePanel> = Freeze::ALL
            .iter()
            .enumerate()
            .map(|(i, &f)| LinePanel {
                title: format!("{} (r = {:.3})", f.name(), check.correlation(f)),
                x_label: if f == Freeze::DirectEffects { "graph: direct edge".into() } else { "graph: total effect".into() },
                y_label: "measured change".into(),
                series: self
                    .strengths()
                    .iter()
                    .map(|&s| Series {
                        name: format!("x{s}"),
                        points: check.interventions.iter().filter(|v| v.strength == s).map(|v| (v.graph(f), v.measured[i])).collect(),
                    })
                    .collect(),
            })
            .collect();
        out.chart("interventions", "the change of the target logit: predicted by the graph (x) and measured (y), one panel per what is frozen", |p| {
            scatter_panels(p, &panels)
        })?;
        let mut table = Table::new(&[
            "node",
            "feature",
            "label",
            "strength",
            "direct",
            "predicted",
            "measured_direct",
            "measured_attn_norms",
            "measured_attn",
            "measured_free",
        ]);
        for v in &check.interventions {
            let (label, layer, feature) = match self.graph.nodes[v.node] {
                Node::Feature { layer, feature, .. } => (labels.get(&(layer, feature)).map(|t| visible_token(t)).unwrap_or_default(), layer, feature),
                _ => (String::new(), 0, 0),
            };
            let mut row = vec![
                Value::Text(self.graph.node_id(v.node)),
                Value::Text(format!("L{layer}/{feature}")),
                Value::Text(label),
                Value::Float(v.strength),
                Value::Float(v.direct),
                Value::Float(v.predicted),
            ];
            row.extend(v.measured.iter().map(|m| Value::Float(*m)));
            table.push(row);
        }
        out.table("interventions", "every intervention: the graph's prediction and the change measured with attention, norms and MLP outputs frozen (direct), attention and norms frozen, attention frozen, and nothing frozen", &table)
    }

    /// The strengths of the interventions, in the order run.
    fn strengths(&self) -> Vec<f64> {
        let mut seen: Vec<f64> = Vec::new();
        for v in self.interventions.iter().flat_map(|c| &c.interventions) {
            if !seen.contains(&v.strength) {
                seen.push(v.strength);
            }
        }
        seen
    }

    /// Adds this graph's metadata to `dir/graph-metadata.json` (created if absent; an entry of
    /// the same slug is replaced), as circuit-tracer's `add_graph_metadata` does.
    fn add_to_viewer_metadata(&self, dir: &Path, metadata: &serde_json::Value) -> Result<()> {
        let path = dir.join("graph-metadata.json");
        let mut all = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text).map_err(|e| Error::Input(format!("{}: malformed JSON: {e}", path.display())))?,
            Err(_) => json!({ "graphs": [] }),
        };
        let graphs = all.get_mut("graphs").and_then(|g| g.as_array_mut()).ok_or_else(|| Error::Input(format!("{}: no `graphs` list", path.display())))?;
        graphs.retain(|g| g["slug"] != metadata["slug"]);
        graphs.push(metadata.clone());
        let text = serde_json::to_string_pretty(&all).map_err(|e| Error::Input(e.to_string()))?;
        std::fs::write(&path, text).map_err(Error::io(&path))
    }

    /// The logit targets as `"token" probability`.
    pub fn logit_targets(&self) -> Vec<String> {
        let text = |t: i64| self.text(t);
        self.graph
            .nodes
            .iter()
            .filter_map(|n| if let Node::Logit { token, probability } = n { Some(format!("{:?} {probability:.3}", text(*token))) } else { None })
            .collect()
    }
}

/// A graph's slug for circuit-tracer's viewer: the model folder's name (a model file's, without
/// its extension) and the prompt's first words, lower case, joined by dashes
/// ("shakespeare-gpt2-to-be-or-not-to-be").
pub fn graph_slug(dir: &Path, prompt: &str) -> String {
    // A GGUF file names the model without its extension.
    let name = if dir.is_file() { dir.file_stem() } else { dir.file_name() };
    let folder = name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "graph".into());
    let words = prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).take(6).map(str::to_lowercase);
    std::iter::once(folder).chain(words).collect::<Vec<_>>().join("-")
}
