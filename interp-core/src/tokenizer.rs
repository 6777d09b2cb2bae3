//! Text to tokens and back, from an HF `tokenizer.json`.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// HF's file of tokenizer settings beside `tokenizer.json`.
const CONFIG: &str = "tokenizer_config.json";

/// An HF tokenizer plus the model's BOS token, and HF's `tokenizer_config.json` where the model
/// has one (special tokens, whether BOS is added, the chat template).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<i64>,
    config: Option<serde_json::Value>,
}

/// Which side of a shorter row gets the padding in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingSide {
    /// Padding before the text (what `generate` needs).
    Left,
    /// Padding after the text.
    Right,
}

impl Tokenizer {
    /// Reads an HF `tokenizer.json` (and the `tokenizer_config.json` beside it, if there is one);
    /// `bos` is the token `encode` prepends.
    pub fn from_file(path: &Path, bos: Option<i64>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let config_path = path.with_file_name(CONFIG);
        let config = match config_path.exists() {
            true => {
                let text = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
                Some(serde_json::from_str(&text).map_err(|source| Error::Json { path: config_path.clone(), source })?)
            }
            false => None,
        };
        Ok(Tokenizer { inner, bos, config })
    }

    /// Reads a `tokenizer.json` text and a `tokenizer_config.json` value (as built from a GGUF
    /// file's metadata).
    pub(crate) fn from_json(json: &str, config: serde_json::Value, bos: Option<i64>) -> Result<Self> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| Error::Tokenizer(format!("tokenizer from GGUF metadata: {e}")))?;
        Ok(Tokenizer { inner, bos, config: Some(config) })
    }

    /// Writes it as an HF `tokenizer.json` at `path`, and its `tokenizer_config.json` beside it
    /// where it has one.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        if let Some(config) = &self.config {
            let config_path = path.with_file_name(CONFIG);
            let text = serde_json::to_string_pretty(config).map_err(|source| Error::Json { path: config_path.clone(), source })?;
            std::fs::write(&config_path, text).map_err(Error::io(&config_path))?;
        }
        Ok(())
    }

    /// Wraps an HF tokenizer (e.g. one trained with the `tokenizers` crate).
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<i64>) -> Self {
        Tokenizer { inner, bos, config: None }
    }

    /// The model's chat template (a Jinja string, from `tokenizer_config.json` or the GGUF
    /// metadata), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.config.as_ref()?.get("chat_template")?.as_str()
    }

    /// Whether HF's tokenizer puts BOS before a text (`add_bos_token`), where the model says.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.config.as_ref()?.get("add_bos_token")?.as_bool()
    }

    /// The id of one vocabulary entry, if the tokenizer has it.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The token prepended by `encode(.., true)`.
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos
    }

    /// Token ids of `text` (no special tokens), with the model's BOS in front if `prepend_bos`
    /// (as TransformerLens does by default).
    pub fn encode(&self, text: &str, prepend_bos: bool) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids: Vec<i64> = Vec::with_capacity(enc.len() + 1);
        if prepend_bos {
            ids.push(self.bos.ok_or_else(|| Error::Tokenizer("the model has no BOS token to prepend".into()))?);
        }
        ids.extend(enc.get_ids().iter().map(|&i| i as i64));
        Ok(ids)
    }

    /// Tokens [1, pos] (int64).
    pub fn to_tokens(&self, text: &str, prepend_bos: bool) -> Result<Tensor> {
        let ids = self.encode(text, prepend_bos)?;
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        Ok(Tensor::f_from_slice(&ids)?.f_unsqueeze(0)?)
    }

    /// Tokens [batch, pos] padded with `pad_id`, and the attention mask [batch, pos] (1 = real).
    pub fn to_tokens_batch(&self, texts: &[&str], prepend_bos: bool, side: PaddingSide, pad_id: i64) -> Result<(Tensor, Tensor)> {
        let rows = texts.iter().map(|t| self.encode(t, prepend_bos)).collect::<Result<Vec<_>>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        if len == 0 {
            return Err(Error::EmptyInput);
        }
        let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * len), Vec::with_capacity(rows.len() * len));
        for row in &rows {
            let pad = len - row.len();
            let (pad_ids, pad_mask) = (std::iter::repeat_n(pad_id, pad), std::iter::repeat_n(0i64, pad));
            match side {
                PaddingSide::Left => {
                    ids.extend(pad_ids.chain(row.iter().copied()));
                    mask.extend(pad_mask.chain(std::iter::repeat_n(1, row.len())));
                }
                PaddingSide::Right => {
                    ids.extend(row.iter().copied().chain(pad_ids));
                    mask.extend(std::iter::repeat_n(1, row.len()).chain(pad_mask));
                }
            }
        }
        let shape = [rows.len() as i64, len as i64];
        Ok((Tensor::f_from_slice(&ids)?.f_view(shape)?, Tensor::f_from_slice(&mask)?.f_view(shape)?))
    }

    /// Each token as its own decoded string (`" the"`, not `"Ġthe"`).
    pub fn to_str_tokens(&self, ids: &[i64]) -> Result<Vec<String>> {
        ids.iter().map(|&i| self.decode(&[i])).collect()
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids = ids.iter().map(|&i| u32::try_from(i).map_err(|_| Error::Input(format!("token id {i} is not a valid id")))).collect::<Result<Vec<u32>>>()?;
        self.inner.decode(&ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Ids of a [pos] or [1, pos] token tensor.
pub(crate) fn tensor_ids(tokens: &Tensor) -> Result<Vec<i64>> {
    let flat = tokens.f_to_kind(Kind::Int64)?.f_flatten(0, -1)?;
    Ok(Vec::<i64>::try_from(&flat)?)
}
