//! `interp train`: flags mapped onto `interp_core::pretrain`.

use std::path::PathBuf;

use anyhow::Result;
use interp::interp_core::data;
use interp::interp_core::pretrain::{pretrain, PretrainConfig, PretrainData};
use interp::interp_core::train::{Schedule, TrainConfig};
use interp::interp_core::{tch, BlockStyle, Experts, MlpKind, NormPlacement, Tokenizer};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Output directory for the trained model.
    #[arg(long)]
    out: PathBuf,
    /// `shakespeare`, a folder of .txt files (every eighth file held out for eval), a .jsonl file
    /// with a `text` field (every eighth line held out), `tasks` (the mixture of every built-in
    /// task) or `induction` (repeated random sequences only).
    #[arg(long, default_value = "shakespeare")]
    data: String,
    /// An existing tokenizer.json; default: train a byte-level BPE tokenizer of --vocab entries.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    vocab: usize,
    /// Block style (default: gpt2; llama with --mlp moe or --norm peri|post).
    #[arg(long, value_enum)]
    style: Option<BlockStyle>,
    /// MLP kind (default: gelu for gpt2 blocks, swiglu for llama ones); none: attention-only; moe:
    /// a mixture of SwiGLU experts (Mixtral's), trained with a load-balancing loss and saved as HF
    /// `mixtral`.
    #[arg(long, value_parser = mlp_names())]
    mlp: Option<String>,
    /// Norm placement: pre (before each sublayer), peri (also after each sublayer's output, as
    /// Gemma 2/3 and Peri-LN; saved as HF gemma2) or post (DeepNet's, after each residual
    /// addition; saved as interp_post_norm, which HF refuses); peri and post build Llama-style
    /// blocks.
    #[arg(long, value_enum, default_value_t = NormPlacement::Pre)]
    norm: NormPlacement,
    /// Experts per layer (--mlp moe).
    #[arg(long, default_value_t = 8)]
    experts: i64,
    /// Experts each token is routed to (--mlp moe).
    #[arg(long, default_value_t = 2)]
    top_k: i64,
    #[arg(long, default_value_t = PretrainConfig::default().n_layers)]
    layers: usize,
    #[arg(long, default_value_t = PretrainConfig::default().d_model)]
    d_model: i64,
    #[arg(long, default_value_t = PretrainConfig::default().n_heads)]
    heads: i64,
    /// MLP width (default 4 x d_model; each expert's with --mlp moe: 4 x d_model / top-k).
    #[arg(long)]
    d_mlp: Option<i64>,
    /// Context length trained on (and the model's n_ctx).
    #[arg(long, default_value_t = PretrainConfig::default().n_ctx)]
    ctx: i64,
    #[arg(long, default_value_t = PretrainConfig::default().train.steps)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = PretrainConfig::default().batch)]
    batch: i64,
    #[arg(long, default_value_t = PretrainConfig::default().train.lr)]
    lr: f64,
    #[arg(long, default_value_t = PretrainConfig::default().train.warmup_steps)]
    warmup: usize,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value_t = PretrainConfig::default().train.schedule)]
    schedule: Schedule,
    #[arg(long, default_value_t = PretrainConfig::default().train.weight_decay)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = PretrainConfig::default().train.grad_clip.unwrap_or(0.0))]
    clip: f64,
    #[arg(long, default_value_t = PretrainConfig::default().train.eval_every)]
    eval_every: usize,
    #[arg(long, default_value_t = PretrainConfig::default().train.checkpoint_every)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = PretrainConfig::default().seed)]
    seed: i64,
    /// Modulus of the modular-addition task (with --data tasks).
    #[arg(long, default_value_t = 31)]
    modulus: usize,
    /// Torch threads (runs are bitwise repeatable for a fixed count).
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

impl TrainArgs {
    fn config(&self) -> Result<PretrainConfig> {
        let moe = self.mlp.as_deref() == Some("moe");
        let llama_only = moe || self.norm != NormPlacement::Pre;
        let style = match (self.style, llama_only) {
            (Some(BlockStyle::Gpt2), true) => anyhow::bail!("--mlp moe and --norm peri|post build Llama-style blocks; drop --style gpt2"),
            (Some(style), _) => style,
            (None, true) => BlockStyle::Llama,
            (None, false) => PretrainConfig::default().style,
        };
        let mlp = match (self.mlp.as_deref(), style) {
            (Some(name), _) => name,
            (None, BlockStyle::Gpt2) => "gelu",
            (None, BlockStyle::Llama) => "swiglu",
        };
        Ok(PretrainConfig {
            style,
            norm: self.norm,
            mlp: match mlp {
                "none" => None,
                "moe" => Some(MlpKind::SwiGlu),
                name => Some(MlpKind::parse(name)?),
            },
            experts: moe.then_some(Experts { n_experts: self.experts, top_k: self.top_k }),
            n_layers: self.layers,
            d_model: self.d_model,
            n_heads: self.heads,
            d_mlp: self.d_mlp,
            n_ctx: self.ctx,
            batch: self.batch,
            seed: self.seed,
            train: TrainConfig {
                steps: self.steps,
                lr: self.lr,
                warmup_steps: self.warmup,
                schedule: self.schedule,
                weight_decay: self.weight_decay,
                grad_clip: (self.clip > 0.0).then_some(self.clip),
                eval_every: self.eval_every,
                checkpoint_every: self.checkpoint_every,
                progress: true,
                ..PretrainConfig::default().train
            },
        })
    }

    fn data(&self) -> Result<PretrainData> {
        Ok(match self.data.as_str() {
            "tasks" | "induction" => PretrainData::Tasks { modulus: self.modulus, induction_only: self.data == "induction" },
            name => {
                let (train, eval) = data::corpus(name)?;
                PretrainData::Text { train, eval, tokenizer: self.tokenizer()?, vocab: self.vocab }
            }
        })
    }

    fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        Ok(self.tokenizer.as_ref().map(|p| Tokenizer::from_file(p, Some(0))).transpose()?)
    }
}

/// `interp train`: prints the eval loss next to its n-gram baselines, or each task's score.
pub fn train(a: &TrainArgs) -> Result<()> {
    tch::set_num_threads(a.threads);
    let (_, report) = pretrain(a.data()?, &a.config()?, &a.out)?;
    let s = &report.summary;
    let num = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
    if let Some(scores) = s["task_scores"].as_object() {
        for (task, score) in scores {
            println!("{task:<18} {:.4}", score.as_f64().unwrap_or(f64::NAN));
        }
        for (key, what) in [("previous_token_scores", "previous-token scores"), ("induction_scores", "induction scores     ")] {
            if let Some(rows) = s[key].as_array() {
                let rows: Vec<Vec<f64>> =
                    rows.iter().map(|r| r.as_array().map(|r| r.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default()).collect();
                println!("{what} [layer][head]: {rows:.3?}");
            }
        }
        println!("{:.1} s; saved to {}", num("seconds"), a.out.display());
    } else {
        println!(
            "eval loss {:.4} nats/token (unigram {:.4}, bigram {:.4}); {:.0} tokens/s; {:.1} s; saved to {}",
            num("eval_loss"),
            num("unigram_baseline"),
            num("bigram_baseline"),
            num("tokens_per_sec"),
            num("seconds"),
            a.out.display()
        );
    }
    Ok(())
}

/// `--mlp`'s values: the MLP kinds, or none.
fn mlp_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(MlpKind::NAMES.iter().copied().chain(["none", "moe"]))
}
