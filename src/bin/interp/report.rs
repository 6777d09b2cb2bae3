//! `interp report`: the main job. For each model, whatever applies to it: summary and logit lens;
//! SAE and transcoder dashboards; a transcoder attribution graph; causal tracing on the facts task;
//! ACDC / EAP-IG circuits of IOI and greater-than; bilinear-MLP spectra; a mixture of experts'
//! routing. One HTML page, with the
//! tables (parquet + CSV), charts (SVG + PNG) and graphs (JSON) in one folder per model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use interp::circuits::bilinear::BilinearLayer;
use interp::circuits::TaskPrompts;
use interp::interp_core::tasks::{Task, TaskVocab, ALL_TASKS};
use interp::interp_core::{tch, CacheSpec, HookedTransformer};
use interp::report::analysis::{
    bilinear_spectra, causal_tracing, circuit_discovery, graph_analysis, read_training_curve, routing_analysis, task_trace_prompts, training_curve_chart,
    BilinearSpectraConfig, CausalTracingConfig, CircuitDiscoveryConfig, GraphAnalysisConfig, RoutingConfig,
};
use interp::report::{dashboards_html, heatmaps, Heatmap, Output, Report, Table, Value};
use interp::transcoders::runner::TRAIN_LOG;
use interp::transcoders::{evaluate, latent_dashboards, load_transcoder_set, readable_latents};
use tch::{Device, Kind, Tensor};

use super::circuit::{self, TaskName};
use super::features;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Checkpoint directories (default: models/shakespeare-gpt2, models/tasks-bilinear and
    /// models/tasks-moe).
    pub models: Vec<PathBuf>,
    /// Output folder: report.html, and a subfolder of tables, charts and JSON per model.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// Prompt for the logit lens and the attribution graph of text models.
    #[arg(long, default_value = super::DEFAULT_PROMPT)]
    pub prompt: String,
    /// Prompts per task for causal tracing and circuit discovery.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// A JSONL prompt file (see `interp eap --help`): every model it fits also gets EAP, EAP-IG,
    /// MIB scores and ACDC on these pairs.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Latents per dictionary shown as dashboards (readable ones: firing on about 0.3% of tokens).
    #[arg(long, default_value_t = 3)]
    pub latents: usize,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        vec![PathBuf::from(super::DEFAULT_MODEL), PathBuf::from(circuit::TASK_MODEL), PathBuf::from(circuit::MOE_TASK_MODEL)]
    } else {
        args.models.clone()
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut report = Report::new("interp report");
    let started = std::time::Instant::now();
    for dir in &models {
        let slug = dir.canonicalize().unwrap_or_else(|_| dir.clone()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        println!("== {} -> {}/{slug}", dir.display(), args.out.display());
        report.append(model_report(dir, &slug, args)?);
    }
    let path = args.out.join("report.html");
    report.write(&path)?;
    println!("wrote {} ({:.0} s)", path.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Everything that applies to one model; a part that does not apply says why.
fn model_report(dir: &Path, slug: &str, args: &ReportArgs) -> Result<Report> {
    let device = args.device.get();
    let model = HookedTransformer::from_pretrained_dir(dir, device, Kind::Float)?;
    let mut out = Output::nested(&args.out, slug, slug)?;
    let vocab = TaskVocab::of_model(&model).ok();
    let task_model = vocab.is_some();
    let tokens = match &vocab {
        Some(vocab) => TaskPrompts::new(Task::Ioi, vocab, 1, 0)?.clean.get(0),
        None => model.to_tokens(&args.prompt, true)?.get(0),
    };
    summary(&model, dir, slug, &tokens, &mut out)?;
    if let Some(vocab) = &vocab {
        task_scores(&model, vocab, &mut out)?;
        if model.cfg.moe.is_some() {
            routing_analysis(&model, vocab, &RoutingConfig::default())?.write(&mut out)?;
        }
    }
    dictionaries(&model, dir, args.latents, &mut out)?;
    let tc_dir = dir.join("transcoders");
    if !task_model && tc_dir.is_dir() {
        match load_transcoder_set(&tc_dir, device) {
            Ok(transcoders) => {
                let contexts = super::sae::held_out_contexts(&model, "shakespeare", 32, 128).ok();
                let name = features::graph_slug(dir, &args.prompt);
                graph_analysis(&model, &transcoders, &tc_dir, &args.prompt, &name, contexts.as_ref(), &GraphAnalysisConfig::default())?.write(&mut out)?;
            }
            Err(why) => {
                out.report.section("Transcoder attribution graph");
                out.report.paragraph(&format!("Skipped: {why}"));
            }
        }
    }
    if let Some(vocab) = &vocab {
        let word = |t: i64| vocab.word(t).to_string();
        let facts = TaskPrompts::new(Task::Facts, vocab, args.n, 0)?;
        let tracing = CausalTracingConfig { charts: 2, ..CausalTracingConfig::default() };
        causal_tracing(&model, &task_trace_prompts(Task::Facts, &facts)?, Task::Facts.name(), &word, &tracing)?.write(&mut out)?;
        for task in [TaskName::Ioi, TaskName::GreaterThan] {
            // The folder is the task's --task name (ioi, greater-than).
            let name = task.to_possible_value().map(|v| v.get_name().to_string()).context("task name")?;
            let mut part = Output::nested(&args.out, &format!("{slug}/{name}"), "")?;
            let prompts = TaskPrompts::new(task.task(), vocab, args.n, 0)?;
            circuit_discovery(&model, &prompts, task.task().name(), &CircuitDiscoveryConfig::default())?.write(&mut part)?;
            out.report.append(part.report);
        }
    } else if args.prompts.is_none() {
        out.report.section("Circuits on the built-in tasks");
        out.report.paragraph("Skipped: this model does not use the built-in tasks' vocabulary (causal tracing on facts, IOI and greater-than circuits need a model trained on them, like models/tasks-bilinear).");
    }
    if let Some(path) = &args.prompts {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "prompts".into());
        match TaskPrompts::from_jsonl(path, &model) {
            Ok(prompts) => {
                let mut part = Output::nested(&args.out, &format!("{slug}/{name}"), "")?;
                let cfg = CircuitDiscoveryConfig { tau_sweep: false, ..CircuitDiscoveryConfig::default() };
                circuit_discovery(&model, &prompts, &name, &cfg)?.write(&mut part)?;
                out.report.append(part.report);
            }
            Err(why) => {
                out.report.section(&format!("Circuits: {name}"));
                out.report.paragraph(&format!("Skipped: {why}"));
            }
        }
    }
    // A model without layers fails here too, and gets the note.
    let layer = model.cfg.n_layers.saturating_sub(1);
    match BilinearLayer::from_model(&model, layer) {
        Err(why) => {
            out.report.section("Bilinear MLP spectra");
            out.report.paragraph(&format!("Skipped: {why}"));
        }
        Ok(bl) => {
            let mut cfg = BilinearSpectraConfig { truncation: task_model, ..BilinearSpectraConfig::default() };
            if !task_model {
                cfg.directions = top_tokens(&model, &tokens)?;
            }
            let spectra = bilinear_spectra(&model, layer, &bl, &cfg)?;
            features::print_spectra(&spectra);
            spectra.write(&mut out)?;
        }
    }
    Ok(out.report)
}

/// The final prediction's top two tokens, as the bilinear directions of a text model.
fn top_tokens(model: &HookedTransformer, tokens: &Tensor) -> Result<Vec<String>> {
    let logits = model.forward(&tokens.unsqueeze(0))?.select(1, -1).select(0, 0);
    let (_, top) = logits.topk(2, 0, true, true);
    let tok = model.tokenizer().context("the model has no tokenizer.json")?;
    Ok(tok.to_str_tokens(&Vec::<i64>::try_from(&top)?)?.into_iter().map(|t| t.trim().to_string()).collect())
}

/// Model card and logit lens of `tokens` [pos]: a table of every residual component's top
/// prediction at every position, and a heatmap of the probability it gives the next token.
fn summary(model: &HookedTransformer, dir: &Path, slug: &str, tokens: &Tensor, out: &mut Output) -> Result<()> {
    let c = &model.cfg;
    out.report.section(&format!("{slug}: model and logit lens"));
    let mut card = Table::new(&["property", "value"]);
    for (k, v) in [
        ("directory", dir.display().to_string()),
        ("model_type", format!("{} ({:?})", c.model_type, c.family)),
        ("layers", c.n_layers.to_string()),
        ("d_model", c.d_model.to_string()),
        ("heads", format!("{} (kv heads {}), d_head {}", c.n_heads, c.n_kv_heads, c.d_head)),
        (
            "mlp",
            match (&c.moe, c.attn_only) {
                (_, true) => "none (attention-only)".into(),
                (Some(m), _) => format!("{} of {} experts x {} units per token ({:?}, gated)", m.top_k, m.n_experts, m.d_expert, c.act),
                (None, _) => format!("d_mlp {} ({:?}{})", c.d_mlp, c.act, if c.gated_mlp { ", gated" } else { "" }),
            },
        ),
        ("vocabulary", c.d_vocab.to_string()),
        ("context", c.n_ctx.to_string()),
        ("norm", format!("{:?}", c.norm)),
        ("positions", format!("{:?}", c.positional)),
        ("parameters", model.n_params().to_string()),
        ("hook points", model.hook_points(true).len().to_string()),
    ] {
        card.push(vec![k.into(), v.into()]);
    }
    out.table("model", "model card", &card)?;
    let batch = tokens.unsqueeze(0);
    let words = model.to_str_tokens(&batch)?;
    out.report.paragraph(&format!("Logit lens on the prompt: {}", words.join("")));
    // Parallel blocks (GPT-NeoX) have no resid_mid.
    let incl_mid = model.hook_point("blocks.0.hook_resid_mid").is_ok();
    let mut names = vec!["blocks.*.hook_resid_pre", "blocks.*.hook_resid_post"];
    if incl_mid {
        names.push("blocks.*.hook_resid_mid");
    }
    let (_, cache) = model.run_with_cache(&batch, CacheSpec::names(names))?;
    let lens = cache.accumulated_resid(None, incl_mid, false)?;
    let probs = model.logit_lens(&lens.components)?.select(1, 0).softmax(-1, Kind::Float).to_device(Device::Cpu); // [n, pos, vocab]
    let ids = Vec::<i64>::try_from(&tokens.to_device(Device::Cpu))?;
    let (n, pos) = (probs.size()[0], probs.size()[1]);
    let mut table = Table::new(&["component", "pos", "token", "next_token", "top_token", "p_top", "p_next"]);
    let mut grid = vec![vec![0.0; pos as usize - 1]; n as usize];
    let (top_p, top_id) = probs.max_dim(-1, false);
    for (i, label) in lens.labels.iter().enumerate() {
        for p in 0..pos as usize {
            let next = ids.get(p + 1).copied();
            let p_next = next.map(|t| probs.double_value(&[i as i64, p as i64, t])).unwrap_or(f64::NAN);
            if p + 1 < pos as usize {
                grid[i][p] = p_next;
            }
            let top = top_id.int64_value(&[i as i64, p as i64]);
            table.push(vec![
                label.as_str().into(),
                p.into(),
                words[p].as_str().into(),
                next.map(|t| model.to_string(&Tensor::from_slice(&[t]))).transpose()?.unwrap_or_default().into(),
                model.to_string(&Tensor::from_slice(&[top]))?.into(),
                top_p.double_value(&[i as i64, p as i64]).into(),
                Value::Float(p_next),
            ]);
        }
    }
    let panel = Heatmap {
        title: "logit lens: probability of the next token".into(),
        rows: (0..pos as usize - 1).map(|p| format!("{:?} > {:?}", words[p], words[p + 1])).collect(),
        cols: lens.labels.clone(),
        values: transpose(&grid),
        x_label: "residual stream after".into(),
        y_label: "token > next".into(),
    };
    out.chart("logit_lens", "logit lens: the probability each residual stream (through the final norm and unembedding) gives the actual next token", |p| {
        heatmaps(p, std::slice::from_ref(&panel))
    })?;
    // Show the last position first in the report: that is the prediction the prompt asks for.
    table.rows.sort_by_key(|r| std::cmp::Reverse(if let Value::Int(p) = r[1] { p } else { 0 }));
    Ok(out.table("logit_lens", "logit lens, last position first", &table)?)
}

fn transpose(grid: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let cols = grid.first().map_or(0, |r| r.len());
    (0..cols).map(|j| grid.iter().map(|r| r[j]).collect()).collect()
}

/// Each built-in task's score on fresh prompts.
fn task_scores(model: &HookedTransformer, vocab: &TaskVocab, out: &mut Output) -> Result<()> {
    let mut table = Table::new(&["task", "prompts", "score"]);
    for task in ALL_TASKS {
        let batch = task.generate(vocab, 256, 999_983)?;
        let score = task.score(vocab, &batch, &model.forward(&batch.clean.to_device(model.device()))?)?;
        table.push(vec![task.name().into(), 256usize.into(), score.into()]);
    }
    out.report.paragraph("Scores on 256 fresh prompts per task (accuracy; greater-than: P(> YY) - P(<= YY)).");
    Ok(out.table("task_scores", "task scores", &table)?)
}

/// Metrics and dashboards of every SAELens folder under MODEL/saes and MODEL/transcoders.
fn dictionaries(model: &HookedTransformer, dir: &Path, n_latents: usize, out: &mut Output) -> Result<()> {
    let mut folders: Vec<PathBuf> = ["saes", "transcoders"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.join("cfg.json").is_file())
        .collect();
    folders.sort();
    out.report.section("Sparse dictionaries: SAEs and transcoders");
    if folders.is_empty() {
        out.report.paragraph(&format!("Skipped: no SAELens folders under {0}/saes or {0}/transcoders.", dir.display()));
        return Ok(());
    }
    let contexts = match super::sae::held_out_contexts(model, "shakespeare", 32, 128) {
        Ok(c) => c,
        Err(e) => {
            out.report.paragraph(&format!("Skipped: no held-out text to evaluate on ({e:#}); run scripts/setup.sh."));
            return Ok(());
        }
    };
    let mut table = Table::new(&["dictionary", "hook_in", "hook_out", "architecture", "d_sae", "l0", "fvu", "ce_loss_recovered", "dead_fraction"]);
    let mut boards = Vec::new();
    let mut curves = Vec::new();
    for folder in &folders {
        let dict = super::sae::load_dictionary(model, folder)?;
        let metrics = evaluate(&dict, model, &contexts, 8)?;
        let ce_loss_recovered = metrics.downstream.as_ref().map_or(f64::NAN, |d| d.ce_loss_recovered);
        let name = folder.strip_prefix(dir).unwrap_or(folder).display().to_string();
        table.push(vec![
            name.as_str().into(),
            dict.cfg().hook_name.as_str().into(),
            dict.cfg().hook_name_out.as_str().into(),
            dict.cfg().describe().into(),
            (dict.cfg().d_sae as usize).into(),
            metrics.l0.into(),
            metrics.fvu.into(),
            ce_loss_recovered.into(),
            metrics.dead_fraction.into(),
        ]);
        if folder.join(TRAIN_LOG).exists() {
            curves.push((name.clone(), read_training_curve(&folder.join(TRAIN_LOG))?));
        }
        let latents = readable_latents(&metrics.log10_density, n_latents)?;
        let dashboards = latent_dashboards(&dict, model, &contexts, &latents, 5)?;
        boards.push((format!("{name} ({} -> {})", dict.cfg().hook_name, dict.cfg().hook_name_out), dashboards_html(&dashboards)));
        println!("{name}: L0 {:.1}, FVU {:.3}, CE loss recovered {:.3}", metrics.l0, metrics.fvu, ce_loss_recovered);
    }
    out.report.paragraph(&format!("Evaluated on {} held-out Shakespeare contexts of 128 tokens; dashboards of {n_latents} latents of each that fire on about 0.3% of tokens (sparse enough to mean something, frequent enough to have examples).", contexts.size()[0]));
    out.table("dictionaries", "dictionary metrics", &table)?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        out.report.subsection(&format!("Training curve of {name}"));
        training_curve_chart(out, &format!("training_curve_{i}"), curve)?;
    }
    for (title, html) in &boards {
        out.report.subsection(title);
        out.report.html(html);
    }
    Ok(())
}
