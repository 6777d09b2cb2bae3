#![warn(missing_docs)]
//! # interp
//!
//! The mechanistic-interpretability toolkit: re-exports the runtime (`interp_core`), sparse
//! dictionaries (`transcoders`), circuit analysis (`circuits`) and presentation with the analyses
//! that write it (`interp_report`, as `interp::report`), and builds the `interp` CLI.
pub use circuits;
pub use interp_core;
pub use interp_report as report;
pub use transcoders;

/// The README's Rust examples, compiled (and run where not marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;

/// The guides' Rust examples in `docs/`, compiled and run as the README's are.
#[cfg(doctest)]
pub mod guides {
    #[doc = include_str!("../docs/runtime.md")]
    pub struct Runtime;
    #[doc = include_str!("../docs/training.md")]
    pub struct Training;
    #[doc = include_str!("../docs/dictionaries.md")]
    pub struct Dictionaries;
    #[doc = include_str!("../docs/circuits.md")]
    pub struct Circuits;
    #[doc = include_str!("../docs/bilinear.md")]
    pub struct Bilinear;
    #[doc = include_str!("../docs/attribution-graphs.md")]
    pub struct AttributionGraphs;
    #[doc = include_str!("../docs/reports.md")]
    pub struct Reports;
}
