//! Metrics of a run's next-token prediction at each prompt's answer position (its last token). Each is built from
//! differentiable tensor operations, so it can drive gradients (EAP, EAP-IG) as well as patching.

use interp_core::{at_rows, HookedTransformer};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// What a metric measures at each prompt's answer position.
pub enum MetricKind {
    /// logit(answer) - logit(wrong). `answer`, `wrong`: [n] int64.
    LogitDiff {
        /// [n] int64.
        answer: Tensor,
        /// [n] int64.
        wrong: Tensor,
    },
    /// P(answer). `answer`: [n] int64.
    Probability {
        /// [n] int64.
        answer: Tensor,
    },
    /// Probability mass on each prompt's positive tokens minus that on its negative tokens.
    /// `positive`, `negative`: [n, k] int64 token ids per prompt, padded with -1.
    ProbDiff {
        /// [n, k] int64, -1 past each prompt's set.
        positive: Tensor,
        /// [n, k'] int64, -1 past each prompt's set.
        negative: Tensor,
    },
    /// KL(clean || run) of the next-token distribution. `clean_logprobs`: [n, d_vocab] f32.
    Kl {
        /// [n, d_vocab] f32.
        clean_logprobs: Tensor,
    },
    /// Cross-entropy of the answer, -log P(answer). `answer`: [n] int64.
    CrossEntropy {
        /// [n] int64.
        answer: Tensor,
    },
}

/// A metric of `n` prompts' next-token predictions, read at each prompt's answer position: the
/// last position, or `positions` [n] for right-padded batches of prompts of different lengths.
pub struct Metric {
    /// What is measured.
    pub kind: MetricKind,
    /// [n] int64 answer position per prompt; `None`: the last position.
    pub positions: Option<Tensor>,
}

impl From<MetricKind> for Metric {
    fn from(kind: MetricKind) -> Metric {
        Metric { kind, positions: None }
    }
}

/// The metrics a prompt file can be scored by (`--metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MetricName {
    /// logit(answer) - logit(wrong); needs one answer and one wrong token per prompt.
    LogitDiff,
    /// P(answer), summed over the answer tokens.
    Prob,
    /// P(answers) - P(wrongs).
    ProbDiff,
    /// KL divergence from the clean run's next-token distribution.
    Kl,
}

impl Metric {
    /// logit(answer) - logit(wrong), `answer` and `wrong` [n] int64.
    pub fn logit_diff(answer: Tensor, wrong: Tensor) -> Metric {
        MetricKind::LogitDiff { answer, wrong }.into()
    }

    /// P(answer), `answer` [n] int64.
    pub fn probability(answer: Tensor) -> Metric {
        MetricKind::Probability { answer }.into()
    }

    /// -log P(answer), `answer` [n] int64.
    pub fn cross_entropy(answer: Tensor) -> Metric {
        MetricKind::CrossEntropy { answer }.into()
    }

    /// The same metric read at `positions` [n] int64 (each prompt's answer position).
    pub fn at(self, positions: Tensor) -> Metric {
        Metric { positions: Some(positions), ..self }
    }

    /// KL to the clean run's prediction, from its logits [n, pos, d_vocab], read at `positions`
    /// [n] (default: the last position).
    pub fn kl_to(clean_logits: &Tensor, positions: Option<&Tensor>) -> Result<Metric> {
        let at = answer_logits(clean_logits, positions)?.f_to_kind(Kind::Float)?;
        let kind = MetricKind::Kl { clean_logprobs: at.f_log_softmax(-1, Kind::Float)?.f_detach()? };
        Ok(Metric { kind, positions: positions.map(|p| p.shallow_clone()) })
    }

    /// `P(positive) - P(negative)` over per-prompt token sets (a token in both counts in both).
    pub fn prob_diff(positive: &[Vec<i64>], negative: &[Vec<i64>], d_vocab: i64) -> Result<Metric> {
        if positive.len() != negative.len() {
            return Err(Error::Input(format!("{} positive token sets but {} negative ones", positive.len(), negative.len())));
        }
        // Sets as rows of ids padded with -1: memory grows with the sets, not with the vocabulary.
        let padded = |sets: &[Vec<i64>]| -> Result<Tensor> {
            let mut sets: Vec<Vec<i64>> = sets.to_vec();
            for set in &mut sets {
                if let Some(&t) = set.iter().find(|t| !(0..d_vocab).contains(*t)) {
                    return Err(interp_core::Error::TokenOutOfVocabulary { id: t, d_vocab }.into());
                }
                set.sort_unstable();
                set.dedup();
            }
            let width = sets.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let flat: Vec<i64> = sets.iter().flat_map(|set| set.iter().copied().chain(std::iter::repeat(-1)).take(width)).collect();
            Ok(Tensor::f_from_slice(&flat)?.f_view([sets.len() as i64, width as i64])?)
        };
        Ok(MetricKind::ProbDiff { positive: padded(positive)?, negative: padded(negative)? }.into())
    }

    /// The same metric read at the last position: for logits already taken at each answer
    /// position.
    pub fn at_last(&self) -> Metric {
        let kind = match &self.kind {
            MetricKind::LogitDiff { answer, wrong } => MetricKind::LogitDiff { answer: answer.shallow_clone(), wrong: wrong.shallow_clone() },
            MetricKind::Probability { answer } => MetricKind::Probability { answer: answer.shallow_clone() },
            MetricKind::ProbDiff { positive, negative } => MetricKind::ProbDiff { positive: positive.shallow_clone(), negative: negative.shallow_clone() },
            MetricKind::Kl { clean_logprobs } => MetricKind::Kl { clean_logprobs: clean_logprobs.shallow_clone() },
            MetricKind::CrossEntropy { answer } => MetricKind::CrossEntropy { answer: answer.shallow_clone() },
        };
        Metric { kind, positions: None }
    }

    /// The metric per variant [V] from the residual stream after the last block, `resid`
    /// [V * n, pos, d_model] (variant-major): the final norm and the unembedding run only at each
    /// prompt's answer position, not at every position.
    pub fn per_variant_of_residual(&self, model: &HookedTransformer, resid: &Tensor) -> Result<Tensor> {
        let size = resid.size();
        let n = self.n_prompts();
        if size.len() != 3 || n == 0 || size[0] % n != 0 {
            return Err(Error::Shape {
                what: format!("the final residual for the metric's {n} prompts"),
                expected: format!("[k * {n}, pos, d_model]"),
                found: size,
            });
        }
        let rows = self.answer_rows(size[0], size[1], resid.device())?;
        let logits = model.runner_from_layer(&at_rows(resid, &rows)?, model.cfg.n_layers).run()?.output;
        self.at_last().per_variant(&logits)
    }

    /// Each row's answer position [rows] int64 in a batch of `rows` rows (copies of the prompts,
    /// variant-major) of `pos` positions: `positions`, or the last.
    pub(crate) fn answer_rows(&self, rows: i64, pos: i64, device: Device) -> Result<Tensor> {
        Ok(match &self.positions {
            Some(p) => p.f_to_device(device)?.f_repeat([rows / self.n_prompts().max(1)])?,
            None => Tensor::f_full([rows], pos - 1, (Kind::Int64, device))?,
        })
    }

    /// The metric of prompts `start .. start + len` alone.
    pub fn narrow(&self, start: i64, len: i64) -> Result<Metric> {
        self.map_rows(|t| t.f_narrow(0, start, len))
    }

    /// The metric of the prompts at `rows` [k] int64 alone, in that order.
    pub fn select(&self, rows: &Tensor) -> Result<Metric> {
        self.map_rows(|t| t.f_index_select(0, &rows.f_to_device(t.device())?))
    }

    /// The metric with `rows` applied to each per-prompt tensor.
    fn map_rows(&self, rows: impl Fn(&Tensor) -> std::result::Result<Tensor, tch::TchError>) -> Result<Metric> {
        let kind = match &self.kind {
            MetricKind::LogitDiff { answer, wrong } => MetricKind::LogitDiff { answer: rows(answer)?, wrong: rows(wrong)? },
            MetricKind::Probability { answer } => MetricKind::Probability { answer: rows(answer)? },
            MetricKind::ProbDiff { positive, negative } => MetricKind::ProbDiff { positive: rows(positive)?, negative: rows(negative)? },
            MetricKind::Kl { clean_logprobs } => MetricKind::Kl { clean_logprobs: rows(clean_logprobs)? },
            MetricKind::CrossEntropy { answer } => MetricKind::CrossEntropy { answer: rows(answer)? },
        };
        Ok(Metric { kind, positions: self.positions.as_ref().map(&rows).transpose()? })
    }

    /// The mean over prompts of the metric of `model` on `tokens` [n, pos], `max_rows` prompts
    /// per forward at most.
    pub fn value_in_chunks(&self, model: &HookedTransformer, tokens: &Tensor, max_rows: i64) -> Result<f64> {
        let n = self.n_prompts();
        let mut sum = 0.0;
        let mut start = 0;
        while start < n {
            let len = max_rows.max(1).min(n - start);
            let logits = model.forward(&tokens.f_narrow(0, start, len)?.f_to_device(model.device())?)?;
            sum += self.narrow(start, len)?.value(&logits)? * len as f64;
            start += len;
        }
        Ok(sum / n as f64)
    }

    /// A short name for tables (`logit_diff`, `kl`, ...).
    pub fn name(&self) -> &'static str {
        match self.kind {
            MetricKind::LogitDiff { .. } => "logit_diff",
            MetricKind::Probability { .. } => "probability",
            MetricKind::ProbDiff { .. } => "prob_diff",
            MetricKind::Kl { .. } => "kl",
            MetricKind::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// KL and cross-entropy measure damage; the others measure the behaviour itself.
    pub fn lower_is_better(&self) -> bool {
        matches!(self.kind, MetricKind::Kl { .. } | MetricKind::CrossEntropy { .. })
    }

    /// The number of prompts the metric was built for.
    pub fn n_prompts(&self) -> i64 {
        match &self.kind {
            MetricKind::LogitDiff { answer, .. } | MetricKind::Probability { answer } | MetricKind::CrossEntropy { answer } => answer.size()[0],
            MetricKind::ProbDiff { positive, .. } => positive.size()[0],
            MetricKind::Kl { clean_logprobs } => clean_logprobs.size()[0],
        }
    }

    /// The metric per row of `logits` [r, pos, d_vocab], where the rows are `r / n` copies
    /// (variants) of the `n` prompts, variant-major. Returns [r] f32.
    pub fn per_prompt(&self, logits: &Tensor) -> Result<Tensor> {
        let n = self.n_prompts();
        let size = logits.size();
        if size.len() != 3 || n == 0 || size[0] % n != 0 {
            return Err(Error::Shape { what: format!("logits for the metric's {n} prompts"), expected: format!("[k * {n}, pos, d_vocab]"), found: size });
        }
        let variants = size[0] / n;
        // f64 models are scored in f64 (finite-difference checks), others in f32.
        let k = if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let positions = match &self.positions {
            Some(p) => Some(p.f_repeat([variants])?),
            None => None,
        };
        let last = answer_logits(logits, positions.as_ref())?.f_to_kind(k)?; // [r, vocab]
        let device = last.device();
        let tile = |t: &Tensor| -> Result<Tensor> {
            let t = t.f_to_device(device)?;
            let t = if t.is_floating_point() { t.f_to_kind(k)? } else { t };
            let mut reps = vec![1i64; t.dim()];
            reps[0] = variants;
            Ok(t.f_repeat(reps.as_slice())?)
        };
        let pick = |t: &Tensor, idx: &Tensor| -> Result<Tensor> { Ok(t.f_gather(1, &tile(idx)?.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?) };
        Ok(match &self.kind {
            MetricKind::LogitDiff { answer, wrong } => pick(&last, answer)?.f_sub(&pick(&last, wrong)?)?,
            MetricKind::Probability { answer } => pick(&last.f_softmax(-1, k)?, answer)?,
            MetricKind::ProbDiff { positive, negative } => {
                let probs = last.f_softmax(-1, k)?;
                // Probability mass on a padded set: gather its ids, zero the padding.
                let mass = |ids: &Tensor| -> Result<Tensor> {
                    let ids = tile(ids)?;
                    let real = ids.f_ge(0)?.f_to_kind(k)?;
                    Ok(probs.f_gather(1, &ids.f_clamp_min(0)?, false)?.f_mul(&real)?.f_sum_dim_intlist(1, false, k)?)
                };
                mass(positive)?.f_sub(&mass(negative)?)?
            }
            MetricKind::Kl { clean_logprobs } => {
                let clean = tile(clean_logprobs)?;
                let logp = last.f_log_softmax(-1, k)?;
                clean.f_exp()?.f_mul(&clean.f_sub(&logp)?)?.f_sum_dim_intlist(1, false, k)?
            }
            MetricKind::CrossEntropy { answer } => pick(&last.f_log_softmax(-1, k)?, answer)?.f_neg()?,
        })
    }

    /// The metric averaged over the prompts of each variant: [r / n].
    pub fn per_variant(&self, logits: &Tensor) -> Result<Tensor> {
        let rows = self.per_prompt(logits)?;
        Ok(rows.f_view([-1, self.n_prompts()])?.f_mean_dim(1, false, rows.kind())?)
    }

    /// The mean over prompts of a single run's logits [n, pos, d_vocab].
    pub fn value(&self, logits: &Tensor) -> Result<f64> {
        let rows = self.per_prompt(logits)?;
        Ok(rows.f_mean(rows.kind())?.f_double_value(&[])?)
    }

    /// The metric as a loss: what ACDC and the faithfulness curves minimise.
    pub(crate) fn as_loss(&self, value: f64) -> f64 {
        if self.lower_is_better() {
            value
        } else {
            -value
        }
    }
}

/// Logits [r, d_vocab] at each row's answer position: `positions` [r] int64, or the last.
pub(crate) fn answer_logits(logits: &Tensor, positions: Option<&Tensor>) -> Result<Tensor> {
    let Some(p) = positions else { return Ok(logits.f_select(1, -1)?) };
    let size = logits.size();
    if p.size() != [size[0]] {
        return Err(Error::Shape { what: "answer positions".into(), expected: format!("[{}], one per row of the logits", size[0]), found: p.size() });
    }
    let idx = p.f_to_device(logits.device())?.f_view([-1, 1, 1])?.f_expand([size[0], 1, size[2]], false)?;
    Ok(logits.f_gather(1, &idx, false)?.f_squeeze_dim(1)?)
}

/// Clean and corrupted prompts must align token for token.
pub fn check_aligned(clean: &Tensor, corrupted: &Tensor) -> Result<()> {
    if clean.dim() != 2 || clean.size() != corrupted.size() {
        return Err(Error::Input(format!(
            "clean prompts {:?} and corrupted prompts {:?} must be [n, pos] of the same shape, so that positions align",
            clean.size(),
            corrupted.size()
        )));
    }
    Ok(())
}

/// `(clean, corrupted)` metric values, or [`Error::NothingToExplain`] if they are equal.
pub fn clean_and_corrupted(metric: &Metric, clean_logits: &Tensor, corrupted_logits: &Tensor) -> Result<(f64, f64)> {
    let (c, x) = (metric.value(clean_logits)?, metric.value(corrupted_logits)?);
    check_gap(metric, c, x)?;
    Ok((c, x))
}

/// [`Error::NothingToExplain`] if the metric's values on the full and the ablated model agree.
pub fn check_gap(metric: &Metric, full: f64, ablated: f64) -> Result<()> {
    if (full - ablated).abs() <= 1e-6 * full.abs().max(ablated.abs()).max(1e-3) {
        return Err(Error::NothingToExplain { metric: metric.name().into(), value: full });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() -> Result<()> {
        // Two prompts, vocab 3, one position; logits chosen so every metric has a known value.
        let logits = Tensor::f_from_slice(&[0f32, 1.0, 2.0, 2.0, 0.0, 0.0])?.f_view([2, 1, 3])?;
        let answer = Tensor::f_from_slice(&[2i64, 0])?;
        let wrong = Tensor::f_from_slice(&[0i64, 1])?;
        let ld = Metric::logit_diff(answer.shallow_clone(), wrong);
        assert!((ld.value(&logits)? - 2.0).abs() < 1e-6);
        let p = Metric::probability(answer.shallow_clone());
        let e = std::f64::consts::E;
        let p0 = e * e / (1.0 + e + e * e);
        let p1 = e * e / (e * e + 2.0);
        assert!((p.value(&logits)? - (p0 + p1) / 2.0).abs() < 1e-6);
        let ce = Metric::cross_entropy(answer);
        assert!((ce.value(&logits)? + (p0.ln() + p1.ln()) / 2.0).abs() < 1e-5);
        let kl = Metric::kl_to(&logits, None)?;
        assert!(kl.value(&logits)?.abs() < 1e-6);
        let pd = Metric::prob_diff(&[vec![2], vec![0]], &[vec![0, 1], vec![1, 2]], 3)?;
        assert!((pd.value(&logits)? - ((2.0 * p0 - 1.0) + (2.0 * p1 - 1.0)) / 2.0).abs() < 1e-6);
        // Variants stacked along the batch axis are scored separately.
        let two = Tensor::f_cat(&[&logits, &logits.f_mul_scalar(0.0)?], 0)?;
        let v = Vec::<f32>::try_from(&kl.per_variant(&two)?)?;
        assert!(v[0].abs() < 1e-6 && v[1] > 0.1);
        assert!(matches!(clean_and_corrupted(&ld, &logits, &logits), Err(Error::NothingToExplain { .. })));
        Ok(())
    }
}
