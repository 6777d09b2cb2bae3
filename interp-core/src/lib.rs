#![warn(missing_docs)]
//! # interp-core
//!
//! A hooked transformer runtime on libtorch: load HF checkpoints of GPT-2, GPT-NeoX/Pythia,
//! Llama/Mistral/Qwen2 and Gemma/Gemma-2, run them with TransformerLens hook points that expose
//! and rewrite every activation, and cache only what is asked for.
//!
//! ```no_run
//! use interp_core::{CacheSpec, HookedTransformer, Hooks, Intervention, Scope};
//! use tch::{Device, Kind};
//!
//! let model = HookedTransformer::from_pretrained_dir("tests/fixtures/gpt2", Device::Cpu, Kind::Float)?;
//! let tokens = model.to_tokens("Then, Mary and John went to the store.", true)?; // [1, pos]
//!
//! // Cache only what you need: names, globs, positions, dtype and device are all choices.
//! let (_logits, cache) = model.run_with_cache(&tokens, CacheSpec::names(["blocks.*.hook_resid_post"]))?;
//! let resid = cache.get("blocks.1.hook_resid_post")?; // [1, pos, d_model]
//!
//! // Rewrite activations: ablate head 3 of layer 0, or any closure.
//! let hooks = Hooks::new()
//!     .intervene("blocks.0.attn.hook_z", Intervention::Zero(Scope::all().heads([3])))
//!     .add("blocks.1.hook_mlp_out", |x, _ctx| Ok(Some(x * 0.5)));
//! let _ablated = model.run_with_hooks(&tokens, hooks)?;
//! # Ok::<(), interp_core::Error>(())
//! ```
//!
//! Shapes follow TransformerLens: see [`HookPoint`] and the table in the README.

mod cache;
mod checkpoint;
pub mod config;
pub mod data;
mod error;
mod forward;
mod generate;
pub mod gguf;
mod hook_point;
mod hooks;
mod memory;
mod model;
mod models;
mod params;
pub mod pretrain;
mod processing;
mod rng;
mod runner;
mod save;
mod spec;
pub mod tasks;
mod tokenizer;
mod torch_file;
pub use torch_file::read_pickle;
pub mod train;

pub use cache::{ActivationCache, ResidualStack};
pub use config::ModelConfig;
pub use error::{BoxError, Error, Result};
pub use forward::{at_rows, KvCache};
pub use generate::Sampling;
pub use hook_point::{BlockSite, HookName, HookPoint};
pub use hooks::{CacheSpec, HookCtx, HookFn, Hooks, Intervention, NamesFilter, Scope};
pub use memory::{free_disk_bytes, reuse_freed_memory, status_kib};
pub use model::{HookedTransformer, NormSite};
pub use models::SUPPORTED_MODEL_TYPES;
pub use processing::WeightProcessing;
pub use rng::{splitmix, Rng};
pub use runner::{RunOutput, Runner};
pub use spec::{BlockStyle, Experts, MlpKind, ModelSpec, NormPlacement};
pub use tch;
pub use tokenizer::{PaddingSide, Tokenizer};
