//! Analyses: each runs one method on a model and a prompt set, from a config struct whose
//! `Default` holds the method's defaults (the CLI's flags wrap these configs), and returns a
//! result that writes its own tables, charts and JSON into an [`Output`](crate::Output). The
//! `interp` CLI, `interp report` and the notebooks all call these; the crate's page has an example.

mod behaviour;
mod benchmark;
mod bilinear;
mod causal_tracing;
mod circuit_discovery;
mod dictionary;
mod graph;
mod heads;
mod patching;
mod routing;
mod study;

pub use behaviour::{behaviour, logit_lens, Behaviour, LensPrompts, LogitLens};
pub use benchmark::{benchmark_case, summary_table, CaseResult, MethodScore};
pub use bilinear::{bilinear_spectra, single_token, BilinearSpectra, BilinearSpectraConfig, DirectionSpectrum, Readout};
pub use causal_tracing::{causal_tracing, task_trace_prompts, trace_table, CausalTracing, CausalTracingConfig};
pub use circuit_discovery::{circuit_discovery, AcdcRuns, CircuitDiscovery, CircuitDiscoveryConfig, EdgeScores, MibScores};
pub use dictionary::{read_training_curve, training_curve_chart, write_metrics, write_set_metrics};
pub use graph::{graph_analysis, graph_slug, GraphAnalysis, GraphAnalysisConfig, VIEWER_SCAN};
pub use heads::write_heads;
pub use patching::{patching_sweep, patching_table, PatchingSweep, PatchingSweepConfig};
pub use routing::{routing_analysis, RoutingAnalysis, RoutingConfig};
pub use study::{study, StudyConfig, StudyStep};
