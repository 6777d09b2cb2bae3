#![warn(missing_docs)]
//! Presentation, above the analyses of `circuits` and `transcoders` and the runtime of
//! `interp-core`: tables (polars: parquet + CSV), charts (plotters: SVG + PNG), output folders,
//! self-contained HTML reports and dashboards; the analyses that run a method and write its
//! tables and charts ([`analysis`]); and `interp report`'s main job ([`run`]).
//!
//! ```no_run
//! use interp_report::analysis::{circuit_discovery, CircuitDiscoveryConfig};
//! use interp_report::Output;
//! use circuits::TaskPrompts;
//! use interp_core::{tasks::{Task, TaskVocab}, HookedTransformer};
//! let model = HookedTransformer::from_pretrained_dir("models/tasks-bilinear", tch::Device::Cpu, tch::Kind::Float)?;
//! let vocab = TaskVocab::of_model(&model)?;
//! let ioi = TaskPrompts::new(Task::Ioi, &vocab, 32, 0)?;
//! let found = circuit_discovery(&model, &ioi, "ioi", &CircuitDiscoveryConfig::default())?;
//! let mut out = Output::new(std::path::Path::new("ioi-circuit"), "IOI circuit")?;
//! found.write(&mut out)?; // tables (parquet + CSV), charts (SVG + PNG), circuit JSON
//! out.write_report()?;
//! # Ok::<(), interp_report::Error>(())
//! ```
pub mod analysis;
pub mod chart;
/// The crate's error type.
pub mod error;
pub mod html;
mod job;
pub mod output;
pub mod table;

pub use chart::{circuit_graph, heatmaps, line_chart, line_panels, Heatmap, LinePanel, Series};
pub use error::{Error, Result};
pub use html::{dashboards_html, graph_view, write_dashboards, write_graph_html, write_graph_page, Report};
pub use job::{dictionaries, lens_probabilities, logit_lens, model_card, model_report, run, task_scores, ReportConfig};
pub use output::Output;
pub use table::{Table, Value};
