#![warn(missing_docs)]
//! # interp
//!
//! The mechanistic-interpretability toolkit: re-exports the runtime (`interp_core`), sparse
//! dictionaries (`transcoders`) and circuit analysis (`circuits`), and builds the `interp` CLI.
pub use circuits;
pub use interp_core;
pub use transcoders;

/// The README's Rust examples, compiled (and run where not marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
