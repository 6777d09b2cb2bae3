//! `interp report`'s main job: for each model, whatever applies to it. A model card and the logit
//! lens; each built-in task's score; SAE and transcoder metrics and dashboards; a transcoder
//! attribution graph; causal tracing on the facts task; ACDC / EAP-IG circuits of IOI and
//! greater-than (and of a prompt file); bilinear-MLP spectra; a mixture of experts' routing. One
//! HTML page, with the tables (parquet + CSV), charts (SVG + PNG) and graphs (JSON) in one folder
//! per model. A part that does not apply says why.

use std::path::{Path, PathBuf};

use circuits::bilinear::BilinearLayer;
use circuits::TaskPrompts;
use interp_core::tasks::{Task, TaskVocab, ALL_TASKS};
use interp_core::{BlockSite, CacheSpec, HookedTransformer};
use tch::{Device, Kind, Tensor};
use transcoders::pipeline::{held_out_contexts, TRAIN_LOG};
use transcoders::{evaluate, latent_dashboards, load_transcoder_set, readable_latents, SparseDictionary};

use crate::analysis::{
    bilinear_spectra, causal_tracing, circuit_discovery, graph_analysis, graph_slug, read_training_curve, routing_analysis, task_trace_prompts,
    training_curve_chart, BilinearSpectraConfig, CausalTracingConfig, CircuitDiscoveryConfig, GraphAnalysisConfig, RoutingConfig,
};
use crate::error::{Error, Result};
use crate::{dashboards_html, heatmaps, Heatmap, Output, Report, Table, Value};

/// What [`run`] reports on.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    /// Checkpoint directories.
    pub models: Vec<PathBuf>,
    /// Output folder: report.html, and a subfolder of tables, charts and JSON per model.
    pub out: PathBuf,
    /// Prompt for the logit lens and the attribution graph of text models.
    pub prompt: String,
    /// Prompts per task for causal tracing and circuit discovery.
    pub n: usize,
    /// A JSONL prompt file: every model it fits also gets EAP, EAP-IG, MIB scores and ACDC on
    /// these pairs.
    pub prompts: Option<PathBuf>,
    /// Latents per dictionary shown as dashboards.
    pub latents: usize,
    /// Where the models run.
    pub device: Device,
}

/// The report of every model of `cfg` in `cfg.out/report.html`.
pub fn run(cfg: &ReportConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    let mut report = Report::new("interp report");
    let started = std::time::Instant::now();
    for dir in &cfg.models {
        let slug = dir.canonicalize().unwrap_or_else(|_| dir.clone()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        println!("== {} -> {}/{slug}", dir.display(), cfg.out.display());
        report.append(model_report(dir, &slug, cfg)?);
    }
    let path = cfg.out.join("report.html");
    report.write(&path)?;
    println!("wrote {} ({:.0} s)", path.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Everything that applies to the model in `dir`, in `cfg.out/slug`.
pub fn model_report(dir: &Path, slug: &str, cfg: &ReportConfig) -> Result<Report> {
    let model = HookedTransformer::from_pretrained_dir(dir, cfg.device, Kind::Float)?;
    let mut out = Output::nested(&cfg.out, slug, slug)?;
    let vocab = TaskVocab::of_model(&model).ok();
    let task_model = vocab.is_some();
    let tokens = match &vocab {
        Some(vocab) => TaskPrompts::new(Task::Ioi, vocab, 1, 0)?.clean.get(0),
        None => model.to_tokens(&cfg.prompt, true)?.get(0),
    };
    out.report.section(&format!("{slug}: model and logit lens"));
    out.table("model", "model card", &model_card(&model, dir))?;
    logit_lens(&model, &tokens, &mut out)?;
    if let Some(vocab) = &vocab {
        task_scores(&model, vocab, &mut out)?;
        if model.cfg.moe.is_some() {
            routing_analysis(&model, vocab, &RoutingConfig::default())?.write(&mut out)?;
        }
    }
    dictionaries(&model, dir, cfg.latents, &mut out)?;
    let tc_dir = dir.join("transcoders");
    if !task_model && tc_dir.is_dir() {
        match load_transcoder_set(&tc_dir, cfg.device) {
            Ok(transcoders) => {
                let contexts = held_out_contexts(&model, "shakespeare", 32, 128).ok();
                let name = graph_slug(dir, &cfg.prompt);
                graph_analysis(&model, &transcoders, &tc_dir, &cfg.prompt, &name, contexts.as_ref(), &GraphAnalysisConfig::default())?.write(&mut out)?;
            }
            Err(why) => {
                out.report.section("Transcoder attribution graph");
                out.report.paragraph(&format!("Skipped: {why}"));
            }
        }
    }
    if let Some(vocab) = &vocab {
        let word = |t: i64| vocab.word(t).to_string();
        let facts = TaskPrompts::new(Task::Facts, vocab, cfg.n, 0)?;
        let tracing = CausalTracingConfig { charts: 2, ..CausalTracingConfig::default() };
        causal_tracing(&model, &task_trace_prompts(Task::Facts, &facts)?, Task::Facts.name(), &word, &tracing)?.write(&mut out)?;
        // The folders are the tasks' --task names.
        for (task, folder) in [(Task::Ioi, "ioi"), (Task::GreaterThan, "greater-than")] {
            let mut part = Output::nested(&cfg.out, &format!("{slug}/{folder}"), "")?;
            let prompts = TaskPrompts::new(task, vocab, cfg.n, 0)?;
            circuit_discovery(&model, &prompts, task.name(), &CircuitDiscoveryConfig::default())?.write(&mut part)?;
            out.report.append(part.report);
        }
    } else if cfg.prompts.is_none() {
        out.report.section("Circuits on the built-in tasks");
        out.report.paragraph("Skipped: this model does not use the built-in tasks' vocabulary (causal tracing on facts, IOI and greater-than circuits need a model trained on them, like models/tasks-bilinear).");
    }
    if let Some(path) = &cfg.prompts {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "prompts".into());
        match TaskPrompts::from_jsonl(path, &model) {
            Ok(prompts) => {
                let mut part = Output::nested(&cfg.out, &format!("{slug}/{name}"), "")?;
                let discovery = CircuitDiscoveryConfig { tau_sweep: false, ..CircuitDiscoveryConfig::default() };
                circuit_discovery(&model, &prompts, &name, &discovery)?.write(&mut part)?;
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
            let mut spectra_cfg = BilinearSpectraConfig { truncation: task_model, ..BilinearSpectraConfig::default() };
            if !task_model {
                spectra_cfg.directions = top_tokens(&model, &tokens)?;
            }
            let spectra = bilinear_spectra(&model, layer, &bl, &spectra_cfg)?;
            spectra.print();
            spectra.write(&mut out)?;
        }
    }
    Ok(out.report)
}

/// The final prediction's top two tokens, as the bilinear directions of a text model.
fn top_tokens(model: &HookedTransformer, tokens: &Tensor) -> Result<Vec<String>> {
    let logits = model.forward(&tokens.unsqueeze(0))?.select(1, -1).select(0, 0);
    let (_, top) = logits.topk(2, 0, true, true);
    let tok = model.require_tokenizer("to name the top tokens")?;
    Ok(tok.to_str_tokens(&Vec::<i64>::try_from(&top)?)?.into_iter().map(|t| t.trim().to_string()).collect())
}

/// The model card: a property per row (directory, model type, shapes, norm, positions,
/// parameters, hook points).
pub fn model_card(model: &HookedTransformer, dir: &Path) -> Table {
    let c = &model.cfg;
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
    card
}

/// The logit lens of `tokens` [batch, pos]: every residual stream (embeddings, then each block's
/// `resid_mid` where `incl_mid` and the model has it, and `resid_post`) through the final norm
/// and the unembedding, as probabilities [n_components, batch, pos, vocab] with the components'
/// labels.
pub fn lens_probabilities(model: &HookedTransformer, tokens: &Tensor, incl_mid: bool) -> Result<(Vec<String>, Tensor)> {
    // Parallel blocks (GPT-NeoX) have no resid_mid.
    let incl_mid = incl_mid && model.hook_point("blocks.0.hook_resid_mid").is_ok();
    let mut names = vec![BlockSite::ResidPre, BlockSite::ResidPost];
    if incl_mid {
        names.push(BlockSite::ResidMid);
    }
    let (_, cache) = model.run_with_cache(tokens, CacheSpec::names(names))?;
    let lens = cache.accumulated_resid(None, incl_mid, false)?;
    Ok((lens.labels, model.logit_lens(&lens.components)?.softmax(-1, Kind::Float)))
}

/// The logit lens of `tokens` [pos] in `out`: a table of every residual component's top
/// prediction at every position (last position first), and a heatmap of the probability it gives
/// the next token.
pub fn logit_lens(model: &HookedTransformer, tokens: &Tensor, out: &mut Output) -> Result<()> {
    let batch = tokens.unsqueeze(0);
    let words = model.to_str_tokens(&batch)?;
    out.report.paragraph(&format!("Logit lens on the prompt: {}", words.join("")));
    let (labels, probs) = lens_probabilities(model, &batch, true)?;
    let probs = probs.select(1, 0).to_device(Device::Cpu); // [n, pos, vocab]
    let ids = Vec::<i64>::try_from(&tokens.to_device(Device::Cpu))?;
    let (n, pos) = (probs.size()[0], probs.size()[1]);
    let mut table = Table::new(&["component", "pos", "token", "next_token", "top_token", "p_top", "p_next"]);
    let mut grid = vec![vec![0.0; pos as usize - 1]; n as usize];
    let (top_p, top_id) = probs.max_dim(-1, false);
    for (i, label) in labels.iter().enumerate() {
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
        cols: labels.clone(),
        values: (0..pos as usize - 1).map(|p| grid.iter().map(|r| r[p]).collect()).collect(),
        x_label: "residual stream after".into(),
        y_label: "token > next".into(),
    };
    out.chart("logit_lens", "logit lens: the probability each residual stream (through the final norm and unembedding) gives the actual next token", |p| {
        heatmaps(p, std::slice::from_ref(&panel))
    })?;
    // Show the last position first in the report: that is the prediction the prompt asks for.
    table.rows.sort_by_key(|r| std::cmp::Reverse(if let Value::Int(p) = r[1] { p } else { 0 }));
    out.table("logit_lens", "logit lens, last position first", &table)
}

/// Each built-in task's score on 256 fresh prompts.
pub fn task_scores(model: &HookedTransformer, vocab: &TaskVocab, out: &mut Output) -> Result<()> {
    let mut table = Table::new(&["task", "prompts", "score"]);
    for task in ALL_TASKS {
        let batch = task.generate(vocab, 256, 999_983)?;
        let score = task.score(vocab, &batch, &model.forward(&batch.clean.to_device(model.device()))?)?;
        table.push(vec![task.name().into(), 256usize.into(), score.into()]);
    }
    out.report.paragraph("Scores on 256 fresh prompts per task (accuracy; greater-than: P(> YY) - P(<= YY)).");
    out.table("task_scores", "task scores", &table)
}

/// Metrics and dashboards of every SAELens folder under `dir`/saes and `dir`/transcoders, on
/// held-out Shakespeare; `n_latents` dashboards each, of latents that fire on about 0.3% of
/// tokens.
pub fn dictionaries(model: &HookedTransformer, dir: &Path, n_latents: usize, out: &mut Output) -> Result<()> {
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
    let contexts = match held_out_contexts(model, "shakespeare", 32, 128) {
        Ok(c) => c,
        Err(e) => {
            out.report.paragraph(&format!("Skipped: no held-out text to evaluate on ({e})."));
            return Ok(());
        }
    };
    let mut table = Table::new(&["dictionary", "hook_in", "hook_out", "architecture", "d_sae", "l0", "fvu", "ce_loss_recovered", "dead_fraction"]);
    let mut boards = Vec::new();
    let mut curves = Vec::new();
    for folder in &folders {
        let dict = SparseDictionary::load_saelens_for(model, folder)?;
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
