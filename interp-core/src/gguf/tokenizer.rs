//! The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes, built as HF transformers
//! builds it (5.23, `integrations/gguf/gguf_tokenizer_mapping.py`), so that token ids equal HF's:
//!
//! - `gpt2` (byte-level BPE with merges): GPT-2's byte-level pre-tokenizer, or the split regex of
//!   the pre-tokenizer `tokenizer.ggml.pre` names (llama3, qwen2, gpt-4o, ...);
//! - `llama` (SentencePiece-style BPE with byte fallback): Metaspace as HF's `LlamaTokenizer`;
//!   Gemma's files as HF's `GemmaTokenizer` (spaces become `▁`, merges recovered from the
//!   vocabulary in file order), Phi-3's with a prefix-space normalizer.
//!
//! Tokens the file marks as control become special added tokens, user-defined ones plain added
//! tokens.

use std::collections::HashMap;

use serde::{Serialize, Serializer};
use serde_json::{json, Value as Json};

use super::{GgufFile, Value};
use crate::error::{Error, Result};

/// llama.cpp's token type numbers.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex of a byte-level vocabulary's `tokenizer.ggml.pre`, where HF sets one.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// Whether `c` is in GPT-2's byte alphabet (see [`byte_alphabet`]): the printable bytes as
/// themselves, and U+0100..=U+0143 for the 68 others.
fn in_byte_alphabet(c: char) -> bool {
    matches!(c as u32, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF | 0x100..=0x143)
}

/// GPT-2's printable spelling of each byte (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        out[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    out
}

/// A `tokenizer.json`, written straight from the token and merge lists (a JSON value tree of
/// Gemma's 262k tokens and 515k merges would take hundreds of MB).
#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Json>,
    normalizer: Json,
    pre_tokenizer: Json,
    post_processor: Json,
    decoder: Json,
    model: BpeJson<'a>,
}

#[derive(Serialize)]
struct BpeJson<'a> {
    #[serde(flatten)]
    settings: Json,
    vocab: Vocab<'a>,
    merges: &'a [(String, String)],
}

/// Tokens as a `{token: id}` map.
struct Vocab<'a>(&'a [String]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().enumerate().map(|(i, t)| (t, i)))
    }
}

/// HF's `tokenizer_config.json` for `file`: the special tokens, whether BOS and EOS are added
/// (HF's default for a SentencePiece vocabulary that does not say: BOS yes) and the chat template.
pub(crate) fn tokenizer_config(file: &GgufFile) -> Json {
    let tokens = file.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap_or(&[]);
    let token = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_u64).and_then(|i| tokens.get(i as usize)).and_then(Value::as_str);
    let flag = |key: &str| match file.get(&format!("tokenizer.ggml.{key}")) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let sentencepiece = file.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
    let mut c = serde_json::Map::new();
    for (hf, key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")] {
        if let Some(t) = token(key) {
            c.insert(hf.into(), json!(t));
        }
    }
    c.insert("add_bos_token".into(), json!(flag("add_bos_token").unwrap_or(sentencepiece)));
    c.insert("add_eos_token".into(), json!(flag("add_eos_token").unwrap_or(false)));
    if let Some(t) = file.get("tokenizer.chat_template").and_then(Value::as_str) {
        c.insert("chat_template".into(), json!(t));
    }
    Json::Object(c)
}

/// The `tokenizer.json` text for `file`, whose `tokenizer_config.json` is `config` (where that
/// adds BOS, the post-processor puts it first, as HF's does).
pub(crate) fn tokenizer_json(file: &GgufFile, config: &Json) -> Result<String> {
    let bad = |message: String| Error::Tokenizer(format!("{}: {message}", file.path().display()));
    let strings = |key: &str| -> Result<Option<Vec<String>>> {
        let Some(v) = file.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| bad(format!("`{key}` is not an array")))?;
        items.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(format!("`{key}` holds a non-string")))).collect::<Result<Vec<_>>>().map(Some)
    };
    let model = file.get("tokenizer.ggml.model").and_then(Value::as_str).ok_or_else(|| bad("no `tokenizer.ggml.model` in the metadata".into()))?;
    let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| bad("no `tokenizer.ggml.tokens` in the metadata".into()))?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) if t.len() == tokens.len() => t
            .iter()
            .map(|v| match v {
                Value::Int(n) => *n,
                Value::Uint(n) => *n as i64,
                _ => 0,
            })
            .collect(),
        Some(t) => return Err(bad(format!("{} token types for {} tokens", t.len(), tokens.len()))),
        None => vec![],
    };
    let arch = file.architecture()?;
    let merges = strings("tokenizer.ggml.merges")?;
    let unk_token = file.get("tokenizer.ggml.unknown_token_id").and_then(Value::as_u64).and_then(|i| tokens.get(i as usize)).cloned();
    let (tokens, merges, settings, normalizer, pre_tokenizer, decoder) = match model {
        "gpt2" => {
            let merges = merges.ok_or_else(|| bad("a byte-level BPE vocabulary (`gpt2`) without `tokenizer.ggml.merges`".into()))?;
            let spelling = byte_alphabet();
            let tokens: Vec<String> =
                tokens.into_iter().map(|t| if t.chars().all(in_byte_alphabet) { t } else { t.bytes().map(|b| spelling[b as usize]).collect() }).collect();
            let merges = split_merges(&merges).map_err(bad)?;
            let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str).and_then(split_regex);
            let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
            let pre_tokenizer = match pre {
                Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ]}),
                None => byte_level(true),
            };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (tokens, merges, model, Json::Null, pre_tokenizer, decoder)
        }
        "llama" => {
            let gemma = arch.starts_with("gemma");
            // Gemma files store tokens of two or more spaces as spaces; its vocabulary spells them `▁`.
            let tokens: Vec<String> = match gemma {
                true => tokens.into_iter().map(|t| if t.contains(' ') && t.trim().is_empty() { "\u{2581}".repeat(t.chars().count()) } else { t }).collect(),
                false => tokens,
            };
            let merges = match merges {
                Some(m) => split_merges(&m).map_err(bad)?,
                None => {
                    // Ranked by file position (Gemma: its scores do not follow its merge order) or by score.
                    let scores: Vec<f64> = match gemma {
                        true => (0..tokens.len()).map(|i| -(i as f64)).collect(),
                        false => file
                            .get("tokenizer.ggml.scores")
                            .and_then(Value::as_array)
                            .filter(|s| s.len() == tokens.len())
                            .ok_or_else(|| bad("a SentencePiece vocabulary with neither merges nor one score per token".into()))?
                            .iter()
                            .map(|v| v.as_f64().unwrap_or(0.0))
                            .collect(),
                    };
                    generate_merges(&tokens, &scores)
                }
            };
            let unk = if gemma { unk_token.or(Some("<unk>".into())) } else { None };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false});
            let replace = |from: &str, to: &str| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
            let fallback = vec![replace("\u{2581}", " "), json!({"type": "ByteFallback"}), json!({"type": "Fuse"})];
            let (normalizer, pre, decoder) = if gemma {
                (
                    replace(" ", "\u{2581}"),
                    json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
                    json!({"type": "Sequence", "decoders": fallback}),
                )
            } else {
                let mut strip = fallback;
                strip.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                let decoder = json!({"type": "Sequence", "decoders": strip});
                match arch {
                    "phi3" => (
                        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace(" ", "\u{2581}")]}),
                        Json::Null,
                        decoder,
                    ),
                    _ => (Json::Null, json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}), decoder),
                }
            };
            (tokens, merges, model, normalizer, pre, decoder)
        }
        other => return Err(bad(format!("tokenizer model `{other}` is not supported (supported: gpt2, llama)"))),
    };
    let byte_level = model == "gpt2";
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(types.iter().chain(std::iter::repeat(&0))).enumerate() {
        // A control token outside the byte alphabet in a byte-level vocabulary is a mislabel HF skips.
        let control = *ty == CONTROL && (!byte_level || t.chars().all(in_byte_alphabet));
        if control || *ty == USER_DEFINED {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": control}));
        }
    }
    let json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: added,
        normalizer,
        pre_tokenizer,
        post_processor: match (config["add_bos_token"].as_bool(), config["bos_token"].as_str(), file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64))
        {
            (Some(true), Some(bos), Some(id)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}},
            }),
            _ => Json::Null,
        },
        decoder,
        model: BpeJson { settings, vocab: Vocab(&tokens), merges: &merges },
    };
    serde_json::to_string(&json).map_err(|e| bad(e.to_string()))
}

/// `"a b"` merges as pairs.
fn split_merges(merges: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| format!("merge {m:?} is not two tokens separated by a space")))
        .collect()
}

/// The merges a vocabulary implies (HF's `generate_merges`): every split of every token into two
/// tokens of the vocabulary, ranked by the token's score (highest first), then the longer left
/// and right pieces first.
fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // Python dict semantics: the last index of a repeated token wins, its first position orders it.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if index.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, scores[i]);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for t in order {
        let mut local: Vec<(&str, &str, f64)> = Vec::new();
        for (at, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(at);
            if index.contains_key(l) && index.contains_key(r) {
                local.push((l, r, score[t]));
            }
        }
        local.sort_by_key(|(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    // Python's stable sort with reverse=True: descending keys, equal keys keep their order.
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The membership test names exactly the 256 characters of the alphabet.
    #[test]
    fn byte_alphabet_membership() {
        let alphabet = byte_alphabet();
        let members: Vec<char> = (0..0x200u32).filter_map(char::from_u32).filter(|c| in_byte_alphabet(*c)).collect();
        let mut sorted = alphabet.to_vec();
        sorted.sort();
        assert_eq!(members, sorted);
    }
}
