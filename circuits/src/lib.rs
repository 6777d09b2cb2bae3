#![warn(missing_docs)]
//! Circuit analysis on hooked models: metrics, activation patching, causal tracing, the edge
//! graph with edge patching, attribution patching (EAP, EAP-IG) and ACDC; and from the weights,
//! bilinear-MLP eigendecomposition ([`bilinear`]) and transcoder attribution graphs
//! ([`attribution_graph`]). Computation only: the tables, charts, HTML and the analyses that
//! write them are in `interp-report`.
//!
//! ```no_run
//! use circuits::{acdc, edge_attribution, Ablation, AcdcConfig, AttributionMethod, EdgeGraph, TaskPrompts};
//! use interp_core::{tasks::{Task, TaskVocab}, HookedTransformer};
//! let model = HookedTransformer::from_pretrained_dir("models/tasks-bilinear", tch::Device::Cpu, tch::Kind::Float)?;
//! let ioi = TaskPrompts::new(Task::Ioi, &TaskVocab::new(31), 32, 0)?; // clean, corrupted, metric
//! let graph = EdgeGraph::new(&model)?;
//! let acts = graph.activations(&model, &ioi.clean, &ioi.corrupted, Ablation::Resample)?;
//! let scores = edge_attribution(&model, &graph, &acts, &ioi.metric, AttributionMethod::EapIg { steps: 5 })?; // [n_edges]
//! let circuit = acdc(&model, &graph, &acts, &ioi.metric, &AcdcConfig { tau: 0.3, ..AcdcConfig::default() })?;
//! println!("{} of {} edges kept", circuit.n_kept(), graph.n_edges());
//! # Ok::<(), circuits::Error>(())
//! ```
// What every analysis shares: errors, memory budgets, metrics and prompt sets.
/// The crate's error type.
pub mod error;
pub use error::{Error, LineError, Result};
pub mod budget;
pub use budget::MemoryBudget;
pub mod metric;
pub use metric::{Metric, MetricKind, MetricName};
pub mod prompts;
pub use prompts::{trace_prompts_from_jsonl, PromptPair, TaskPrompts};

// Activations patched: by site, each head's roles (IOI), and ROME's causal tracing.
pub mod patching;
pub use patching::{activation_patching, PatchSite, PatchingResult};
pub mod heads;
pub use heads::{head_scores, HeadScores, ROLE_RULES};
pub mod causal_tracing;
pub use causal_tracing::{
    causal_trace, estimate_sigma, estimate_sigma_of, restored_probability, summarize, CausalTrace, Corruption, TraceConfig, TracePrompt, TraceSummary,
    TOKEN_ROLES,
};

// Edge circuits: the edge graph and its runs, EAP/EAP-IG, ACDC, MIB's scores, InterpBench's truth.
pub mod edge_graph;
pub use edge_graph::{Ablation, Edge, EdgeActivations, EdgeGraph, Qkv, Receiver, Sender};
pub mod edge_run;
pub use edge_run::EdgeRun;
pub mod eap;
pub use eap::{edge_attribution, top_k_masks, AttributionMethod};
pub mod acdc;
pub use acdc::{acdc, circuit_nodes, roc_auc, AcdcConfig, AcdcResult, AttributionPrune};
pub mod mib;
pub use mib::{cmd, cpr, mib_counts, mib_edge_name, mib_folder, mib_model_name, mib_node_scores, mib_prune, write_mib_scores, MIB_FRACTIONS};
pub mod interpbench;
pub use interpbench::{component_edges, component_scores, component_truth, node_scores, node_truth, CaseTruth};

// Feature circuits: transcoder attribution graphs.
pub mod attribution_graph;
pub use attribution_graph::{attribution_graph, AttributionGraph, GraphConfig};
pub use transcoders;

// From the weights alone: bilinear-MLP eigendecomposition.
pub mod bilinear;
pub use bilinear::{BilinearLayer, Spectrum};
