//! Text helpers on the model, and `generate` with a KV cache and hooks active.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::forward::{Input, KvCache, Run};
use crate::hooks::Hooks;
use crate::model::HookedTransformer;
use crate::rng::Rng;
use crate::tokenizer::tensor_ids;

/// How `generate` picks the next token. `temperature == 0` is greedy.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// Tokens to add to every row.
    pub max_new_tokens: usize,
    /// 0: greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<i64>,
    /// Keep the smallest set of tokens whose probability reaches p (nucleus sampling).
    pub top_p: Option<f64>,
    /// Draws from the toolkit's own generator seeded with this, for sampling that repeats on every
    /// machine; `None` draws from libtorch's generator (never reseeded here).
    pub seed: Option<i64>,
    /// Stop a row once it produces this token (it is then padded with it).
    pub eos_token_id: Option<i64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { max_new_tokens: 20, temperature: 0.0, top_k: None, top_p: None, seed: None, eos_token_id: None }
    }
}

impl HookedTransformer {
    /// Tokens [1, pos] of `text`, BOS first if `prepend_bos`.
    pub fn to_tokens(&self, text: &str, prepend_bos: bool) -> Result<Tensor> {
        Ok(self.require_tokenizer("to tokenize text")?.to_tokens(text, prepend_bos)?.f_to_device(self.device)?)
    }

    /// Each token of `tokens` ([pos] or [1, pos]) as a string.
    pub fn to_str_tokens(&self, tokens: &Tensor) -> Result<Vec<String>> {
        self.require_tokenizer("to show tokens as text")?.to_str_tokens(&tensor_ids(tokens)?)
    }

    /// The text of `tokens` [1, pos] (or [pos]).
    pub fn to_string(&self, tokens: &Tensor) -> Result<String> {
        self.require_tokenizer("to decode tokens")?.decode(&tensor_ids(tokens)?)
    }

    /// Continues `tokens` [batch, pos] by `sampling.max_new_tokens`, one forward per new token on
    /// a KV cache, with `hooks` active at every step (they see only the new positions; `HookCtx`
    /// gives the absolute offset). Padded prompts must be left-padded, with `attention_mask`.
    ///
    /// Returns tokens [batch, pos + new].
    pub fn generate(&self, tokens: &Tensor, attention_mask: Option<&Tensor>, sampling: &Sampling, hooks: Hooks<'_>) -> Result<Tensor> {
        if sampling.temperature.is_nan() || sampling.temperature < 0.0 {
            return Err(Error::setting("temperature", sampling.temperature, "0 (greedy) or more"));
        }
        if let Some(k) = sampling.top_k.filter(|k| *k < 1) {
            return Err(Error::setting("top_k", k, "at least 1"));
        }
        if let Some(p) = sampling.top_p.filter(|p| p.is_nan() || *p <= 0.0 || *p > 1.0) {
            return Err(Error::setting("top_p", p, "in (0, 1]"));
        }
        if !self.cfg.causal {
            return Err(Error::Input("generate needs a causal model: with bidirectional attention earlier positions change as tokens are added".into()));
        }
        let mut rng = sampling.seed.map(|s| Rng::new(s as u64));
        let _guard = tch::no_grad_guard();
        let mut mask = match attention_mask {
            Some(m) => {
                let m = m.f_to_device(self.device)?.f_to_kind(Kind::Int64)?;
                if m.dim() == 2 && m.size()[1] > 0 && m.f_select(1, -1)?.f_eq(0)?.f_any()?.int64_value(&[]) != 0 {
                    return Err(Error::Input("generate needs left padding: the last position of every row must be a real token".into()));
                }
                Some(m)
            }
            None => None,
        };
        let mut run = Run::new(self, hooks, None, None, None)?;
        let mut kv = KvCache::new(self.cfg.n_layers);
        let mut all = tokens.f_to_device(self.device)?;
        let mut next_input = all.shallow_clone();
        let batch = all.size().first().copied().unwrap_or(0);
        let mut done = Tensor::f_zeros([batch], (Kind::Bool, self.device))?;
        for _ in 0..sampling.max_new_tokens {
            let logits = self.run_forward(&mut run, &Input::Tokens(&next_input), mask.as_ref(), None, Some(&mut kv))?;
            let last = logits.f_select(1, -1)?.f_to_kind(Kind::Float)?; // [batch, vocab]
            let mut next = self.sample(&last, sampling, rng.as_mut())?;
            if let Some(eos) = sampling.eos_token_id {
                next = next.f_masked_fill(&done, eos)?;
                done = done.f_logical_or(&next.f_eq(eos)?)?;
            }
            let next = next.f_unsqueeze(1)?;
            all = Tensor::f_cat(&[&all, &next], 1)?;
            if let Some(m) = &mask {
                mask = Some(Tensor::f_cat(&[m, &m.f_ones_like()?.f_narrow(1, 0, 1)?], 1)?);
            }
            next_input = next;
            if sampling.eos_token_id.is_some() && done.f_all()?.int64_value(&[]) != 0 {
                break;
            }
        }
        Ok(all)
    }

    /// Next tokens [batch] from last-position logits [batch, vocab] (f32).
    fn sample(&self, logits: &Tensor, s: &Sampling, rng: Option<&mut Rng>) -> Result<Tensor> {
        if s.temperature == 0.0 {
            return Ok(logits.f_argmax(-1, false)?);
        }
        let mut logits = logits.f_div_scalar(s.temperature)?;
        if let Some(k) = s.top_k {
            let k = k.min(logits.size()[1]);
            let (top, _) = logits.f_topk(k, -1, true, true)?;
            let kth = top.f_narrow(1, k - 1, 1)?;
            logits = logits.f_masked_fill(&logits.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
        }
        if let Some(p) = s.top_p {
            let (sorted, order) = logits.f_sort(-1, true)?;
            let cum = sorted.f_softmax(-1, Kind::Float)?.f_cumsum(-1, Kind::Float)?;
            // Drop a token when the tokens before it already reach p (the first always stays).
            let before = cum.f_sub(&sorted.f_softmax(-1, Kind::Float)?)?;
            let drop_sorted = before.f_ge(p)?;
            let drop = drop_sorted.f_scatter(-1, &order, &drop_sorted)?;
            logits = logits.f_masked_fill(&drop, f64::NEG_INFINITY)?;
        }
        let probs = logits.f_softmax(-1, Kind::Double)?;
        let Some(rng) = rng else { return Ok(probs.f_multinomial(1, false)?.f_squeeze_dim(1)?) };
        // Inverse CDF: the first token whose cumulative probability exceeds a uniform draw.
        let cum = probs.f_cumsum(-1, Kind::Double)?;
        let total = cum.f_narrow(1, -1, 1)?;
        let u: Vec<f64> = (0..probs.size()[0]).map(|_| rng.uniform()).collect();
        let u = Tensor::f_from_slice(&u)?.f_to_device(probs.device())?.f_unsqueeze(1)?.f_mul(&total)?;
        let next = u.f_searchsorted(&cum, false, true, "right", None::<Tensor>)?.f_squeeze_dim(1)?;
        Ok(next.f_clamp_max(probs.size()[1] - 1)?)
    }
}
