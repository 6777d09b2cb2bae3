//! Causal analysis on hooked models: patching, causal tracing, attribution patching, ACDC.
//! Not built yet: see the issue tracker.
pub use transcoders;
