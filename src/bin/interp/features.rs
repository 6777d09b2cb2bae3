//! `interp bilinear | graph`: weight-based analysis of bilinear MLPs and transcoder attribution
//! graphs. The analyses are `report::analysis`; this file maps flags onto their configs and
//! prints a summary.

use std::path::PathBuf;

use anyhow::Result;
use interp::circuits::attribution_graph::{qk_attribution, source_name, Freeze, Subgraph};
use interp::circuits::bilinear::BilinearLayer;
use interp::circuits::MemoryBudget;
use interp::interp_core::{tch, HookedTransformer};
use interp::report::analysis::{bilinear_spectra, graph_analysis, graph_slug, BilinearSpectraConfig, GraphAnalysisConfig};
use interp::report::{Output, Table, Value};
use interp::transcoders::load_transcoder_set;
use interp::transcoders::visible_token;
use tch::Kind;

#[derive(clap::Args)]
pub struct BilinearArgs {
    /// Checkpoint of a model with bilinear MLPs (default: models/tasks-bilinear).
    pub model_dir: Option<PathBuf>,
    /// MLP layer to decompose (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Output tokens whose unembedding directions are decomposed, comma separated; `a-b` for the
    /// difference of two tokens' directions.
    #[arg(long, value_delimiter = ',', default_values_t = BilinearSpectraConfig::default().directions)]
    pub tokens: Vec<String>,
    /// Eigenvectors per direction to read out as tokens.
    #[arg(long, default_value_t = BilinearSpectraConfig::default().top)]
    pub top: i64,
    /// Also run modular addition with the MLP's logit contributions truncated to k eigenpairs
    /// (needs the task vocabulary); --no-task to skip.
    #[arg(long)]
    pub no_task: bool,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `interp bilinear`: spectra, eigenvector token readouts and truncation curves.
pub fn run_bilinear(args: &BilinearArgs, out: &mut Output) -> Result<()> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(super::circuit::TASK_MODEL));
    let model = HookedTransformer::from_pretrained_dir(&dir, args.device.get(), Kind::Float)?;
    let layer = args.layer.unwrap_or(model.cfg.n_layers.saturating_sub(1));
    let cfg = BilinearSpectraConfig { directions: args.tokens.clone(), top: args.top, truncation: !args.no_task };
    let spectra = bilinear_spectra(&model, layer, &BilinearLayer::from_model(&model, layer)?, &cfg)?;
    spectra.print();
    Ok(spectra.write(out)?)
}

#[derive(clap::Args)]
pub struct GraphArgs {
    /// Checkpoint directory (default: models/shakespeare-gpt2).
    pub model_dir: Option<PathBuf>,
    /// Transcoders replacing every MLP: a circuit-tracer set (config.yaml + layer_i.safetensors),
    /// a folder of SAELens transcoder folders, or a cross-layer transcoder in circuit-tracer's CLT
    /// layout (W_enc_i / W_dec_i.safetensors, as `interp sae train --clt` writes) (default:
    /// MODEL/transcoders).
    #[arg(long)]
    pub transcoders: Option<PathBuf>,
    /// Prompt (BOS prepended).
    #[arg(long, default_value = "ROMEO. But soft, what light through yonder window breaks? It is the")]
    pub prompt: String,
    /// Keep the nodes carrying this fraction of the influence on the logits.
    #[arg(long, default_value_t = GraphAnalysisConfig::default().node_threshold)]
    pub node_threshold: f64,
    /// Then keep the edges carrying this fraction.
    #[arg(long, default_value_t = GraphAnalysisConfig::default().edge_threshold)]
    pub edge_threshold: f64,
    /// Targets per backward pass.
    #[arg(long, default_value_t = GraphAnalysisConfig::default().graph.batch_size)]
    pub batch: i64,
    /// Name of the graph in circuit-tracer's viewer (its file is OUT/SLUG.json); default: the
    /// model folder's name and the prompt's first words.
    #[arg(long)]
    pub slug: Option<String>,
    /// Text whose held-out part gives each kept feature's top contexts (shakespeare, a folder of
    /// .txt files or a .jsonl file); the feature files are skipped when it cannot be read.
    #[arg(long, default_value = "shakespeare")]
    pub data: String,
    /// Held-out contexts of 128 tokens searched for each feature's top activations.
    #[arg(long, default_value_t = 64)]
    pub contexts: i64,
    /// Peak memory allowed, in GB (the model's weights, the transcoders, the adjacency's rows and
    /// the backward passes); default: the weights plus 3 GB. Rows that would leave too little room
    /// for the passes go to a temporary file (in TMPDIR, nodes^2 x 4 bytes) and are read back by
    /// blocks. A graph that cannot fit even so is an error.
    #[arg(long)]
    pub max_memory: Option<f64>,
    /// At most this many feature nodes (circuit-tracer's max_feature_nodes): after the logits,
    /// the features of highest influence on them are attributed until this many are; the rest
    /// are left out. Bounds time and memory on long prompts; default: every active feature.
    #[arg(long)]
    pub max_features: Option<usize>,
    /// Keep the features and errors at position 0 (BOS) as nodes; by default they are left out
    /// and their MLP output counts as a constant, as circuit-tracer does.
    #[arg(long)]
    pub keep_position_0: bool,
    /// Explain why a head attends where it does: its score from a query position to a key
    /// position split into pairs of sources (features, errors, embeddings, heads), written as
    /// LAYER.HEAD:QUERY:KEY, e.g. 1.3:19:10; negative positions count from the end (repeatable).
    #[arg(long, value_parser = parse_qk, allow_hyphen_values = true)]
    pub qk: Vec<(usize, i64, i64, i64)>,
    /// Also explain the scores of this many heads: those attending most strongly from the last
    /// position to one key (position 0 left out).
    #[arg(long, default_value_t = GraphAnalysisConfig::default().qk_top_heads)]
    pub qk_heads: usize,
    /// Pin a node in the saved graph, as circuit-tracer's viewer pins one (its node id, e.g.
    /// 1_1204_5 or E_464_0; repeatable).
    #[arg(long)]
    pub pin: Vec<String>,
    /// Group nodes into a supernode in the saved graph: LABEL=ID,ID,... (repeatable).
    #[arg(long, value_parser = parse_supernode)]
    pub supernode: Vec<(String, Vec<String>)>,
    /// Check the graph by intervention on the N kept features of highest influence: each
    /// activation scaled by each --strengths in forwards of the model, the change of the top logit
    /// measured with attention, norms and MLP outputs frozen (it must equal the graph's edge), with
    /// attention and norms frozen, with attention frozen (circuit-tracer's feature_intervention),
    /// and free, beside the graph's prediction. Writes OUT/interventions.csv and a chart; 0: none.
    #[arg(long, default_value_t = GraphAnalysisConfig::default().interventions)]
    pub check: usize,
    /// Intervene on these kept features instead (node ids as in the viewer, e.g. 1_1204_5;
    /// repeatable); an id that pruning removed is refused.
    #[arg(long)]
    pub intervene: Vec<String>,
    /// Factors the checked features' activations are multiplied by (0 ablates).
    #[arg(long, value_delimiter = ',', default_values_t = GraphAnalysisConfig::default().strengths)]
    pub strengths: Vec<f64>,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `interp graph`: the attribution graph of a prompt.
pub fn run_graph(args: &GraphArgs, out: &mut Output) -> Result<()> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(super::DEFAULT_MODEL));
    let device = args.device.get();
    let model = HookedTransformer::from_pretrained_dir(&dir, device, Kind::Float)?;
    let tc_dir = args.transcoders.clone().unwrap_or_else(|| dir.join("transcoders"));
    let transcoders = load_transcoder_set(&tc_dir, device)?;
    let mut cfg = GraphAnalysisConfig {
        node_threshold: args.node_threshold,
        edge_threshold: args.edge_threshold,
        qk: args.qk.clone(),
        qk_top_heads: args.qk_heads,
        subgraph: Subgraph { pinned: args.pin.clone(), supernodes: args.supernode.clone() },
        interventions: args.check,
        intervene: args.intervene.clone(),
        strengths: args.strengths.clone(),
        ..GraphAnalysisConfig::default()
    };
    cfg.graph.batch_size = args.batch;
    cfg.graph.keep_position_0 = args.keep_position_0;
    cfg.graph.max_feature_nodes = args.max_features;
    if let Some(gb) = args.max_memory {
        cfg.graph.budget = MemoryBudget::for_peak((gb * 1e9) as u64, &model)?;
    }
    let contexts = match interp::transcoders::pipeline::held_out_contexts(&model, &args.data, args.contexts, 128) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("no feature files: {why:#}");
            None
        }
    };
    let name = args.slug.clone().unwrap_or_else(|| graph_slug(&dir, &args.prompt));
    let found = graph_analysis(&model, &transcoders, &tc_dir, &args.prompt, &name, contexts.as_ref(), &cfg)?;
    let (g, p) = (&found.graph, &found.pruned);
    let features = match g.features_left_out {
        0 => format!("{} active features", g.n_features()),
        n => format!("{} of {} active features (--max-features)", g.n_features(), g.n_features() + n),
    };
    let completeness = match g.features_left_out {
        0 => format!("completeness error {:.1e}", g.completeness_error()?),
        _ => format!("edges + bias fall short of the values by up to {:.1e} (the features left out)", g.completeness_error()?),
    };
    println!("{} tokens, {features}, {} nodes in all; graph in {:.2} s; {completeness}", found.tokens.len(), g.nodes.len(), found.seconds);
    println!("logit targets: {}", found.logit_targets().join(", "));
    let (replacement, completeness) = g.replacement_and_completeness()?;
    println!("replacement score {replacement:.3}, completeness score {completeness:.3} (circuit-tracer's compute_graph_scores)");
    println!("pruned to {} nodes and {} edges (thresholds {} / {})", p.n_nodes(), p.n_edges(), p.node_threshold, p.edge_threshold);
    for (qk, weight) in &found.qk {
        let top: Vec<String> =
            qk.top_pairs(3)?.into_iter().map(|(q, k, v)| format!("{} x {} {v:+.3}", source_name(q, "query"), source_name(k, "key"))).collect();
        println!(
            "QK L{}H{} {} -> {} (attention {weight:.2}): score {:.3} = top pairs {}, ...",
            qk.layer,
            qk.head,
            qk.query_pos,
            qk.key_pos,
            qk.score,
            top.join(", ")
        );
    }
    if let Some(check) = &found.interventions {
        let corr: Vec<String> = Freeze::ALL.iter().map(|&f| check.describe(f)).collect();
        println!("{} interventions, the graph's prediction against the change measured: correlation {}", check.interventions.len(), corr.join(", "));
    }
    found.write(out)?;
    println!("wrote {} and {}", out.dir.join(format!("{name}.json")).display(), out.dir.join("graph.html").display());
    Ok(())
}

#[derive(clap::Args)]
pub struct QkArgs {
    /// Checkpoint directory or GGUF file (default: models/shakespeare-gpt2).
    pub model_dir: Option<PathBuf>,
    /// Prompt (BOS prepended when the model has one).
    #[arg(long)]
    pub prompt: String,
    /// The score to explain, LAYER.HEAD:QUERY:KEY; positions count from 0, or from the end when
    /// negative (23.0:-1:4 is head 0 of layer 23 from the last position to position 4).
    #[arg(long, value_parser = parse_qk, allow_hyphen_values = true)]
    pub qk: (usize, i64, i64, i64),
    /// Transcoders that split every MLP into features and an error (any layout `interp graph`
    /// reads); without them each MLP is one source.
    #[arg(long)]
    pub transcoders: Option<PathBuf>,
    /// Pairs printed.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `interp qk`: one attention score split into pairs of sources.
pub fn run_qk(args: &QkArgs, out: &mut Output) -> Result<()> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(super::DEFAULT_MODEL));
    let device = args.device.get();
    let model = HookedTransformer::from_pretrained_dir(&dir, device, Kind::Float)?;
    let transcoders = args.transcoders.as_ref().map(|d| load_transcoder_set(d, device)).transpose()?;
    let tok = model.require_tokenizer("to encode the prompt")?;
    let tokens = tok.encode(&args.prompt, tok.bos_token_id().is_some())?;
    let (layer, head, query, key) = args.qk;
    let qk = qk_attribution(&model, transcoders.as_ref(), &tokens, layer, head, query, key)?;
    let (query, key) = (qk.query_pos, qk.key_pos);
    let text = |p: i64| visible_token(&tok.decode(&[tokens[p as usize]]).unwrap_or_default());
    println!(
        "L{layer}H{head} from {:?} ({query}) to {:?} ({key}): score {:.4}, split into {} x {} pairs (sum off by {:.1e})",
        text(query),
        text(key),
        qk.score,
        qk.query.len() + 1,
        qk.key.len() + 1,
        qk.completeness_error()?
    );
    let name = source_name;
    let mut table = Table::new(&["query_source", "key_source", "contribution", "share"]);
    let pairs = qk.top_pairs(usize::MAX)?;
    for (i, (q, k, v)) in pairs.iter().enumerate() {
        if i < args.top {
            println!("  {:<28} x {:<28} {v:+.4} ({:+.0}%)", name(*q, "query"), name(*k, "key"), 100.0 * v / qk.score);
        }
        table.push(vec![Value::Text(name(*q, "query")), Value::Text(name(*k, "key")), Value::Float(*v), Value::Float(v / qk.score)]);
    }
    // Each side's sources by their total part of the score.
    let mut by_side = Vec::new();
    for (by_key, side, sources) in [(false, "query", &qk.query), (true, "key", &qk.key)] {
        let totals = qk.marginals(by_key)?;
        let mut order: Vec<usize> = (0..totals.len()).collect();
        order.sort_by(|&a, &b| totals[b].abs().total_cmp(&totals[a].abs()));
        let shown: Vec<String> = order.iter().take(args.top.min(6)).map(|&i| format!("{} {:+.3}", name(sources.get(i), side), totals[i])).collect();
        println!("  by {side} source: {}", shown.join(", "));
        let mut t = Table::new(&[&format!("{side}_source"), "part", "share"]);
        for &i in &order {
            t.push(vec![Value::Text(name(sources.get(i), side)), Value::Float(totals[i]), Value::Float(totals[i] / qk.score)]);
        }
        by_side.push((side, t));
    }
    out.report.section(&format!("L{layer}H{head}: {:?} ({query}) -> {:?} ({key})", text(query), text(key)));
    out.report
        .paragraph(&format!("Score {:.4} on the prompt {:?}, split exactly into pairs of (query source, key source); largest first.", qk.score, args.prompt));
    for (side, t) in &by_side {
        out.table(&format!("qk_{side}_sources"), &format!("each {side} source's part of the score (its pairs summed), largest first"), t)?;
    }
    out.table("qk_pairs", "every pair, largest first", &table)?;
    let summary = serde_json::json!({
        "layer": layer, "head": head, "query_pos": query, "key_pos": key, "score": qk.score, "completeness_error": qk.completeness_error()?,
        "top_pairs": pairs.iter().take(args.top).map(|(q, k, v)| serde_json::json!({ "query": name(*q, "query"), "key": name(*k, "key"), "contribution": v })).collect::<Vec<_>>(),
    });
    Ok(out.json("qk.json", "the score and its top pairs", &summary)?)
}

/// `--qk LAYER.HEAD:QUERY:KEY`; negative positions count from the end of the prompt.
fn parse_qk(text: &str) -> std::result::Result<(usize, i64, i64, i64), String> {
    let bad = || format!("`{text}`: write LAYER.HEAD:QUERY:KEY, e.g. 1.3:19:10 or 23.0:-1:4 (negative positions count from the end)");
    let parts: Vec<&str> = text.split(':').collect();
    let [head, query, key] = parts[..] else { return Err(bad()) };
    let (layer, head) = head.split_once('.').ok_or_else(bad)?;
    let int = |s: &str| s.trim().parse::<i64>().map_err(|_| bad());
    let (layer, head) = (int(layer)?, int(head)?);
    if layer < 0 || head < 0 {
        return Err(bad());
    }
    Ok((layer as usize, head, int(query)?, int(key)?))
}

/// `--supernode LABEL=ID,ID,...`.
fn parse_supernode(text: &str) -> std::result::Result<(String, Vec<String>), String> {
    let (label, ids) = text.split_once('=').ok_or_else(|| format!("`{text}`: write LABEL=ID,ID,..., e.g. capital=3_1204_5,4_88_5"))?;
    let ids: Vec<String> = ids.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    if label.trim().is_empty() || ids.is_empty() {
        return Err(format!("`{text}`: a supernode needs a label and at least one node id"));
    }
    Ok((label.trim().to_string(), ids))
}
