//! Training a language model from scratch, as `interp train` does: on documents (with a
//! byte-level BPE tokenizer trained on them unless one is given) or on the built-in task mixture;
//! the model is saved as an HF checkpoint directory with `train_report.json` next to it, and an
//! interrupted run resumes from `OUT/checkpoints`.
//!
//! ```no_run
//! use interp_core::pretrain::{pretrain, PretrainConfig, PretrainData};
//! let data = PretrainData::Tasks { modulus: 31, induction_only: false };
//! let cfg = PretrainConfig { batch: 160, ..PretrainConfig::default() };
//! let (model, report) = pretrain(data, &cfg, std::path::Path::new("my-task-model"))?;
//! println!("{} parameters, eval loss {:?}", model.n_params(), report.summary["eval_loss"]);
//! # Ok::<(), interp_core::Error>(())
//! ```

use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::data::{self, Document, TokenDataset};
use crate::error::{Error, Result};
use crate::tasks::{induction_head_scores, Task, TaskMixture, TaskVocab, ALL_TASKS};
use crate::train::{TrainConfig, TrainReport};
use crate::{BlockStyle, Experts, HookedTransformer, MlpKind, ModelSpec, NormPlacement, Tokenizer};

/// What a model is trained on.
#[allow(clippy::large_enum_variant)] // one value per training run
pub enum PretrainData {
    /// Training and eval documents (see [`data::hold_out`]). The tokenizer is the one given, or
    /// one saved by an interrupted run, or a byte-level BPE of `vocab` entries trained on `train`.
    Text {
        /// Training documents.
        train: Vec<Document>,
        /// Held-out documents.
        eval: Vec<Document>,
        /// The tokenizer to use.
        tokenizer: Option<Tokenizer>,
        /// Vocabulary of a tokenizer trained here.
        vocab: usize,
    },
    /// The built-in tasks (all of them, or induction only); modular addition modulo `modulus`.
    Tasks {
        /// Modulus of the modular-addition task.
        modulus: usize,
        /// Train on induction alone.
        induction_only: bool,
    },
}

/// The model to build and how to train it.
#[derive(Clone, Debug)]
pub struct PretrainConfig {
    /// GPT-2 or Llama-style blocks.
    pub style: BlockStyle,
    /// `None`: attention-only.
    pub mlp: Option<MlpKind>,
    /// Blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: i64,
    /// Attention heads per block.
    pub n_heads: i64,
    /// Default 4 x d_model (with experts: 4 x d_model / top_k per expert, so that a token uses as
    /// many MLP parameters as in the dense default).
    pub d_mlp: Option<i64>,
    /// Mixture-of-experts MLPs (Llama-style blocks).
    pub experts: Option<Experts>,
    /// Where the norms sit.
    pub norm: NormPlacement,
    /// Context length trained on (the model's n_ctx).
    pub n_ctx: i64,
    /// Sequences per step (split evenly over the tasks of the task mixture).
    pub batch: i64,
    /// Seeds the initialisation and the order of the data.
    pub seed: i64,
    /// Optimiser and loop; `checkpoint_dir` `None` means `OUT/checkpoints`.
    pub train: TrainConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            style: BlockStyle::Gpt2,
            mlp: Some(MlpKind::Gelu),
            n_layers: 2,
            d_model: 128,
            n_heads: 4,
            d_mlp: None,
            experts: None,
            norm: NormPlacement::Pre,
            n_ctx: 128,
            batch: 16,
            seed: 0,
            train: TrainConfig { steps: 2000, warmup_steps: 100, eval_every: 200, checkpoint_every: 200, ..TrainConfig::default() },
        }
    }
}

impl PretrainConfig {
    fn spec(&self, d_vocab: i64) -> ModelSpec {
        ModelSpec {
            style: self.style,
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_mlp: self.d_mlp.unwrap_or(4 * self.d_model / self.experts.map_or(1, |e| e.top_k.max(1))),
            d_vocab,
            n_ctx: self.n_ctx,
            mlp: self.mlp,
            tie_embeddings: false,
            bos_token_id: Some(0),
            experts: self.experts,
            norm: self.norm,
        }
    }
}

/// What [`pretrain`] measured; `summary` is what `OUT/train_report.json` holds (eval losses, and
/// n-gram baselines for text or per-task scores and head scores for tasks).
pub struct PretrainReport {
    /// What the training loop measured.
    pub train: TrainReport,
    /// The contents of `train_report.json`.
    pub summary: Value,
}

/// Builds the model of `cfg`, trains it on `data` (resuming from the checkpoints of an interrupted
/// run) and saves it with `train_report.json` to `out`.
pub fn pretrain(data: PretrainData, cfg: &PretrainConfig, out: &Path) -> Result<(HookedTransformer, PretrainReport)> {
    let started = std::time::Instant::now();
    let mut train_cfg = cfg.train.clone();
    let checkpoints = train_cfg.checkpoint_dir.get_or_insert_with(|| out.join("checkpoints")).clone();
    let (model, train, extra) = match data {
        PretrainData::Text { train, eval, tokenizer, vocab } => {
            // A resumed run must see the same tokens: the tokenizer lives next to the checkpoints.
            let saved = checkpoints.join("tokenizer.json");
            let tokenizer = match tokenizer {
                Some(t) => t,
                None if saved.exists() => Tokenizer::from_file(&saved, Some(0))?,
                None => {
                    let tok = data::train_bpe(&train, vocab)?;
                    std::fs::create_dir_all(&checkpoints).map_err(Error::io(&checkpoints))?;
                    tok.save(&saved)?;
                    tok
                }
            };
            let dataset = TokenDataset::new(&tokenizer, &train, &eval, cfg.batch, cfg.n_ctx, cfg.seed as u64)?;
            let model = HookedTransformer::init_random(&cfg.spec(tokenizer.vocab_size() as i64), cfg.seed, Kind::Float, Device::Cpu)?.with_tokenizer(tokenizer);
            if train_cfg.progress {
                eprintln!("training {} parameters on {} training tokens ({} eval)", model.n_params(), dataset.train.numel(), dataset.eval.numel());
            }
            let report = model.train(&dataset, &train_cfg)?;
            let (unigram, bigram) = data::ngram_baselines(&dataset.train, &dataset.eval, model.cfg.d_vocab)?;
            (model, report, json!({ "unigram_baseline": unigram, "bigram_baseline": bigram }))
        }
        PretrainData::Tasks { modulus, induction_only } => {
            let vocab = TaskVocab::new(modulus);
            let tasks: Vec<Task> = if induction_only { vec![ALL_TASKS[0]] } else { ALL_TASKS.to_vec() };
            let model = HookedTransformer::init_random(&cfg.spec(vocab.len() as i64), cfg.seed, Kind::Float, Device::Cpu)?.with_tokenizer(vocab.tokenizer()?);
            let per_task = (cfg.batch as usize / tasks.len()).max(1);
            let mixture = TaskMixture { vocab, tasks, per_task, seed: cfg.seed as u64 };
            if train_cfg.progress {
                eprintln!("training {} parameters on {} tasks, {} prompts each per step", model.n_params(), mixture.tasks.len(), per_task);
            }
            let report = model.train(&mixture, &train_cfg)?;
            let scores = task_scores(&model, &mixture)?;
            (model, report, scores)
        }
    };
    model.save_pretrained(out)?;
    let mut summary = json!({
        "eval_loss": train.eval_losses.last().map(|e| e.1), "final_train_loss": train.final_train_loss,
        "eval_losses": train.eval_losses, "tokens_per_sec": train.tokens_per_sec, "resumed_at_step": train.resumed_at,
        "steps": train.steps, "seconds": started.elapsed().as_secs_f64(), "parameters": model.n_params(),
    });
    if let (Some(s), Some(e)) = (summary.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let path = out.join("train_report.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|source| Error::Json { path: path.clone(), source })?;
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok((model, PretrainReport { train, summary }))
}

/// Each task's score on 512 fresh prompts, and for induction every head's previous-token and
/// induction scores [layer][head].
fn task_scores(model: &HookedTransformer, mixture: &TaskMixture) -> Result<Value> {
    let vocab = &mixture.vocab;
    let mut scores = serde_json::Map::new();
    for task in &mixture.tasks {
        let batch = task.generate(vocab, 512, 999_983)?;
        let score = task.score(vocab, &batch, &model.forward(&batch.clean)?)?;
        scores.insert(task.name().into(), score.into());
    }
    let mut extra = json!({ "task_scores": scores });
    if let Some(Task::Induction { half }) = mixture.tasks.first() {
        let (prev, induction) = induction_head_scores(model, vocab, *half, 256)?;
        let table = |t: &Tensor| -> Result<Vec<Vec<f64>>> { Ok(Vec::<Vec<f64>>::try_from(&t.f_to_kind(Kind::Double)?)?) };
        extra["previous_token_scores"] = json!(table(&prev)?);
        extra["induction_scores"] = json!(table(&induction)?);
    }
    Ok(extra)
}
