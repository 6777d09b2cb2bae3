//! # transcoders
//!
//! Sparse dictionaries on activations of an `interp-core` model: SAEs, transcoders and skip
//! transcoders with ReLU+L1, TopK, BatchTopK, JumpReLU and gated activations; an activation store
//! that streams hook activations (and caches them on disk); a trainer; the evaluation metrics
//! (L0, FVU, CE loss recovered, KL, dead/dense fractions); SAELens, sparsify and circuit-tracer
//! files; feature dashboards.

mod dictionary;
mod error;
mod formats;

pub use dictionary::{Architecture, DictionaryConfig, DictionaryKind, SparseDictionary, SAELENS_ARCHITECTURES};
pub use error::{Error, Result};
pub use formats::load_circuit_tracer;
pub use interp_core;

mod store;
mod train;

pub use store::{ActivationSource, ActivationStore, CachedActivations, InMemoryActivations, StoreConfig};
pub use train::{train_dictionaries, SaeTrainConfig, SaeTrainReport, TrainLogEntry};

/// A progress bar counting `unit`, hidden when `show` is false.
pub(crate) fn progress_bar(len: u64, unit: &str, show: bool) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(len) } else { indicatif::ProgressBar::hidden() };
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar
}

mod metrics;
pub use metrics::{evaluate, DictionaryMetrics, DENSE_THRESHOLD};

mod dashboard;
pub use dashboard::{latent_dashboards, write_dashboards, ContextExample, LatentDashboard};
