//! Edge-graph analyses of a whole prompt set within a memory budget: the activations of as many
//! prompts as fit are held at once (all of them, usually); gradient runs and masked forwards go
//! through them in batches of prompts and edge sets that fit beside; results are averaged over
//! prompts exactly as one big batch would give them.

use interp_core::HookedTransformer;
use tch::{Device, Kind, Tensor};

use crate::budget::{MemoryBudget, RowCosts};
use crate::eap::{edge_attribution, AttributionMethod};
use crate::edge_graph::{Ablation, EdgeActivations, EdgeGraph};
use crate::error::{Error, Result};
use crate::metric::check_gap;
use crate::prompts::TaskPrompts;

/// A prompt set prepared for edge attribution and masked forwards under a memory budget.
pub struct EdgeRun<'a> {
    model: &'a HookedTransformer,
    graph: &'a EdgeGraph,
    prompts: &'a TaskPrompts,
    ablation: Ablation,
    budget: MemoryBudget,
    costs: RowCosts,
    /// Prompts whose activations are held at once.
    chunk: usize,
    /// Mean-ablation values over the whole set.
    mean: Option<Tensor>,
    /// The activations, kept when the set is one chunk.
    whole: Option<EdgeActivations>,
    /// Advanced by one per prompt a forward pass covers (three per gradient pass).
    progress: indicatif::ProgressBar,
    /// The metric with every edge and with no edge, measured once.
    endpoints: std::cell::OnceCell<(f64, f64)>,
}

impl<'a> EdgeRun<'a> {
    /// Holds the activations of as many prompts as fit `budget` beside one prompt's gradient or
    /// masked pass; an error names the least budget that holds one prompt.
    pub fn new(model: &'a HookedTransformer, graph: &'a EdgeGraph, prompts: &'a TaskPrompts, ablation: Ablation, budget: MemoryBudget) -> Result<EdgeRun<'a>> {
        let costs = MemoryBudget::row_costs(model, graph, prompts.clean.size()[1]);
        let pass = costs.gradient.max(costs.masked);
        let chunk = (budget.rows(pass, costs.activations, "one prompt's edge activations and gradient pass")? as usize).min(prompts.len());
        let mean = match ablation {
            Ablation::Mean => Some(graph.mean_outputs(model, prompts, chunk)?),
            _ => None,
        };
        let mut run = EdgeRun {
            model,
            graph,
            prompts,
            ablation,
            budget,
            costs,
            chunk,
            mean,
            whole: None,
            progress: indicatif::ProgressBar::hidden(),
            endpoints: std::cell::OnceCell::new(),
        };
        if chunk == prompts.len() {
            run.whole = Some(run.activations(prompts)?);
        }
        Ok(run)
    }

    /// The edge graph it runs.
    pub fn graph(&self) -> &EdgeGraph {
        self.graph
    }

    /// Reports work on `bar`: each attribution or masked forward advances it by the prompts it
    /// covers, in forward passes (a gradient pass counts three). See [`EdgeRun::attribution_work`]
    /// and [`EdgeRun::faithfulness_work`] for the totals.
    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    /// The work [`EdgeRun::attribution`] reports for `method` (see [`EdgeRun::with_progress`]).
    pub fn attribution_work(&self, method: AttributionMethod) -> u64 {
        let passes = match method {
            AttributionMethod::Eap => 1,
            AttributionMethod::EapIg { steps } => steps as u64,
        };
        3 * passes * self.prompts.len() as u64
    }

    /// The work [`EdgeRun::faithfulness`] of `n_masks` edge sets reports, beside the full and
    /// the empty circuit's (`faithfulness_work(2)`, once per run).
    pub fn faithfulness_work(&self, n_masks: usize) -> u64 {
        n_masks as u64 * self.prompts.len() as u64
    }

    /// Prompts whose activations are held at once.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    fn activations(&self, part: &TaskPrompts) -> Result<EdgeActivations> {
        self.graph.activations_with(self.model, &part.clean, &part.corrupted, self.ablation, self.mean.as_ref())
    }

    /// Calls `f` with each chunk's activations, its prompts and its share of the set.
    fn each_chunk(&self, mut f: impl FnMut(&EdgeActivations, &TaskPrompts, f64) -> Result<()>) -> Result<()> {
        let n = self.prompts.len();
        if let Some(acts) = &self.whole {
            return f(acts, self.prompts, 1.0);
        }
        for start in (0..n).step_by(self.chunk) {
            let part = self.prompts.narrow(start, self.chunk.min(n - start))?;
            let acts = self.activations(&part)?;
            f(&acts, &part, part.len() as f64 / n as f64)?;
        }
        Ok(())
    }

    /// Batches of at most `rows` prompts of a held chunk: (start, length) pairs.
    fn batches(len: usize, rows: i64) -> Vec<(i64, i64)> {
        let rows = rows.max(1);
        (0..len as i64).step_by(rows as usize).map(|s| (s, rows.min(len as i64 - s))).collect()
    }

    /// Every edge's score [E] (see [`edge_attribution`]) on the whole set.
    pub fn attribution(&self, method: AttributionMethod) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        self.each_chunk(|acts, part, share| {
            let held = part.len() as u64 * self.costs.activations;
            let rows = self.budget.rows(held, self.costs.gradient, "one prompt's gradient run")?;
            for (start, len) in Self::batches(part.len(), rows) {
                let s = edge_attribution(self.model, self.graph, &acts.narrow(start, len)?, &part.metric.narrow(start, len)?, method)?;
                self.progress.inc(self.attribution_work(method) / self.prompts.len() as u64 * len as u64);
                let s = s.f_mul_scalar(share * len as f64 / part.len() as f64)?;
                total = Some(match total.take() {
                    Some(t) => t.f_add(&s)?,
                    None => s,
                });
            }
            Ok(())
        })?;
        total.ok_or_else(|| Error::Input("no prompts".into()))
    }

    /// The metric (mean over prompts) of each edge set in `masks` [V, E], as many prompts and
    /// sets per forward as the budget holds.
    pub fn circuit_metrics(&self, masks: &Tensor) -> Result<Vec<f64>> {
        let masks = masks.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
        let mut total = vec![0.0; masks.size()[0] as usize];
        self.each_chunk(|acts, part, share| {
            let held = part.len() as u64 * self.costs.activations;
            let rows = self.budget.rows(held, self.costs.masked, "one prompt of a masked forward")?;
            for (start, len) in Self::batches(part.len(), rows) {
                // Edge sets per forward: as many copies of this batch as fit.
                let values = self.graph.circuit_metrics(self.model, &acts.narrow(start, len)?, &part.metric.narrow(start, len)?, &masks, rows)?;
                self.progress.inc(masks.size()[0] as u64 * len as u64);
                for (t, v) in total.iter_mut().zip(values) {
                    *t += share * v * len as f64 / part.len() as f64;
                }
            }
            Ok(())
        })?;
        Ok(total)
    }

    /// Faithfulness of each edge set in `masks` [V, E]: (m(circuit) - m(no edges)) /
    /// (m(all edges) - m(no edges)); 1 = the circuit alone does what the model does.
    ///
    /// Each distinct edge set is measured once; the full and the empty circuit once per run.
    pub fn faithfulness(&self, masks: &Tensor) -> Result<Vec<f64>> {
        let e = self.graph.n_edges() as i64;
        let cpu = (Kind::Float, Device::Cpu);
        let (full, empty) = match self.endpoints.get() {
            Some(m) => *m,
            None => {
                let m = self.circuit_metrics(&Tensor::f_cat(&[Tensor::f_ones([1, e], cpu)?, Tensor::f_zeros([1, e], cpu)?], 0)?)?;
                check_gap(&self.prompts.metric, m[0], m[1])?;
                *self.endpoints.get_or_init(|| (m[0], m[1]))
            }
        };
        let masks = masks.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(masks.f_flatten(0, -1)?)?;
        // Which measured set each row is: 0 every edge, 1 none, 2.. the distinct others.
        let mut first_of: std::collections::HashMap<Vec<u32>, usize> = std::collections::HashMap::new();
        let (mut distinct, mut which) = (Vec::new(), Vec::new());
        for (i, row) in values.chunks(e.max(1) as usize).enumerate() {
            let key: Vec<u32> = row.iter().map(|x| x.to_bits()).collect();
            which.push(if row.iter().all(|x| *x == 1.0) {
                0
            } else if row.iter().all(|x| *x == 0.0) {
                1
            } else {
                *first_of.entry(key).or_insert_with(|| (distinct.push(i as i64), distinct.len() + 1).1)
            });
        }
        let measured = match distinct.is_empty() {
            true => vec![],
            false => self.circuit_metrics(&masks.f_index_select(0, &Tensor::f_from_slice(&distinct)?)?)?,
        };
        // The work `faithfulness_work` counted for the sets not measured again.
        self.progress.inc((which.len() - distinct.len()) as u64 * self.prompts.len() as u64);
        Ok(which
            .iter()
            .map(|&k| match k {
                0 => 1.0,
                1 => 0.0,
                k => (measured[k - 2] - empty) / (full - empty),
            })
            .collect())
    }

    /// The activations of the whole set, for ACDC, which tests every edge on every prompt: an
    /// error when the set, ACDC's per-receiver sums and one masked forward do not fit the budget
    /// at once.
    pub fn whole(&self) -> Result<&EdgeActivations> {
        let n = self.prompts.len() as u64;
        let needed = n * (self.costs.acdc + self.costs.masked);
        match &self.whole {
            Some(acts) if needed <= self.budget.bytes => Ok(acts),
            _ => Err(Error::MemoryBudget {
                given: self.budget.outside + self.budget.bytes,
                needed: self.budget.outside + needed,
                what: format!("ACDC on all {n} prompts at once"),
            }),
        }
    }

    /// Edge sets per forward that fit beside what ACDC holds for the whole set (at least 1).
    pub fn variants_per_forward(&self) -> usize {
        let b = self.prompts.len() as u64;
        (self.budget.bytes.saturating_sub(b * self.costs.acdc) / (b * self.costs.masked).max(1)).max(1) as usize
    }
}
