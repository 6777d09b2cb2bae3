//! Prompt sets for circuit analysis: clean/corrupted pairs with their answers, from a built-in
//! task or from a JSONL file, batched with right padding; and causal-tracing prompts from JSONL.
//!
//! A pair file has one JSON object per line:
//!
//! ```text
//! {"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "When Alice and Bob went to the store, Carl gave a drink to", "answer": " Mary", "wrong": " John", "label": "ABBA"}
//! {"clean_ids": [50256, 818, 257], "corrupted_ids": [50256, 818, 262], "answer": 1110, "wrong": [262, 257]}
//! ```
//!
//! Text is tokenized with the model's tokenizer, BOS first when the model has one. `answer` and
//! `wrong` are a string that must be a single token, a token id, or a list of these (scored as a
//! set by the probability metrics). The two prompts of a pair have the same length (position-wise
//! patching compares them token for token); pairs may differ in length. A batch is right-padded:
//! under causal attention no real token sees the padding, and each metric reads each prompt's own
//! last token.
//!
//! A tracing file has `prompt`, `subject` (a substring of the prompt), `answer` and optional `label`.

use std::io::Write;
use std::path::Path;

use interp_core::tasks::{Task, TaskVocab};
use interp_core::{HookedTransformer, Tokenizer};
use serde_json::{json, Map, Value};
use tch::Tensor;

use crate::causal_tracing::TracePrompt;
use crate::error::{Error, LineError, Result};
use crate::metric::{Metric, MetricName};

/// One clean/corrupted pair, as token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptPair {
    /// Clean prompt, BOS first if the model uses one.
    pub clean: Vec<i64>,
    /// Corrupted prompt, as long as `clean`.
    pub corrupted: Vec<i64>,
    /// Tokens counted as the right answer (one for the logit difference).
    pub answers: Vec<i64>,
    /// Tokens the answer is contrasted with (may be empty).
    pub wrongs: Vec<i64>,
    /// Group label (template, relation, ...).
    pub label: String,
}

/// Clean and corrupted prompts with their answers and the metric that scores them.
pub struct TaskPrompts {
    /// [n, pos] int64, right-padded after each pair's `lengths[i]` tokens.
    pub clean: Tensor,
    /// [n, pos] int64, aligned with `clean` token for token.
    pub corrupted: Tensor,
    /// Tokens per pair (clean and corrupted alike).
    pub lengths: Vec<i64>,
    /// Per prompt, the tokens counted as the right answer.
    pub answers: Vec<Vec<i64>>,
    /// Per prompt, the tokens the answer is contrasted with (may be empty).
    pub wrongs: Vec<Vec<i64>>,
    /// Each prompt's label (its template or kind).
    pub labels: Vec<String>,
    /// The metric, read at each prompt's last token.
    pub metric: Metric,
}

impl TaskPrompts {
    /// `n` prompts of `task` from `seed` with the task's usual metric: IOI logit(IO) - logit(S);
    /// greater-than P(year > YY) - P(year <= YY); facts and modular addition P(answer). Induction
    /// prompts are cut before their last token, which becomes the answer, scored by
    /// logit(answer) - logit(the corrupted prompt's next token).
    pub fn new(task: Task, vocab: &TaskVocab, n: usize, seed: u64) -> Result<TaskPrompts> {
        let d_vocab = vocab.len() as i64;
        TaskPrompts::from_pairs(task_pairs(task, vocab, n, seed)?, d_vocab, d_vocab)
    }

    /// Batches `pairs` with their default metric: the logit difference when every pair has one
    /// answer and one wrong token, the probability difference when there are wrong tokens, else
    /// the probability of the answer. Prompt tokens must be below `d_vocab`, answer and wrong
    /// tokens below `d_vocab_out` (the logits' width; equal except in algorithmic models).
    pub fn from_pairs(pairs: Vec<PromptPair>, d_vocab: i64, d_vocab_out: i64) -> Result<TaskPrompts> {
        let name = if pairs.iter().all(|p| p.answers.len() == 1 && p.wrongs.len() == 1) {
            MetricName::LogitDiff
        } else if pairs.iter().any(|p| !p.wrongs.is_empty()) {
            MetricName::ProbDiff
        } else {
            MetricName::Prob
        };
        TaskPrompts::batch(pairs, d_vocab, d_vocab_out, name)
    }

    fn batch(pairs: Vec<PromptPair>, d_vocab: i64, d_vocab_out: i64, name: MetricName) -> Result<TaskPrompts> {
        if pairs.is_empty() {
            return Err(Error::Input("no prompt pairs".into()));
        }
        let width = pairs.iter().map(|p| p.clean.len()).max().unwrap_or(0);
        let pad = |ids: &[i64]| -> Vec<i64> {
            let mut row = ids.to_vec();
            row.resize(width, 0);
            row
        };
        let mut clean = Vec::with_capacity(pairs.len() * width);
        let mut corrupted = Vec::with_capacity(pairs.len() * width);
        for (i, p) in pairs.iter().enumerate() {
            if p.clean.len() != p.corrupted.len() || p.clean.is_empty() {
                return Err(Error::Input(format!(
                    "pair {}: clean is {} tokens and corrupted {}; the prompts of a pair must have the same (non-zero) length",
                    i + 1,
                    p.clean.len(),
                    p.corrupted.len()
                )));
            }
            if let Some(&t) = p.clean.iter().chain(&p.corrupted).find(|t| !(0..d_vocab).contains(*t)) {
                return Err(interp_core::Error::TokenOutOfVocabulary { id: t, d_vocab }.into());
            }
            if let Some(&t) = p.answers.iter().chain(&p.wrongs).find(|t| !(0..d_vocab_out).contains(*t)) {
                return Err(interp_core::Error::TokenOutOfVocabulary { id: t, d_vocab: d_vocab_out }.into());
            }
            clean.extend(pad(&p.clean));
            corrupted.extend(pad(&p.corrupted));
        }
        let n = pairs.len() as i64;
        let clean = Tensor::f_from_slice(&clean)?.f_view([n, width as i64])?;
        let lengths: Vec<i64> = pairs.iter().map(|p| p.clean.len() as i64).collect();
        let answers: Vec<Vec<i64>> = pairs.iter().map(|p| p.answers.clone()).collect();
        let wrongs: Vec<Vec<i64>> = pairs.iter().map(|p| p.wrongs.clone()).collect();
        let metric = build_metric(name, &answers, &wrongs, &lengths, &clean, d_vocab_out, None)?;
        Ok(TaskPrompts {
            clean,
            corrupted: Tensor::f_from_slice(&corrupted)?.f_view([n, width as i64])?,
            lengths,
            answers,
            wrongs,
            labels: pairs.into_iter().map(|p| p.label).collect(),
            metric,
        })
    }

    /// Pairs `start .. start + len` (their metric too).
    pub fn narrow(&self, start: usize, len: usize) -> Result<TaskPrompts> {
        let end = start + len;
        if end > self.len() || len == 0 {
            return Err(Error::Input(format!("pairs {start}..{end} of a set of {}", self.len())));
        }
        let (s, l) = (start as i64, len as i64);
        Ok(TaskPrompts {
            clean: self.clean.f_narrow(0, s, l)?,
            corrupted: self.corrupted.f_narrow(0, s, l)?,
            lengths: self.lengths[start..end].to_vec(),
            answers: self.answers[start..end].to_vec(),
            wrongs: self.wrongs[start..end].to_vec(),
            labels: self.labels[start..end].to_vec(),
            metric: self.metric.narrow(s, l)?,
        })
    }

    /// The pairs at `indices`, in that order, trimmed to the longest of them.
    pub fn select(&self, indices: &[usize]) -> Result<TaskPrompts> {
        if indices.is_empty() || indices.iter().any(|&i| i >= self.len()) {
            return Err(Error::Input(format!("pairs {indices:?} of a set of {}", self.len())));
        }
        let rows = Tensor::f_from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>())?;
        let lengths: Vec<i64> = indices.iter().map(|&i| self.lengths[i]).collect();
        let width = lengths.iter().copied().max().unwrap_or(1);
        let take = |t: &Tensor| -> Result<Tensor> { Ok(t.f_index_select(0, &rows.f_to_device(t.device())?)?.f_narrow(1, 0, width)?) };
        Ok(TaskPrompts {
            clean: take(&self.clean)?,
            corrupted: take(&self.corrupted)?,
            lengths,
            answers: indices.iter().map(|&i| self.answers[i].clone()).collect(),
            wrongs: indices.iter().map(|&i| self.wrongs[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i].clone()).collect(),
            metric: self.metric.select(&rows)?,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True for a set without pairs (never built: batching refuses it).
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Whether the pairs differ in length (so the batch is padded).
    pub fn is_padded(&self) -> bool {
        self.lengths.windows(2).any(|w| w[0] != w[1])
    }

    /// Each prompt's answer position (its last token) [n] int64, or `None` when every prompt
    /// ends at the last position.
    pub fn positions(&self) -> Result<Option<Tensor>> {
        answer_positions(&self.lengths)
    }

    /// The first answer token of each prompt [n] int64.
    pub fn answer(&self) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&self.answers.iter().map(|a| a[0]).collect::<Vec<_>>())?)
    }

    /// `name`'s metric on these prompts over logits of width `d_vocab_out`; KL needs the model
    /// (it runs the clean prompts).
    pub fn metric_of(&self, name: MetricName, d_vocab_out: i64, model: Option<&HookedTransformer>) -> Result<Metric> {
        build_metric(name, &self.answers, &self.wrongs, &self.lengths, &self.clean, d_vocab_out, model)
    }

    /// The same prompts scored by `name` (see [`TaskPrompts::metric_of`]).
    pub fn with_metric(mut self, name: MetricName, model: &HookedTransformer) -> Result<TaskPrompts> {
        self.metric = self.metric_of(name, model.cfg.d_vocab_out, Some(model))?;
        Ok(self)
    }

    /// Reads a JSONL pair file (see the module docs) for `model`: text needs its tokenizer,
    /// ids must be in its vocabulary, prompts must fit its context. Errors name the line.
    pub fn from_jsonl(path: &Path, model: &HookedTransformer) -> Result<TaskPrompts> {
        let pairs = read_lines(path, |obj| parse_pair(obj, model))?;
        TaskPrompts::from_pairs(pairs, model.cfg.d_vocab, model.cfg.d_vocab_out)
    }

    /// Writes the pairs as a JSONL pair file of token ids, which reads back as the same prompts
    /// and (with no `--metric`) the same default metric.
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let mut text = String::new();
        for i in 0..self.len() {
            let len = self.lengths[i];
            let row = |t: &Tensor| -> Result<Vec<i64>> { Ok(Vec::<i64>::try_from(&t.f_get(i as i64)?.f_narrow(0, 0, len)?)?) };
            let tokens = |set: &[i64]| -> Value {
                if set.len() == 1 {
                    json!(set[0])
                } else {
                    json!(set)
                }
            };
            let mut line = json!({ "clean_ids": row(&self.clean)?, "corrupted_ids": row(&self.corrupted)?, "answer": tokens(&self.answers[i]) });
            if let Some(obj) = line.as_object_mut() {
                if !self.wrongs[i].is_empty() {
                    obj.insert("wrong".into(), tokens(&self.wrongs[i]));
                }
                obj.insert("label".into(), json!(self.labels[i]));
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        write_new(path, &text)
    }
}

/// Each prompt's answer position (its last token) [n] int64, or `None` when every prompt ends at
/// the last position.
fn answer_positions(lengths: &[i64]) -> Result<Option<Tensor>> {
    if lengths.windows(2).all(|w| w[0] == w[1]) {
        return Ok(None);
    }
    Ok(Some(Tensor::f_from_slice(&lengths.iter().map(|l| l - 1).collect::<Vec<_>>())?))
}

/// `name`'s metric of prompts with these answers, wrong tokens and lengths; KL runs `model` on
/// the clean prompts [n, pos], 16 per forward.
fn build_metric(
    name: MetricName,
    answers: &[Vec<i64>],
    wrongs: &[Vec<i64>],
    lengths: &[i64],
    clean: &Tensor,
    d_vocab: i64,
    model: Option<&HookedTransformer>,
) -> Result<Metric> {
    let positions = answer_positions(lengths)?;
    let single = |sets: &[Vec<i64>], what: &str| -> Result<Tensor> {
        let ids = sets
            .iter()
            .enumerate()
            .map(|(i, s)| match s.as_slice() {
                [t] => Ok(*t),
                _ => Err(Error::Input(format!("pair {}: the logit difference needs exactly one {what} token, found {}", i + 1, s.len()))),
            })
            .collect::<Result<Vec<i64>>>()?;
        Ok(Tensor::f_from_slice(&ids)?)
    };
    let metric = match name {
        MetricName::LogitDiff => Metric::logit_diff(single(answers, "answer")?, single(wrongs, "wrong")?),
        // One answer token each: P(answer) itself (named `probability` in tables).
        MetricName::Prob if answers.iter().all(|a| a.len() == 1) => Metric::probability(single(answers, "answer")?),
        MetricName::Prob => Metric::prob_diff(answers, &vec![vec![]; answers.len()], d_vocab)?,
        MetricName::ProbDiff => Metric::prob_diff(answers, wrongs, d_vocab)?,
        MetricName::Kl => {
            let model = model.ok_or_else(|| Error::Input("the KL metric needs the model's clean run".into()))?;
            // The clean run's logits at each answer position, [n, 1, d_vocab], a chunk at a time.
            let n = clean.size()[0];
            let mut rows = Vec::new();
            for start in (0..n).step_by(16) {
                let len = 16.min(n - start);
                let logits = model.forward(&clean.f_narrow(0, start, len)?.f_to_device(model.device())?)?;
                let at = positions.as_ref().map(|p| p.f_narrow(0, start, len)).transpose()?;
                rows.push(crate::metric::answer_logits(&logits, at.as_ref())?.f_unsqueeze(1)?);
            }
            let kl = Metric::kl_to(&Tensor::f_cat(&rows, 0)?, None)?;
            return Ok(Metric { positions, ..kl });
        }
    };
    Ok(match positions {
        Some(p) => metric.at(p),
        None => metric,
    })
}

/// The pairs of a built-in task, as [`TaskPrompts::new`] batches them.
fn task_pairs(task: Task, vocab: &TaskVocab, n: usize, seed: u64) -> Result<Vec<PromptPair>> {
    let batch = task.generate(vocab, n, seed)?;
    let rows = |t: &Tensor| -> Result<Vec<Vec<i64>>> { Ok(Vec::<Vec<i64>>::try_from(t)?) };
    let (mut clean, mut corrupted) = (rows(&batch.clean)?, rows(&batch.corrupted)?);
    let answer = Vec::<i64>::try_from(&batch.answer)?;
    let wrong = Vec::<i64>::try_from(&batch.wrong)?;
    let mut pairs = Vec::with_capacity(clean.len());
    for i in 0..clean.len() {
        let (answers, wrongs) = match task {
            Task::Ioi => (vec![answer[i]], vec![wrong[i]]),
            Task::GreaterThan => {
                let yy: usize = vocab.word(wrong[i]).parse().map_err(|_| Error::Input(format!("`{}` is not a year", vocab.word(wrong[i]))))?;
                let ids = |r: std::ops::Range<usize>| r.map(|y| vocab.id(&format!("{y:02}"))).collect::<interp_core::Result<Vec<i64>>>();
                (ids(yy + 1..100)?, ids(0..yy + 1)?)
            }
            Task::Facts | Task::ModularAddition => (vec![answer[i]], vec![]),
            Task::Induction { .. } => {
                let (a, w) = (clean[i].pop(), corrupted[i].pop());
                let (Some(a), Some(w)) = (a, w) else { return Err(Error::Input("an induction prompt without tokens".into())) };
                (vec![a], vec![w])
            }
        };
        pairs.push(PromptPair {
            clean: std::mem::take(&mut clean[i]),
            corrupted: std::mem::take(&mut corrupted[i]),
            answers,
            wrongs,
            label: batch.labels[i].clone(),
        });
    }
    Ok(pairs)
}

/// Reads causal-tracing prompts from JSONL: `prompt`, `subject` (a substring of the prompt),
/// `answer` (one token) and optional `label`. Needs the model's tokenizer.
pub fn trace_prompts_from_jsonl(path: &Path, model: &HookedTransformer) -> Result<Vec<TracePrompt>> {
    read_lines(path, |obj| {
        let tok = tokenizer(model)?;
        check_fields(obj, &["prompt", "subject", "answer", "label"])?;
        let prompt = text_field(obj, "prompt")?;
        let subject = text_field(obj, "subject")?;
        let tokens = encode_prompt(tok, prompt, model)?;
        let span = subject_span(tok, &tokens, subject)?;
        let answers = token_set(obj, "answer", model)?.ok_or(LineError::Missing("answer"))?;
        let [answer] = answers[..] else { return Err(LineError::AnswerCount(answers.len())) };
        TracePrompt::new(tokens.clone(), &tokens[span], answer, label(obj)?).map_err(|e| LineError::Subject(e.to_string()))
    })
}

type LineResult<T> = std::result::Result<T, LineError>;

/// The token range of the last occurrence of `subject` in the text of `tokens`.
fn subject_span(tok: &Tokenizer, tokens: &[i64], subject: &str) -> LineResult<std::ops::Range<usize>> {
    // Character end of each token's text, by decoding growing prefixes (ROME's find_token_range).
    let decode = |ids: &[i64]| tok.decode(ids).map_err(|e| LineError::Tokenizer(e.to_string()));
    let mut ends = Vec::with_capacity(tokens.len());
    for i in 0..tokens.len() {
        ends.push(decode(&tokens[..=i])?.len());
    }
    let text = decode(tokens)?;
    let start = text.rfind(subject).ok_or_else(|| LineError::Subject(format!("subject {subject:?} does not occur in the prompt {text:?}")))?;
    let end = start + subject.len();
    let first = ends.iter().position(|e| *e > start).ok_or_else(|| LineError::Subject("the subject is empty".into()))?;
    let last = ends.iter().position(|e| *e >= end).ok_or_else(|| LineError::Subject("the subject runs past the prompt".into()))?;
    Ok(first..last + 1)
}

/// Runs `parse` on each non-blank line's JSON object; errors name the file and the line.
fn read_lines<T>(path: &Path, mut parse: impl FnMut(&Map<String, Value>) -> LineResult<T>) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(raw)
            .map_err(|e| LineError::NotJson(e.to_string()))
            .and_then(|value| value.as_object().ok_or(LineError::NotAnObject).and_then(&mut parse));
        out.push(parsed.map_err(|kind| Error::PromptLine { path: path.to_path_buf(), line: i + 1, kind })?);
    }
    if out.is_empty() {
        return Err(Error::NoPrompts { path: path.to_path_buf() });
    }
    Ok(out)
}

fn parse_pair(obj: &Map<String, Value>, model: &HookedTransformer) -> LineResult<PromptPair> {
    check_fields(obj, &["clean", "corrupted", "clean_ids", "corrupted_ids", "answer", "wrong", "label"])?;
    let prompt = |text: &'static str, ids: &'static str| -> LineResult<Vec<i64>> {
        match (obj.get(text), obj.get(ids)) {
            (Some(_), Some(_)) => Err(LineError::TextAndIds { text, ids }),
            (Some(_), None) => encode_prompt(tokenizer(model)?, text_field(obj, text)?, model),
            (None, Some(v)) => {
                let list = v.as_array().and_then(|a| a.iter().map(|x| x.as_i64()).collect::<Option<Vec<i64>>>());
                check_ids(list.ok_or(LineError::WrongType { field: ids.into(), expected: "a list of token ids" })?, model)
            }
            (None, None) => Err(LineError::MissingPrompt { text, ids }),
        }
    };
    let (clean, corrupted) = (prompt("clean", "clean_ids")?, prompt("corrupted", "corrupted_ids")?);
    if clean.len() != corrupted.len() {
        let shown = |ids: &[i64]| match model.tokenizer() {
            Some(t) => t.to_str_tokens(ids).unwrap_or_default(),
            None => ids.iter().map(i64::to_string).collect(),
        };
        return Err(LineError::UnequalLengths { clean: shown(&clean), corrupted: shown(&corrupted) });
    }
    let answers = token_set(obj, "answer", model)?.ok_or(LineError::Missing("answer"))?;
    let wrongs = token_set(obj, "wrong", model)?.unwrap_or_default();
    Ok(PromptPair { clean, corrupted, answers, wrongs, label: label(obj)? })
}

fn check_fields(obj: &Map<String, Value>, allowed: &'static [&'static str]) -> LineResult<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(LineError::UnknownField { field: k.clone(), allowed }),
        None => Ok(()),
    }
}

fn text_field<'a>(obj: &'a Map<String, Value>, field: &'static str) -> LineResult<&'a str> {
    obj.get(field).ok_or(LineError::Missing(field))?.as_str().ok_or(LineError::WrongType { field: field.into(), expected: "a string" })
}

fn label(obj: &Map<String, Value>) -> LineResult<String> {
    match obj.get("label") {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(LineError::WrongType { field: "label".into(), expected: "a string" }),
    }
}

fn tokenizer(model: &HookedTransformer) -> LineResult<&Tokenizer> {
    model.tokenizer().ok_or(LineError::NoTokenizer)
}

/// Tokens of a prompt, BOS first when the model has one; it must fit the context.
fn encode_prompt(tok: &Tokenizer, text: &str, model: &HookedTransformer) -> LineResult<Vec<i64>> {
    check_ids(tok.encode(text, tok.bos_token_id().is_some()).map_err(|e| LineError::Tokenizer(e.to_string()))?, model)
}

fn check_ids(ids: Vec<i64>, model: &HookedTransformer) -> LineResult<Vec<i64>> {
    let (d_vocab, n_ctx) = (model.cfg.d_vocab, model.cfg.n_ctx);
    if ids.is_empty() {
        return Err(LineError::EmptyPrompt);
    }
    if ids.len() as i64 > n_ctx {
        return Err(LineError::TooLong { len: ids.len(), n_ctx });
    }
    match ids.iter().find(|t| !(0..d_vocab).contains(*t)) {
        Some(&id) => Err(LineError::TokenOutOfVocabulary { id, d_vocab }),
        None => Ok(ids),
    }
}

/// `field` as tokens: a single-token string, a token id, or a list of these.
fn token_set(obj: &Map<String, Value>, field: &str, model: &HookedTransformer) -> LineResult<Option<Vec<i64>>> {
    let Some(v) = obj.get(field) else { return Ok(None) };
    let one = |x: &Value| -> LineResult<i64> {
        match x {
            Value::Number(n) => {
                let id = n.as_i64().ok_or(LineError::WrongType { field: field.into(), expected: "a string, a token id or a list of these" })?;
                let d_vocab_out = model.cfg.d_vocab_out;
                match (0..d_vocab_out).contains(&id) {
                    true => Ok(id),
                    false => Err(LineError::AnswerOutOfVocabulary { field: field.into(), id, d_vocab_out }),
                }
            }
            Value::String(s) => {
                let tok = tokenizer(model)?;
                let ids = tok.encode(s, false).map_err(|e| LineError::Tokenizer(e.to_string()))?;
                match ids[..] {
                    [id] => Ok(id),
                    _ => Err(LineError::NotOneToken { field: field.into(), text: s.clone(), pieces: tok.to_str_tokens(&ids).unwrap_or_default() }),
                }
            }
            _ => Err(LineError::WrongType { field: field.into(), expected: "a string, a token id or a list of these" }),
        }
    };
    let set = match v {
        Value::Array(items) if items.is_empty() => return Err(LineError::EmptyList(field.into())),
        Value::Array(items) => items.iter().map(one).collect::<LineResult<Vec<i64>>>()?,
        x => vec![one(x)?],
    };
    Ok(Some(set))
}

/// Writes `text` through a temporary file, so an interrupted write leaves no partial file.
fn write_new(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("jsonl.part");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}
