//! The end-to-end tests, one module per capability, in one test binary: libtorch is linked once
//! rather than once per file (15 links took a large share of CI's time).
//!
//! Run one module with `cargo test --test suite circuits::`, one test with its name.

mod common;

mod bilinear;
mod circuits;
mod cli;
mod clt;
mod data;
mod dictionaries;
mod fuzz;
mod graph;
mod guide;
mod loading;
mod prompts;
mod reference;
mod runtime;
mod tasks;
mod training;
