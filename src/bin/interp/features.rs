//! `interp bilinear | graph`: weight-based analysis of bilinear MLPs and transcoder attribution
//! graphs, writing CSV tables, charts (SVG + PNG), circuit-tracer JSON and an HTML view.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use interp::circuits::attribution_graph::{attribution_graph, write_graph_page, GraphConfig, Node};
use interp::circuits::bilinear::{token_readout, truncation_accuracy, unembedding_direction, BilinearLayer, Spectrum};
use interp::circuits::{line_chart, Series, Table, Value};
use interp::interp_core::tasks::{Task, TaskVocab};
use interp::interp_core::{tch, HookedTransformer};
use interp::transcoders::{load_transcoder_set, SparseDictionary};
use tch::{Kind, Tensor};

use interp::circuits::Output;

#[derive(clap::Args)]
pub struct BilinearArgs {
    /// Checkpoint of a model with bilinear MLPs (default: models/tasks-bilinear).
    pub model_dir: Option<PathBuf>,
    /// MLP layer to decompose (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Output tokens whose unembedding directions are decomposed, comma separated; `a-b` for the
    /// difference of two tokens' directions.
    #[arg(long, value_delimiter = ',', default_value = "m0,m1,m2,m7-m8")]
    pub tokens: Vec<String>,
    /// Eigenvectors per direction to read out as tokens.
    #[arg(long, default_value_t = 4)]
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

fn token_words(model: &HookedTransformer, ids: &[i64]) -> Result<Vec<String>> {
    match model.tokenizer() {
        Some(t) => Ok(t.to_str_tokens(ids)?),
        None => Ok(ids.iter().map(|i| i.to_string()).collect()),
    }
}

fn token_id(model: &HookedTransformer, word: &str) -> Result<i64> {
    let tok = model.tokenizer().context("the model has no tokenizer.json to look tokens up in")?;
    let ids = tok.encode(word, false)?;
    match ids.as_slice() {
        // An unknown word can encode to the unknown-token id: check the round trip.
        [id] if tok.to_str_tokens(&[*id])?.first().map(|t| t.trim()) == Some(word.trim()) => Ok(*id),
        [_] => bail!("`{word}` is not in the model's vocabulary"),
        _ => bail!("`{word}` is {} tokens, not one", ids.len()),
    }
}

/// `interp bilinear`: spectra, eigenvector token readouts and truncation curves.
pub fn run_bilinear(args: &BilinearArgs, out: &mut Output) -> Result<()> {
    let dir = args.model_dir.clone().unwrap_or_else(|| PathBuf::from(super::circuit::TASK_MODEL));
    let model = HookedTransformer::from_pretrained_dir(&dir, args.device.get(), Kind::Float)?;
    let layer = args.layer.unwrap_or(model.cfg.n_layers.saturating_sub(1));
    analyse_bilinear(&model, layer, &BilinearLayer::from_model(&model, layer)?, args, out)
}

/// The analysis of `interp bilinear` on `bl`, the MLP of `model`'s block `layer` (`args` gives the
/// directions, the readout size and whether to run the task).
pub fn analyse_bilinear(model: &HookedTransformer, layer: usize, bl: &BilinearLayer, args: &BilinearArgs, out: &mut Output) -> Result<()> {
    let mut dirs = Vec::new();
    for spec in &args.tokens {
        let u = match spec.split_once('-').filter(|(a, b)| !a.is_empty() && !b.is_empty()) {
            Some((a, b)) => unembedding_direction(model, token_id(model, a)?)?.f_sub(&unembedding_direction(model, token_id(model, b)?)?)?,
            None => unembedding_direction(model, token_id(model, spec)?)?,
        };
        dirs.push(u);
    }
    if dirs.is_empty() {
        bail!("--tokens names no output direction");
    }
    let spectra = Spectrum::of_batch(&bl.interaction_matrices(&Tensor::f_stack(&dirs, 0)?)?)?;
    let mut table = Table::new(&["direction", "rank", "eigenvalue", "favoured_tokens", "disfavoured_tokens"]);
    let mut series = Vec::new();
    let intro = format!("layer {layer} MLP ({} hidden units), input blocks.{layer}.ln2.hook_normalized; {} directions", bl.d_hidden(), dirs.len());
    println!("{intro}");
    out.report.section(&format!("Bilinear MLP spectra: layer {layer}"));
    out.report.paragraph(&format!(
        "{intro}. For each output direction u (a token's unembedding, or a difference of two), the MLP's contribution u . y is the \
         quadratic form x^T Q(u) x; its eigenvectors, ordered by |eigenvalue|, read out through the embedding as the tokens they favour and disfavour."
    ));
    for (i, name) in args.tokens.iter().enumerate() {
        let spec = spectra.get(i as i64)?;
        let values = spec.eigenvalues()?;
        series.push(Series { name: name.clone(), points: values.iter().take(32).enumerate().map(|(r, v)| (r as f64 + 1.0, *v)).collect() });
        let total: f64 = values.iter().map(|v| v * v).sum();
        let top2: f64 = values.iter().take(2).map(|v| v * v).sum();
        println!(
            "  {name:>8}: effective rank {:.1}, top eigenvalues {:+.3} {:+.3}, top 2 hold {:.0}% of ||Q||_F^2",
            spec.effective_rank()?,
            values[0],
            values.get(1).copied().unwrap_or(0.0),
            100.0 * top2 / total.max(1e-30)
        );
        for rank in 0..args.top.min(spec.len()) {
            let v = spec.vectors.f_select(1, rank)?;
            let scores = token_readout(model, &v)?;
            let (_, hi) = scores.f_topk(5, 0, true, true)?;
            let (_, lo) = scores.f_topk(5, 0, false, true)?;
            let hi = token_words(model, &Vec::<i64>::try_from(&hi)?)?.join(" ");
            let lo = token_words(model, &Vec::<i64>::try_from(&lo)?)?.join(" ");
            if rank < 2 {
                println!("      v{rank} ({:+.3}): + {hi} | - {lo}", values[rank as usize]);
            }
            table.push(vec![Value::Text(name.clone()), Value::Int(rank), Value::Float(values[rank as usize]), Value::Text(hi), Value::Text(lo)]);
        }
    }
    let title = format!("Eigenvalues of Q(u), layer {layer}");
    out.chart("spectra", "top 32 eigenvalues of each direction's interaction matrix", |p| line_chart(p, &title, "rank by |eigenvalue|", "eigenvalue", &series))?;
    out.table("eigenvectors", "top eigenvectors as tokens (direct path through W_E)", &table)?;
    if !args.no_task {
        let vocab = TaskVocab::of_model(model).context("the modular-addition curve needs a model trained on the built-in tasks (pass --no-task)")?;
        let batch = Task::ModularAddition.generate(&vocab, 256, 0)?;
        let candidates: Vec<i64> = (0..vocab.modulus).map(|i| vocab.id(&format!("m{i}"))).collect::<std::result::Result<_, _>>()?;
        let ks: Vec<i64> = [0, 1, 2, 4, 8, 16, 32, 64, bl.d_in()].into_iter().filter(|k| *k <= bl.d_in()).collect();
        let curve = truncation_accuracy(model, layer, &batch.clean, &candidates, &batch.answer, &ks)?;
        let mut t = Table::new(&["k", "accuracy"]);
        for (k, acc) in &curve {
            t.push(vec![Value::Int(*k), Value::Float(*acc)]);
        }
        let points = curve.iter().map(|(k, a)| ((*k as f64 + 1.0).log2(), *a)).collect();
        let series = [Series { name: "accuracy".into(), points }];
        let caption = "modular-addition accuracy (256 prompts) with each answer logit's MLP term truncated to its top k eigenpairs";
        out.chart("truncation", caption, |p| line_chart(p, "Modular addition with the MLP's logit terms truncated", "log2(k + 1) eigenpairs per answer", "accuracy", &series))?;
        out.table("truncation", "truncation curve", &t)?;
        let shown: Vec<String> = curve.iter().map(|(k, a)| format!("k={k}: {a:.3}")).collect();
        println!("modular addition (256 prompts), accuracy with k eigenpairs per answer logit: {}", shown.join(", "));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct GraphArgs {
    /// Checkpoint directory (default: models/shakespeare-gpt2).
    pub model_dir: Option<PathBuf>,
    /// Transcoders, one per layer: a circuit-tracer folder (config.yaml) or a folder of SAELens
    /// transcoder folders (default: MODEL/transcoders).
    #[arg(long)]
    pub transcoders: Option<PathBuf>,
    /// Prompt (BOS prepended).
    #[arg(long, default_value = "ROMEO. But soft, what light through yonder window breaks? It is the")]
    pub prompt: String,
    /// Keep the nodes carrying this fraction of the influence on the logits.
    #[arg(long, default_value_t = 0.8)]
    pub node_threshold: f64,
    /// Then keep the edges carrying this fraction.
    #[arg(long, default_value_t = 0.98)]
    pub edge_threshold: f64,
    /// Targets per backward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
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
    analyse_graph(&model, &dir, &tc_dir, &load_transcoder_set(&tc_dir, device)?, args, out)
}

/// The analysis of `interp graph` for `model` (loaded from `dir`) with `transcoders` (loaded from
/// `tc_dir`); `args` gives the prompt, thresholds and batch size.
pub fn analyse_graph(model: &HookedTransformer, dir: &Path, tc_dir: &Path, transcoders: &[SparseDictionary], args: &GraphArgs, out: &mut Output) -> Result<()> {
    let tok = model.tokenizer().context("the model has no tokenizer.json to encode the prompt")?;
    let tokens = tok.encode(&args.prompt, true)?;
    let start = std::time::Instant::now();
    let graph = attribution_graph(model, transcoders, &tokens, &GraphConfig { batch_size: args.batch, progress: true, ..GraphConfig::default() })?;
    let elapsed = start.elapsed().as_secs_f64();
    let pruned = graph.prune(args.node_threshold, args.edge_threshold)?;
    let text = |t: i64| tok.decode(&[t]).unwrap_or_default();
    let slug = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "graph".into());
    let json = graph.to_circuit_tracer_json(&pruned, &slug, &slug, &text)?;
    out.report.section("Transcoder attribution graph");
    out.report.paragraph(&format!(
        "Prompt {:?} through the transcoders in {}: direct effects between active features, transcoder errors, token embeddings and the top \
         logits in the replacement model with attention patterns and norm scales frozen; pruned to {} of the influence on the logits (nodes) and {} (edges).",
        args.prompt,
        tc_dir.display(),
        args.node_threshold,
        args.edge_threshold
    ));
    let view = graph.html_view(&pruned, &text)?;
    out.report.html(&view);
    out.json("graph.json", "the graph in circuit-tracer's layout", &json)?;
    let html_path = out.dir.join("graph.html");
    write_graph_page(&html_path, &format!("Attribution graph: {}", args.prompt), &view)?;
    let mut table = Table::new(&["node", "kind", "layer", "pos", "feature", "activation", "influence", "kept"]);
    for (i, node) in graph.nodes.iter().enumerate() {
        let (kind, layer, pos, feature, act) = match *node {
            Node::Feature { layer, pos, feature, activation } => ("feature", layer as i64, pos, feature, activation),
            Node::Error { layer, pos } => ("error", layer as i64, pos, -1, f64::NAN),
            Node::Token { pos, token } => ("token", -1, pos, token, f64::NAN),
            Node::Logit { token, probability } => ("logit", model.cfg.n_layers as i64, tokens.len() as i64 - 1, token, probability),
        };
        table.push(vec![
            Value::Int(i as i64),
            Value::Text(kind.into()),
            Value::Int(layer),
            Value::Int(pos),
            Value::Int(feature),
            Value::Float(act),
            Value::Float(pruned.influence[i]),
            Value::Int(pruned.node_mask[i] as i64),
        ]);
    }
    table.rows.sort_by(|x, y| match (&x[6], &y[6]) {
        (Value::Float(a), Value::Float(b)) => b.total_cmp(a),
        _ => std::cmp::Ordering::Equal,
    });
    out.table("nodes", "nodes by influence on the logits", &table)?;
    let logits: Vec<String> = graph
        .nodes
        .iter()
        .filter_map(|n| if let Node::Logit { token, probability } = n { Some(format!("{:?} {probability:.3}", text(*token))) } else { None })
        .collect();
    println!(
        "{} tokens, {} active features, {} nodes in all; graph in {elapsed:.2} s; completeness error {:.1e}",
        tokens.len(),
        graph.n_features(),
        graph.nodes.len(),
        graph.completeness_error()?
    );
    println!("logit targets: {}", logits.join(", "));
    println!("pruned to {} nodes and {} edges (thresholds {} / {})", pruned.n_nodes(), pruned.n_edges()?, args.node_threshold, args.edge_threshold);
    println!("wrote {}", html_path.display());
    Ok(())
}
