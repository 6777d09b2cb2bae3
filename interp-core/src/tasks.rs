//! Built-in tasks with known answers, for training task models and for circuit analysis: each
//! generates clean prompts, corrupted prompts (the same length, token for token), the answer and
//! a metric, deterministically from a seed.
//!
//! All tasks share one word-level vocabulary ([`TaskVocab`], saved as an ordinary HF
//! `tokenizer.json`); a prompt is words separated by spaces, one token each, BOS first.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::{Batch, BatchSource};

/// Names of the IOI task.
pub const NAMES: [&str; 16] = ["Mary", "John", "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo", "Mia", "Noah"];
/// Places of the IOI task.
pub const PLACES: [&str; 8] = ["store", "park", "school", "garden", "station", "market", "library", "beach"];
/// Objects of the IOI task.
pub const OBJECTS: [&str; 8] = ["drink", "book", "ball", "letter", "ring", "pen", "cake", "key"];
/// Event nouns of the greater-than task.
pub const NOUNS: [&str; 8] = ["war", "reign", "drought", "journey", "trial", "siege", "voyage", "strike"];
const SYLLABLES: [&str; 12] = ["ka", "lo", "mi", "ru", "te", "zo", "pa", "ni", "vu", "se", "do", "fi"];
/// (relation words, objects it maps to)
const RELATIONS: [(&str, &str, [&str; 6]); 3] = [
    ("lives", "in", ["Paris", "Rome", "Cairo", "Lima", "Oslo", "Kyoto"]),
    ("works", "as", ["baker", "pilot", "nurse", "judge", "miner", "tailor"]),
    ("plays", "the", ["harp", "drums", "flute", "violin", "lute", "horn"]),
];
const INDUCTION_TOKENS: usize = 48;

/// The word-level vocabulary of every task.
pub struct TaskVocab {
    words: Vec<String>,
    ids: HashMap<String, i64>,
    /// Modulus of the modular-addition task.
    pub modulus: usize,
}

impl TaskVocab {
    /// Every task's words, with modular addition modulo `modulus`.
    pub fn new(modulus: usize) -> Self {
        let mut words: Vec<String> = vec!["<|endoftext|>".into()];
        let fixed = ["Then", ",", "and", "went", "to", "the", ".", "gave", "a", "The", "lasted", "from", "year", "+", "="];
        words.extend(fixed.iter().map(|s| s.to_string()));
        words.extend(NAMES.iter().chain(&PLACES).chain(&OBJECTS).chain(&NOUNS).chain(&SYLLABLES).map(|s| s.to_string()));
        for (a, b, objs) in RELATIONS {
            words.extend([a, b].iter().chain(objs.iter()).map(|s| s.to_string()));
        }
        words.extend((0..100).map(|i| format!("{i:02}")));
        words.extend((0..INDUCTION_TOKENS).map(|i| format!("t{i}")));
        words.extend((0..modulus).map(|i| format!("m{i}")));
        let mut seen = std::collections::HashSet::new();
        words.retain(|w| seen.insert(w.clone()));
        let ids = words.iter().enumerate().map(|(i, w)| (w.clone(), i as i64)).collect();
        TaskVocab { words, ids, modulus }
    }

    /// The vocabulary a model trained on the built-in tasks speaks, with the modulus it was
    /// trained with (`interp train --modulus`), read from its tokenizer. An error says why a
    /// model does not speak it.
    pub fn of_model(model: &crate::HookedTransformer) -> Result<Self> {
        let tok = model.require_tokenizer("to speak the task vocabulary")?;
        let modulus = (0..).take_while(|i| tok.token_to_id(&format!("m{i}")).is_some()).count();
        let vocab = TaskVocab::new(modulus);
        if vocab.len() as i64 > model.cfg.d_vocab {
            return Err(Error::Input(format!(
                "the model's vocabulary ({} tokens) cannot hold the task vocabulary ({}); it was not trained on the built-in tasks",
                model.cfg.d_vocab,
                vocab.len()
            )));
        }
        if let Some((id, word)) = vocab.words.iter().enumerate().find(|(id, w)| tok.token_to_id(w) != Some(*id as i64)) {
            return Err(Error::Input(format!(
                "the model's tokenizer is not the task vocabulary (`{word}` should be token {id}); it was not trained on the built-in tasks"
            )));
        }
        Ok(vocab)
    }

    /// Number of words (the vocabulary size a task model needs).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether there are no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of `word`; an error if it is not in the vocabulary.
    pub fn id(&self, word: &str) -> Result<i64> {
        self.ids.get(word).copied().ok_or_else(|| Error::UnknownWord { word: word.to_string(), vocabulary: "task vocabulary".into() })
    }

    /// The word of `id` (`<?>` for an unknown id).
    pub fn word(&self, id: i64) -> &str {
        self.words.get(id as usize).map(String::as_str).unwrap_or("<?>")
    }

    /// BOS followed by the ids of space-separated `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        std::iter::once(Ok(0)).chain(text.split_whitespace().map(|w| self.id(w))).collect()
    }

    /// The HF tokenizer (WordLevel model, whitespace split) for this vocabulary.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let vocab: serde_json::Map<String, serde_json::Value> = self.words.iter().enumerate().map(|(i, w)| (w.clone(), i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}
        });
        let inner: tokenizers::Tokenizer = json.to_string().parse().map_err(|e: tokenizers::Error| Error::Tokenizer(e.to_string()))?;
        Ok(Tokenizer::new(inner, Some(0)))
    }
}

/// Prompts of one task. Rows have equal length.
pub struct TaskBatch {
    /// [n, pos] int64, BOS first.
    pub clean: Tensor,
    /// [n, pos] int64, the same length as `clean`.
    pub corrupted: Tensor,
    /// [n] the answer token (for greater-than: a sampled year above YY; for induction: unused).
    pub answer: Tensor,
    /// [n] the contrasting token of the metric (IOI: the subject; others: unused).
    pub wrong: Tensor,
    /// A label per prompt for grouped analysis (IOI template order, fact relation, ...).
    pub labels: Vec<String>,
    /// [n, pos] f32: 1 where the next-token prediction is scored (the last position; for
    /// induction, the repeat positions whose next token copying predicts).
    pub scored: Tensor,
}

/// One of the built-in tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A random sequence repeated once after a random prefix: each row's period is drawn from
    /// `max(half / 4, 2) ..= half` (a fixed or narrow period is solved by position alone); the prompt is
    /// always `2 * half` tokens after BOS. Corrupted: the repeat shuffled.
    Induction {
        /// Tokens in each half of the prompt.
        half: usize,
    },
    /// "Then , A and B went to the PLACE . B gave a OBJECT to" -> A; corrupted with three new names (ABC).
    Ioi,
    /// "The NOUN lasted from the year XX YY to the year XX" -> a YY' > YY; corrupted: YY = 01.
    GreaterThan,
    /// "S1 S2 S3 REL1 REL2" -> object, over a synthetic knowledge base (3-token subjects).
    Facts,
    /// "m_a + m_b =" -> m_((a + b) mod P).
    ModularAddition,
}

/// Every task, induction first.
pub const ALL_TASKS: [Task; 5] = [Task::Induction { half: 12 }, Task::Ioi, Task::GreaterThan, Task::Facts, Task::ModularAddition];

/// The synthetic knowledge base: subject (3 syllable tokens) -> one object per relation.
pub fn knowledge_base(n_subjects: usize) -> Vec<(String, [usize; 3])> {
    let mut rng = Rng::new(7);
    let mut subjects = Vec::new();
    while subjects.len() < n_subjects {
        let s: Vec<&str> = (0..3).map(|_| SYLLABLES[rng.below(SYLLABLES.len())]).collect();
        let s = s.join(" ");
        if !subjects.iter().any(|(t, _): &(String, [usize; 3])| *t == s) {
            subjects.push((s, [rng.below(6), rng.below(6), rng.below(6)]));
        }
    }
    subjects
}

/// Subjects of the facts task's knowledge base.
pub const N_SUBJECTS: usize = 60;

impl Task {
    /// The task's name (`ioi`, `greater_than`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Task::Induction { .. } => "induction",
            Task::Ioi => "ioi",
            Task::GreaterThan => "greater_than",
            Task::Facts => "facts",
            Task::ModularAddition => "modular_addition",
        }
    }

    /// `n` prompts from `seed`.
    pub fn generate(self, vocab: &TaskVocab, n: usize, seed: u64) -> Result<TaskBatch> {
        let mut rng = Rng::new(seed ^ (self.name().len() as u64) << 40);
        let (mut clean, mut corrupted, mut answer, mut wrong, mut labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut scored: Vec<Vec<f32>> = Vec::new();
        let kb = knowledge_base(N_SUBJECTS);
        for _ in 0..n {
            let (c, x, ans, wr, label): (String, String, String, String, String) = match self {
                Task::Induction { half } => {
                    let shortest = (half / 4).max(2);
                    let period = shortest + rng.below(half - shortest + 1);
                    let token = |rng: &mut Rng| format!("t{}", rng.below(INDUCTION_TOKENS));
                    let prefix: Vec<String> = (0..2 * (half - period)).map(|_| token(&mut rng)).collect();
                    let seq: Vec<String> = (0..period).map(|_| token(&mut rng)).collect();
                    let mut shuffled = seq.clone();
                    for i in (1..shuffled.len()).rev() {
                        shuffled.swap(i, rng.below(i + 1));
                    }
                    let (pre, first) = (prefix.join(" "), seq.join(" "));
                    // Positions (after BOS at 0) of the repeat's tokens 1..period-1, which predict the next.
                    let start = 1 + prefix.len() + period;
                    let mut row = vec![0f32; 1 + 2 * half];
                    row[start..start + period - 1].fill(1.0);
                    scored.push(row);
                    let join = |parts: [&str; 3]| parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(" ");
                    (join([&pre, &first, &first]), join([&pre, &first, &shuffled.join(" ")]), seq[0].clone(), seq[0].clone(), format!("period={period}"))
                }
                Task::Ioi => {
                    let names = rng.distinct(NAMES.len(), 5);
                    let (io, s) = (NAMES[names[0]], NAMES[names[1]]);
                    let (place, object) = (PLACES[rng.below(PLACES.len())], OBJECTS[rng.below(OBJECTS.len())]);
                    let abba = rng.below(2) == 0;
                    let (first, second) = if abba { (io, s) } else { (s, io) };
                    let clean = format!("Then , {first} and {second} went to the {place} . {s} gave a {object} to");
                    let (a, b, c) = (NAMES[names[2]], NAMES[names[3]], NAMES[names[4]]);
                    let corrupted = format!("Then , {a} and {b} went to the {place} . {c} gave a {object} to");
                    (clean, corrupted, io.into(), s.into(), if abba { "ABBA" } else { "BABA" }.into())
                }
                Task::GreaterThan => {
                    let noun = NOUNS[rng.below(NOUNS.len())];
                    let century = 11 + rng.below(7);
                    let yy = 2 + rng.below(96);
                    let later = yy + 1 + rng.below(99 - yy);
                    let clean = format!("The {noun} lasted from the year {century:02} {yy:02} to the year {century:02}");
                    let corrupted = format!("The {noun} lasted from the year {century:02} 01 to the year {century:02}");
                    (clean, corrupted, format!("{later:02}"), format!("{yy:02}"), format!("yy={yy:02}"))
                }
                Task::Facts => {
                    let (subject, objs) = &kb[rng.below(kb.len())];
                    let other = &kb[rng.below(kb.len())].0;
                    let r = rng.below(RELATIONS.len());
                    let (w1, w2, objects) = RELATIONS[r];
                    let clean = format!("{subject} {w1} {w2}");
                    let corrupted = format!("{other} {w1} {w2}");
                    (clean, corrupted, objects[objs[r]].into(), objects[(objs[r] + 1) % 6].into(), w1.into())
                }
                Task::ModularAddition => {
                    let p = vocab.modulus;
                    let (a, b) = (rng.below(p), rng.below(p));
                    let b2 = (b + 1 + rng.below(p - 1)) % p;
                    let clean = format!("m{a} + m{b} =");
                    let corrupted = format!("m{a} + m{b2} =");
                    (clean, corrupted, format!("m{}", (a + b) % p), format!("m{}", (a + b2) % p), "sum".into())
                }
            };
            let ids = vocab.encode(&c)?;
            if scored.len() < clean.len() + 1 {
                let mut row = vec![0f32; ids.len()];
                row[ids.len() - 1] = 1.0;
                scored.push(row);
            }
            clean.push(ids);
            corrupted.push(vocab.encode(&x)?);
            answer.push(vocab.id(&ans)?);
            wrong.push(vocab.id(&wr)?);
            labels.push(label);
        }
        let stack = |rows: Vec<Vec<i64>>| -> Result<Tensor> {
            let len = rows.first().map_or(0, Vec::len) as i64;
            let flat: Vec<i64> = rows.concat();
            Ok(Tensor::f_from_slice(&flat)?.f_view([n as i64, len])?)
        };
        let len = clean.first().map_or(0, Vec::len) as i64;
        Ok(TaskBatch {
            clean: stack(clean)?,
            corrupted: stack(corrupted)?,
            answer: Tensor::f_from_slice(&answer)?,
            wrong: Tensor::f_from_slice(&wrong)?,
            labels,
            scored: Tensor::f_from_slice(&scored.concat())?.f_view([n as i64, len])?,
        })
    }

    /// A training batch: the clean prompt followed by its answer (induction: the whole repeat is
    /// scored), next-token targets, the loss masked to the answer positions.
    pub fn training_batch(self, vocab: &TaskVocab, n: usize, seed: u64) -> Result<Batch> {
        let b = self.generate(vocab, n, seed)?;
        let full = Tensor::f_cat(&[&b.clean, &b.answer.f_unsqueeze(1)?], 1)?;
        let len = b.clean.size()[1];
        let (input, target) = match self {
            Task::Induction { .. } => (b.clean.shallow_clone(), b.clean.f_narrow(1, 1, len - 1)?.f_pad([0, 1], "constant", Some(0.0))?),
            _ => (full.f_narrow(1, 0, len)?, full.f_narrow(1, 1, len)?),
        };
        Ok(Batch { input, target, mask: Some(b.scored) })
    }

    /// The task's score of `logits` [n, pos, vocab] on `batch` (clean prompts): accuracy for
    /// induction (over the repeat), IOI (IO above S), facts and modular addition; for
    /// greater-than, the mean of P(year > YY) - P(year <= YY) over two-digit year tokens.
    pub fn score(self, vocab: &TaskVocab, batch: &TaskBatch, logits: &Tensor) -> Result<f64> {
        let logits = logits.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?;
        let last = logits.f_select(1, -1)?; // [n, vocab]
        Ok(match self {
            Task::Induction { .. } => {
                let len = batch.clean.size()[1];
                let pred = logits.f_narrow(1, 0, len - 1)?.f_argmax(-1, false)?;
                let right = pred.f_eq_tensor(&batch.clean.f_narrow(1, 1, len - 1)?)?.f_to_kind(Kind::Float)?;
                let mask = batch.scored.f_narrow(1, 0, len - 1)?;
                right.f_mul(&mask)?.f_sum(Kind::Float)?.f_div(&mask.f_sum(Kind::Float)?)?.f_double_value(&[])?
            }
            Task::Ioi => {
                let io = last.f_gather(1, &batch.answer.f_unsqueeze(1)?, false)?;
                let s = last.f_gather(1, &batch.wrong.f_unsqueeze(1)?, false)?;
                io.f_gt_tensor(&s)?.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?.f_double_value(&[])?
            }
            Task::GreaterThan => {
                let years: Vec<i64> = (0..100).map(|y| vocab.id(&format!("{y:02}"))).collect::<Result<_>>()?;
                let probs = last.f_softmax(-1, Kind::Float)?.f_index_select(1, &Tensor::f_from_slice(&years)?)?; // [n, 100]
                let yy: Vec<i64> = Vec::<i64>::try_from(&batch.wrong)?.iter().map(|&t| vocab.word(t).parse::<i64>().unwrap_or(0)).collect();
                let above = Tensor::f_arange(100, (Kind::Int64, tch::Device::Cpu))?.f_unsqueeze(0)?.f_gt_tensor(&Tensor::f_from_slice(&yy)?.f_unsqueeze(1)?)?;
                let p_above = probs.f_mul(&above.f_to_kind(Kind::Float)?)?.f_sum_dim_intlist(1, false, Kind::Float)?;
                let p_below = probs.f_sum_dim_intlist(1, false, Kind::Float)?.f_sub(&p_above)?;
                p_above.f_sub(&p_below)?.f_mean(Kind::Float)?.f_double_value(&[])?
            }
            Task::Facts | Task::ModularAddition => {
                last.f_argmax(-1, false)?.f_eq_tensor(&batch.answer)?.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?.f_double_value(&[])?
            }
        })
    }
}

/// Training batches that mix tasks: each step draws `per_task` prompts of every task, right-padded
/// to one length (padding is never attended to by real positions and is masked out of the loss).
pub struct TaskMixture {
    /// The tasks' vocabulary.
    pub vocab: TaskVocab,
    /// The tasks mixed.
    pub tasks: Vec<Task>,
    /// Prompts of each task per batch.
    pub per_task: usize,
    /// Batch `step` is drawn from `seed` and `step` alone.
    pub seed: u64,
}

impl TaskMixture {
    fn mixed(&self, seed: u64) -> Result<Batch> {
        let batches: Vec<Batch> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| t.training_batch(&self.vocab, self.per_task, seed.wrapping_mul(31).wrapping_add(i as u64)))
            .collect::<Result<_>>()?;
        let len = batches.iter().map(|b| b.input.size()[1]).max().unwrap_or(0);
        let pad = |t: &Tensor| t.f_pad([0, len - t.size()[1]], "constant", Some(0.0));
        let cat = |f: &dyn Fn(&Batch) -> &Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> = batches.iter().map(|b| pad(f(b))).collect::<Result<_, _>>()?;
            Ok(Tensor::f_cat(&parts, 0)?)
        };
        Ok(Batch { input: cat(&|b| &b.input)?, target: cat(&|b| &b.target)?, mask: Some(cat(&|b| b.mask.as_ref().unwrap_or(&b.input))?) })
    }
}

impl BatchSource for TaskMixture {
    fn train_batch(&self, step: usize) -> Result<Batch> {
        self.mixed(self.seed.wrapping_add(1 + step as u64))
    }
    fn eval_batches(&self) -> Result<Vec<Batch>> {
        Ok(vec![self.mixed(u64::MAX / 3)?])
    }
}

/// Attention-pattern scores of every head on `n` prompts of the induction task, whose period
/// varies by row (so a head attending at a fixed offset cannot score high): previous-token score =
/// mean attention from each position to the one before; induction score = mean attention from each
/// position of the repeat to the token after that token's earlier occurrence (offset period - 1).
/// Returns ([layers, heads], [layers, heads]).
pub fn induction_head_scores(model: &crate::HookedTransformer, vocab: &TaskVocab, half: usize, n: usize) -> Result<(Tensor, Tensor)> {
    let b = Task::Induction { half }.generate(vocab, n, 12345)?;
    let len = b.clean.size()[1];
    // (row, query, key) triples for each score.
    let (mut prev_idx, mut ind_idx) = (Vec::new(), Vec::new());
    for (r, label) in b.labels.iter().enumerate() {
        let period: i64 = label.trim_start_matches("period=").parse().map_err(|_| Error::Input(format!("bad induction label {label}")))?;
        for q in 1..len {
            prev_idx.push([r as i64, q, q - 1]);
        }
        for q in len - period..len {
            ind_idx.push([r as i64, q, q - period + 1]);
        }
    }
    let (_, cache) = model.run_with_cache(&b.clean, crate::CacheSpec::names([crate::BlockSite::Pattern]))?;
    let pick = |p: &Tensor, idx: &[[i64; 3]]| -> Result<Tensor> {
        let col = |j: usize| Tensor::f_from_slice(&idx.iter().map(|t| t[j]).collect::<Vec<i64>>());
        let (rows, qs, ks) = (col(0)?, col(1)?, col(2)?);
        // p [n, heads, q, k] -> [heads, n, q, k], then advanced indexing -> [heads, len(idx)]
        let ph = p.f_permute([1, 0, 2, 3])?;
        let heads = ph.size()[0];
        let picked: Vec<Tensor> = (0..heads).map(|h| ph.f_get(h)?.f_index(&[Some(&rows), Some(&qs), Some(&ks)])).collect::<Result<_, _>>()?;
        Ok(Tensor::f_stack(&picked, 0)?.f_mean_dim(1, false, Kind::Float)?)
    };
    let (mut prev, mut induction) = (Vec::new(), Vec::new());
    for l in 0..model.cfg.n_layers {
        let p = cache.get(crate::HookPoint::block(l, crate::BlockSite::Pattern))?.f_to_kind(Kind::Float)?;
        prev.push(pick(&p, &prev_idx)?);
        induction.push(pick(&p, &ind_idx)?);
    }
    Ok((Tensor::f_stack(&prev, 0)?, Tensor::f_stack(&induction, 0)?))
}
