#![warn(missing_docs)]
//! # transcoders
//!
//! Sparse dictionaries on activations of an `interp-core` model: SAEs, transcoders and skip
//! transcoders with ReLU+L1, TopK, BatchTopK, JumpReLU and gated activations; an activation store
//! that streams hook activations (and caches them on disk); a trainer; the evaluation metrics
//! (L0, FVU, CE loss recovered, KL, dead/dense fractions); SAELens, sparsify and circuit-tracer
//! files; feature dashboards.
//!
//! ```no_run
//! use interp_core::{data, tch::{Device, Kind, Tensor}, HookedTransformer};
//! use transcoders::*;
//!
//! let model = HookedTransformer::from_pretrained_dir("models/shakespeare-gpt2", Device::Cpu, Kind::Float)?;
//! let (train, _eval) = data::shakespeare("data/shakespeare".as_ref())?;
//! let tok = model.tokenizer().expect("tokenizer.json");
//! let mut ids = Vec::new();
//! for d in &train {
//!     ids.extend(tok.encode(&d.text, true)?);
//! }
//! let hooks = ["blocks.1.hook_resid_pre", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"];
//! // One model pass feeds several dictionaries; position 0 and BOS tokens are left out.
//! let mut store = ActivationStore::new(&model, &Tensor::from_slice(&ids), &hooks, StoreConfig::default())?;
//! let mut dicts = vec![
//!     SparseDictionary::init(DictionaryConfig::sae(Architecture::TopK { k: 16 }, hooks[0], 128, 1024), 0, Device::Cpu)?,
//!     SparseDictionary::init(DictionaryConfig::transcoder(Architecture::JumpRelu, true, hooks[1], hooks[2], 128, 128, 1024), 0, Device::Cpu)?,
//! ];
//! train_dictionaries(&mut dicts, &mut store, &SaeTrainConfig { steps: 2000, ..Default::default() })?;
//! let contexts = Tensor::from_slice(&ids[..64 * 128]).reshape([64, 128]);
//! let metrics = evaluate(&dicts[0], &model, &contexts, 16)?; // L0, FVU, CE loss recovered, KL, ...
//! dicts[0].save_saelens("out/resid-sae", Some(&metrics.log10_density))?; // a SAELens v6 folder
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clt;
mod dictionary;
mod error;
mod formats;

pub use clt::{load_transcoder_set, CltConfig, CrossLayerTranscoder, TranscoderSet};
pub use dictionary::{Architecture, DictionaryConfig, DictionaryKind, DictionaryWeights, SparseDictionary, SAELENS_ARCHITECTURES};
pub use error::{Error, Result};
pub use formats::{load_circuit_tracer, save_circuit_tracer, SAELENS_PROVENANCE_FIELDS, SAELENS_READ_FIELDS, SAELENS_TRAINING_FIELDS};
pub use interp_core;

mod clt_train;
mod store;
mod train;

pub use clt_train::train_clt;
pub use store::{ActivationSource, ActivationStore, CacheProvenance, CachedActivations, CachedHook, InMemoryActivations, StoreConfig};
pub use train::{train_dictionaries, SaeTrainConfig, SaeTrainReport, TrainLogEntry};

mod metrics;
pub mod pipeline;
pub use metrics::{evaluate, evaluate_activations, evaluate_set, DictionaryMetrics, DownstreamMetrics, SetMetrics, DENSE_THRESHOLD};

mod dashboard;
pub use dashboard::{latent_dashboards, random_latents, readable_latents, set_dashboards, visible_token, ContextExample, LatentDashboard};
