//! Memory budgets for the edge-graph analyses: how many prompts and edge sets run per forward so
//! that the process's peak memory stays under a stated size.
//!
//! The estimates count the tensors each pass holds per prompt row (f32 or the model's dtype):
//! the stored sender outputs and residuals of [`crate::EdgeActivations`], the activations a
//! gradient run keeps for its backward pass, and what a masked forward keeps live. They are
//! upper bounds measured against peak RSS on a GPT-2-small-shaped model (see
//! `cargo bench --bench circuits`).

use interp_core::HookedTransformer;

use crate::edge_graph::EdgeGraph;
use crate::error::{Error, Result};

/// What the process holds besides the weights and the analysis (libtorch, the allocator's slack).
const RUNTIME_BYTES: u64 = 400 << 20;

/// Working memory of the circuit analyses, in bytes, on top of the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBudget {
    /// Bytes the analysis may hold at once.
    pub bytes: u64,
    /// Bytes held outside the analysis (weights, runtime), for error messages in peak terms.
    pub outside: u64,
}

/// Bytes per prompt row of each pass at one prompt length.
#[derive(Clone, Copy, Debug)]
pub struct RowCosts {
    /// Stored sender outputs (clean and ablated) and residuals of one prompt.
    pub activations: u64,
    /// One prompt row of a forward and backward pass with gradients at every receiver.
    pub gradient: u64,
    /// One prompt row of one edge set in a masked forward.
    pub masked: u64,
    /// What ACDC holds per prompt beside its masked forwards: the clean and ablated sender
    /// outputs, the residuals and each receiver's sum of removed edges.
    pub acdc: u64,
}

impl MemoryBudget {
    /// The default budget: peak memory at most the weights plus 3 GB (the runtime's own share
    /// comes off the 3 GB).
    pub const DEFAULT: MemoryBudget = MemoryBudget { bytes: 3_000_000_000 - RUNTIME_BYTES, outside: 0 };

    /// The budget left for the analysis when the whole process may use `peak` bytes running
    /// `model`: the weights and the runtime come off first.
    pub fn for_peak(peak: u64, model: &HookedTransformer) -> Result<MemoryBudget> {
        let fixed = weight_bytes(model) + RUNTIME_BYTES;
        if peak <= fixed {
            return Err(Error::MemoryBudget { given: peak, needed: fixed + (64 << 20), what: "the weights and the runtime".into() });
        }
        Ok(MemoryBudget { bytes: peak - fixed, outside: fixed })
    }

    /// The per-row costs of `graph`'s passes on prompts of `positions` tokens.
    pub fn row_costs(model: &HookedTransformer, graph: &EdgeGraph, positions: i64) -> RowCosts {
        let c = &model.cfg;
        let elem = model.kind().elt_size_in_bytes() as u64;
        let (p, d, h, l, v) = (positions as u64, c.d_model as u64, c.n_heads as u64, c.n_layers as u64, c.d_vocab_out as u64);
        let d_mlp = if c.attn_only { 0 } else { c.d_mlp as u64 };
        let s = graph.senders.len() as u64;
        // Per token of one prompt row, calibrated against peak RSS on the GPT-2-small shape
        // (`cargo bench --bench circuits`): activations hold the clean and ablated sender outputs,
        // the residuals, and while a pass runs the outputs' differences, with allocator slack; a gradient run keeps each
        // head's own q/k/v input and projections, scores and pattern, norms and residuals and
        // the MLP's hidden units for its backward pass, plus the logits and their gradient at the
        // answer position; a masked forward keeps every live sender's output and one block's
        // transients, and the logits at the answer position.
        let block = 5 * h * d + 4 * h * p + 6 * d + 3 * d_mlp;
        let receivers = graph.receivers.len() as u64;
        RowCosts {
            activations: (4 * s + l) * p * d * elem * 6 / 5,
            gradient: (l * block * p + 2 * v) * elem,
            masked: ((s * d + block) * p + 3 * v) * elem,
            acdc: (2 * s + l + receivers) * p * d * elem * 6 / 5,
        }
    }

    /// Causal tracing of one prompt of `positions` tokens with `samples` noise samples: what it
    /// holds throughout (the clean activations, and the corrupted run's residuals, keys, values
    /// and MLP outputs), and what one restored variant (its samples' rows) adds to a forward:
    /// one block's transients, the keys and values it reads, and the logits at the last position.
    pub fn trace_costs(model: &HookedTransformer, positions: i64, samples: i64) -> (u64, u64) {
        let c = &model.cfg;
        let elem = model.kind().elt_size_in_bytes() as u64;
        let (p, d, h, l, s) = (positions as u64, c.d_model as u64, c.n_heads as u64, c.n_layers as u64, samples as u64);
        let (kv, d_mlp, v) = ((c.n_kv_heads * c.d_head) as u64, if c.attn_only { 0 } else { c.d_mlp as u64 }, c.d_vocab_out as u64);
        let fixed = (3 * l * p * d + s * l * p * (2 * d + 2 * kv) + s * v) * elem;
        let row = (p * (12 * d + 2 * h * p + 4 * d_mlp) + 2 * l * p * kv) * elem + v * (elem + 16);
        (fixed, s * row)
    }

    /// How many rows fit when `fixed` bytes are held already and each row costs `per_row`;
    /// an error (with the smallest budget that works) if not even one.
    pub fn rows(&self, fixed: u64, per_row: u64, what: &str) -> Result<i64> {
        let fits = self.bytes.saturating_sub(fixed) / per_row.max(1);
        if fits == 0 {
            return Err(Error::MemoryBudget { given: self.outside + self.bytes, needed: self.outside + fixed + per_row, what: what.into() });
        }
        Ok(fits.min(i64::MAX as u64) as i64)
    }
}

/// Bytes of the model's parameters.
pub fn weight_bytes(model: &HookedTransformer) -> u64 {
    model.parameters().iter().map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64).sum()
}
