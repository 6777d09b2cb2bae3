//! Sparse dictionaries (SAEs, transcoders, skip transcoders) on activations from `interp-core`.
//! Not built yet: see the issue tracker.
pub use interp_core;
