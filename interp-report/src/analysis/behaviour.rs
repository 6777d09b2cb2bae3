//! What a model does on a prompt set before any analysis: the task metric per label (template)
//! on the clean and corrupted prompts, and the logit lens's rank of the answer at every layer.

use std::collections::BTreeMap;

use interp_core::{BlockSite, CacheSpec, HookPoint, HookedTransformer};
use tch::{Kind, Tensor};

use crate::chart::{line_chart, Series};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::table::Table;
use circuits::prompts::TaskPrompts;

/// The metric per label of a prompt set.
pub struct Behaviour {
    /// What the prompts are.
    pub name: String,
    /// The metric's name.
    pub metric: String,
    /// Per label, in order: (label, prompts, mean clean metric, share of prompts with a positive
    /// clean metric, mean corrupted metric).
    pub rows: Vec<(String, usize, f64, f64, f64)>,
}

/// Scores every prompt of `prompts`, `batch` prompts per forward.
pub fn behaviour(model: &HookedTransformer, prompts: &TaskPrompts, name: &str, batch: usize) -> Result<Behaviour> {
    let (mut clean, mut corrupted) = (Vec::new(), Vec::new());
    for start in (0..prompts.len()).step_by(batch.max(1)) {
        let part = prompts.narrow(start, batch.max(1).min(prompts.len() - start))?;
        clean.extend(Vec::<f64>::try_from(&part.metric.per_prompt(&model.forward(&part.clean)?)?.f_to_kind(Kind::Double)?)?);
        corrupted.extend(Vec::<f64>::try_from(&part.metric.per_prompt(&model.forward(&part.corrupted)?)?.f_to_kind(Kind::Double)?)?);
    }
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, l) in prompts.labels.iter().enumerate() {
        by_label.entry(l.as_str()).or_default().push(i);
    }
    let mean = |v: &[f64], ids: &[usize]| ids.iter().map(|&i| v[i]).sum::<f64>() / ids.len() as f64;
    let mut rows: Vec<(String, usize, f64, f64, f64)> = by_label
        .iter()
        .map(|(l, ids)| {
            (l.to_string(), ids.len(), mean(&clean, ids), ids.iter().filter(|&&i| clean[i] > 0.0).count() as f64 / ids.len() as f64, mean(&corrupted, ids))
        })
        .collect();
    let all: Vec<usize> = (0..prompts.len()).collect();
    rows.push((
        "all".into(),
        all.len(),
        mean(&clean, &all),
        clean.iter().filter(|x| **x > 0.0).count() as f64 / all.len().max(1) as f64,
        mean(&corrupted, &all),
    ));
    Ok(Behaviour { name: name.to_string(), metric: prompts.metric.name().to_string(), rows })
}

impl Behaviour {
    /// A report section and `behaviour.parquet/csv`.
    pub fn write(&self, out: &mut Output) -> Result<()> {
        out.report.section(&format!("Behaviour: {}", self.name));
        let all = self.rows.last().ok_or_else(|| Error::Input("no prompts".into()))?;
        out.report.paragraph(&format!(
            "{} prompts, metric {}: {:.3} on the clean prompts ({:.0}% above 0), {:.3} on the corrupted ones; per label below. No prompt is left out.",
            all.1,
            self.metric,
            all.2,
            100.0 * all.3,
            all.4
        ));
        let mut table = Table::new(&["label", "prompts", "clean", "share_positive", "corrupted"]);
        for (l, n, c, p, x) in &self.rows {
            table.push(vec![l.clone().into(), (*n).into(), (*c).into(), (*p).into(), (*x).into()]);
        }
        out.table("behaviour", &format!("{} per label", self.metric), &table)
    }
}

/// The logit lens's view of prompts' answers: the residual stream after each block, through the
/// final norm and the unembedding, at each prompt's last position.
pub struct LogitLens {
    /// Prompt sets, each with per layer (after block l): the mean rank of the answer (0 = top)
    /// and the share of prompts where it is the top token.
    pub sets: Vec<(String, Vec<f64>, Vec<f64>)>,
}

/// A named prompt set for [`logit_lens`]: each prompt's tokens and its answer token.
pub type LensPrompts<'a> = (&'a str, Vec<(Vec<i64>, i64)>);

/// The answer's rank at each layer for each prompt set.
pub fn logit_lens(model: &HookedTransformer, sets: &[LensPrompts]) -> Result<LogitLens> {
    let l_n = model.cfg.n_layers;
    let mut out = Vec::new();
    for (name, prompts) in sets {
        if prompts.is_empty() {
            return Err(Error::Input(format!("no prompts in `{name}`")));
        }
        let (mut rank, mut top) = (vec![0.0; l_n], vec![0.0; l_n]);
        for (tokens, answer) in prompts {
            let t = Tensor::f_from_slice(tokens)?.f_view([1, -1])?.f_to_device(model.device())?;
            let (_, cache) = model.run_with_cache(&t, CacheSpec::names([BlockSite::ResidPost]))?;
            let last: Vec<Tensor> =
                (0..l_n).map(|l| Ok(cache.get(HookPoint::block(l, interp_core::BlockSite::ResidPost))?.f_select(1, -1)?)).collect::<Result<_>>()?;
            let stacked = Tensor::f_stack(&last, 0)?; // [L, 1, D]
            let logits = model.runner_from_layer(&stacked, l_n).run()?.output.f_select(1, 0)?.f_to_kind(Kind::Float)?; // [L, V]
            let own = logits.f_select(1, *answer)?.f_unsqueeze(1)?;
            let ranks = Vec::<f64>::try_from(&logits.f_gt_tensor(&own)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?)?;
            for (l, r) in ranks.iter().enumerate() {
                rank[l] += r / prompts.len() as f64;
                top[l] += f64::from(u8::from(*r == 0.0)) / prompts.len() as f64;
            }
        }
        out.push((name.to_string(), rank, top));
    }
    Ok(LogitLens { sets: out })
}

impl LogitLens {
    /// A report section, a chart of the mean rank per layer (`logit_lens`, log scale by the
    /// rank + 1) and `logit_lens.parquet/csv`.
    pub fn write(&self, out: &mut Output) -> Result<()> {
        out.report.section("Logit lens");
        let mut table = Table::new(&["prompts", "layer", "mean_rank", "share_top1"]);
        let mut series = Vec::new();
        let mut found = Vec::new();
        for (name, rank, top) in &self.sets {
            for (l, (r, t)) in rank.iter().zip(top).enumerate() {
                table.push(vec![name.clone().into(), l.into(), (*r).into(), (*t).into()]);
            }
            series.push(Series {
                name: format!("{name}: log10(mean rank + 1)"),
                points: rank.iter().enumerate().map(|(l, r)| (l as f64, (r + 1.0).log10())).collect(),
            });
            let first = top.iter().position(|t| *t >= 0.5);
            found.push(match first {
                Some(l) => format!("{name}: the answer is the top token for most prompts from block {l} on"),
                None => format!("{name}: the answer is the top token for most prompts at no block"),
            });
        }
        out.report.paragraph(&format!(
            "The residual stream after each block read through the final norm and the unembedding at the last position. {}.",
            found.join("; ")
        ));
        out.chart("logit_lens", "rank of the answer by layer", |path| {
            line_chart(path, "logit lens: rank of the answer", "block", "log10(mean rank + 1)", &series)
        })?;
        out.table("logit_lens", "answer rank per layer", &table)
    }
}
