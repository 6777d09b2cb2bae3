//! Causal analysis on hooked models: metrics, activation patching, causal tracing, the edge
//! graph with edge patching, attribution patching (EAP, EAP-IG) and ACDC.
pub mod acdc;
pub mod attribution;
pub mod error;
pub mod graph;
pub mod metric;

pub use acdc::{acdc, circuit_nodes, roc_auc, AcdcConfig, AcdcResult};
pub use attribution::{edge_attribution, top_k_masks, AttributionMethod};
pub use error::{Error, Result};
pub use graph::{Ablation, Edge, EdgeActivations, EdgeGraph, Qkv, Receiver, Sender};
pub use metric::{Metric, TaskPrompts};
pub use transcoders;
pub mod patching;
pub mod table;
pub use patching::{activation_patching, PatchSite, PatchingResult};
pub use table::{Table, Value};
pub mod tracing;
pub use tracing::{causal_trace, estimate_sigma, restored_probability, summarize, CausalTrace, Corruption, TraceConfig, TracePrompt, TraceSummary, TOKEN_ROLES};
pub mod chart;
pub use chart::{heatmaps, line_chart, Heatmap, Series};
