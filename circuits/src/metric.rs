//! Metrics of a run's next-token prediction at the last position of each prompt. Each is built from
//! differentiable tensor operations, so it can drive gradients (EAP, EAP-IG) as well as patching.

use interp_core::tasks::{Task, TaskBatch, TaskVocab};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// What to measure at the last position of each of `n` prompts.
pub enum Metric {
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
    /// `weights`: [n, d_vocab] f32 holding +1, -1 or 0.
    ProbDiff {
        /// [n, d_vocab] f32.
        weights: Tensor,
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

impl Metric {
    /// KL to the clean run's prediction, from its logits [n, pos, d_vocab].
    pub fn kl_to(clean_logits: &Tensor) -> Result<Metric> {
        let last = clean_logits.f_select(1, -1)?.f_to_kind(Kind::Float)?;
        Ok(Metric::Kl { clean_logprobs: last.f_log_softmax(-1, Kind::Float)?.f_detach()? })
    }

    /// `P(positive) - P(negative)` over per-prompt token sets.
    pub fn prob_diff(positive: &[Vec<i64>], negative: &[Vec<i64>], d_vocab: i64) -> Result<Metric> {
        if positive.len() != negative.len() {
            return Err(Error::Input(format!("{} positive token sets but {} negative ones", positive.len(), negative.len())));
        }
        let mut w = vec![0f32; positive.len() * d_vocab as usize];
        for (row, (pos, neg)) in positive.iter().zip(negative).enumerate() {
            for (set, sign) in [(pos, 1f32), (neg, -1f32)] {
                for &t in set {
                    if !(0..d_vocab).contains(&t) {
                        return Err(interp_core::Error::TokenOutOfVocabulary { id: t, d_vocab }.into());
                    }
                    w[row * d_vocab as usize + t as usize] = sign;
                }
            }
        }
        Ok(Metric::ProbDiff { weights: Tensor::f_from_slice(&w)?.f_view([positive.len() as i64, d_vocab])? })
    }

    /// The usual metric of a built-in task: IOI logit(IO) - logit(S); greater-than
    /// P(year > YY) - P(year <= YY); facts and modular addition P(answer) (the causal-tracing
    /// metric). Induction has no single answer at the last position: use [`Metric::kl_to`] or
    /// [`TaskPrompts`], which cuts the prompt.
    pub fn for_task(task: Task, vocab: &TaskVocab, batch: &TaskBatch) -> Result<Metric> {
        Ok(match task {
            Task::Ioi => Metric::LogitDiff { answer: batch.answer.shallow_clone(), wrong: batch.wrong.shallow_clone() },
            Task::GreaterThan => {
                let yy: Vec<i64> = Vec::<i64>::try_from(&batch.wrong)?;
                let (mut above, mut below) = (Vec::new(), Vec::new());
                for t in yy {
                    let y: usize = vocab.word(t).parse().map_err(|_| Error::Input(format!("`{}` is not a year", vocab.word(t))))?;
                    let ids = |r: std::ops::Range<usize>| r.map(|y| vocab.id(&format!("{y:02}"))).collect::<interp_core::Result<Vec<i64>>>();
                    above.push(ids(y + 1..100)?);
                    below.push(ids(0..y + 1)?);
                }
                Metric::prob_diff(&above, &below, vocab.len() as i64)?
            }
            Task::Facts | Task::ModularAddition => Metric::Probability { answer: batch.answer.shallow_clone() },
            Task::Induction { .. } => {
                return Err(Error::Input("induction prompts have no single answer at the last position; use Metric::kl_to".into()))
            }
        })
    }

    /// A short name for tables (`logit_diff`, `kl`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Metric::LogitDiff { .. } => "logit_diff",
            Metric::Probability { .. } => "probability",
            Metric::ProbDiff { .. } => "prob_diff",
            Metric::Kl { .. } => "kl",
            Metric::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// KL and cross-entropy measure damage; the others measure the behaviour itself.
    pub fn lower_is_better(&self) -> bool {
        matches!(self, Metric::Kl { .. } | Metric::CrossEntropy { .. })
    }

    /// The number of prompts the metric was built for.
    pub fn n_prompts(&self) -> i64 {
        match self {
            Metric::LogitDiff { answer, .. } | Metric::Probability { answer } | Metric::CrossEntropy { answer } => answer.size()[0],
            Metric::ProbDiff { weights } => weights.size()[0],
            Metric::Kl { clean_logprobs } => clean_logprobs.size()[0],
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
        let last = logits.f_select(1, -1)?.f_to_kind(k)?; // [r, vocab]
        let device = last.device();
        let tile = |t: &Tensor| -> Result<Tensor> {
            let t = t.f_to_device(device)?;
            let t = if t.is_floating_point() { t.f_to_kind(k)? } else { t };
            let mut reps = vec![1i64; t.dim()];
            reps[0] = variants;
            Ok(t.f_repeat(reps.as_slice())?)
        };
        let pick = |t: &Tensor, idx: &Tensor| -> Result<Tensor> { Ok(t.f_gather(1, &tile(idx)?.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?) };
        Ok(match self {
            Metric::LogitDiff { answer, wrong } => pick(&last, answer)?.f_sub(&pick(&last, wrong)?)?,
            Metric::Probability { answer } => pick(&last.f_softmax(-1, k)?, answer)?,
            Metric::ProbDiff { weights } => last.f_softmax(-1, k)?.f_mul(&tile(weights)?)?.f_sum_dim_intlist(1, false, k)?,
            Metric::Kl { clean_logprobs } => {
                let clean = tile(clean_logprobs)?;
                let logp = last.f_log_softmax(-1, k)?;
                clean.f_exp()?.f_mul(&clean.f_sub(&logp)?)?.f_sum_dim_intlist(1, false, k)?
            }
            Metric::CrossEntropy { answer } => pick(&last.f_log_softmax(-1, k)?, answer)?.f_neg()?,
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

/// Clean and corrupted prompts of a built-in task with its metric.
pub struct TaskPrompts {
    /// [n, pos] int64.
    pub clean: Tensor,
    /// [n, pos] int64, aligned with `clean`.
    pub corrupted: Tensor,
    /// The task's metric.
    pub metric: Metric,
    /// The answer token per prompt [n].
    pub answer: Tensor,
    /// Each prompt's label (its template or kind).
    pub labels: Vec<String>,
}

impl TaskPrompts {
    /// `n` prompts of `task` from `seed` with the task's metric ([`Metric::for_task`]). Induction
    /// prompts are cut before their last token, which becomes the answer, and scored by
    /// logit(answer) - logit(the corrupted prompt's next token).
    pub fn new(task: Task, vocab: &TaskVocab, n: usize, seed: u64) -> Result<TaskPrompts> {
        let batch = task.generate(vocab, n, seed)?;
        if let Task::Induction { .. } = task {
            let len = batch.clean.size()[1];
            let answer = batch.clean.f_select(1, len - 1)?;
            let wrong = batch.corrupted.f_select(1, len - 1)?;
            return Ok(TaskPrompts {
                clean: batch.clean.f_narrow(1, 0, len - 1)?,
                corrupted: batch.corrupted.f_narrow(1, 0, len - 1)?,
                metric: Metric::LogitDiff { answer: answer.shallow_clone(), wrong },
                answer,
                labels: batch.labels,
            });
        }
        let metric = Metric::for_task(task, vocab, &batch)?;
        Ok(TaskPrompts { clean: batch.clean, corrupted: batch.corrupted, metric, answer: batch.answer, labels: batch.labels })
    }
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
pub(crate) fn check_gap(metric: &Metric, full: f64, ablated: f64) -> Result<()> {
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
        let ld = Metric::LogitDiff { answer: answer.shallow_clone(), wrong };
        assert!((ld.value(&logits)? - 2.0).abs() < 1e-6);
        let p = Metric::Probability { answer: answer.shallow_clone() };
        let e = std::f64::consts::E;
        let p0 = e * e / (1.0 + e + e * e);
        let p1 = e * e / (e * e + 2.0);
        assert!((p.value(&logits)? - (p0 + p1) / 2.0).abs() < 1e-6);
        let ce = Metric::CrossEntropy { answer };
        assert!((ce.value(&logits)? + (p0.ln() + p1.ln()) / 2.0).abs() < 1e-5);
        let kl = Metric::kl_to(&logits)?;
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
