//! `interp bilinear | graph`: weight-based analysis of bilinear MLPs and transcoder attribution
//! graphs. The analyses are `report::analysis`; this file maps flags onto their configs and
//! prints a summary.

use std::path::PathBuf;

use anyhow::Result;
use interp::circuits::bilinear::BilinearLayer;
use interp::circuits::MemoryBudget;
use interp::interp_core::{tch, HookedTransformer};
use interp::report::analysis::{bilinear_spectra, graph_analysis, graph_slug, BilinearSpectraConfig, GraphAnalysisConfig};
use interp::report::Output;
use interp::transcoders::load_transcoder_set;
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
    /// Peak memory allowed, in GB (the model's weights, the transcoders, the adjacency and the
    /// backward passes); default: the weights plus 3 GB. A graph that cannot fit is an error.
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
    let mut cfg = GraphAnalysisConfig { node_threshold: args.node_threshold, edge_threshold: args.edge_threshold, ..GraphAnalysisConfig::default() };
    cfg.graph.batch_size = args.batch;
    cfg.graph.keep_position_0 = args.keep_position_0;
    cfg.graph.max_feature_nodes = args.max_features;
    if let Some(gb) = args.max_memory {
        cfg.graph.budget = MemoryBudget::for_peak((gb * 1e9) as u64, &model)?;
    }
    let contexts = match interp::transcoders::runner::held_out_contexts(&model, &args.data, args.contexts, 128) {
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
    println!("pruned to {} nodes and {} edges (thresholds {} / {})", p.n_nodes(), p.n_edges()?, p.node_threshold, p.edge_threshold);
    found.write(out)?;
    println!("wrote {} and {}", out.dir.join(format!("{name}.json")).display(), out.dir.join("graph.html").display());
    Ok(())
}
