use std::path::PathBuf;

/// Every failure of `interp-core`, carrying the offending path, name or shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON file that does not parse.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// A `config.json` value that is missing, of the wrong type or out of bounds.
    #[error("config: {0}")]
    Config(String),
    /// A `model_type` no family module handles.
    #[error("unknown model_type `{found}`; supported: {}", supported.join(", "))]
    UnknownModelType {
        /// The `model_type` found.
        found: String,
        /// The ones the family modules handle.
        supported: &'static [&'static str],
    },
    /// A GGUF file of an architecture this runtime does not map to a family.
    #[error("unknown GGUF architecture `{found}`; supported: {}", supported.join(", "))]
    UnknownGgufArchitecture {
        /// `general.architecture` as found.
        found: String,
        /// The ones the GGUF reader maps onto HF families.
        supported: &'static [&'static str],
    },
    /// A weights file that cannot be used.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("checkpoint tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// Its HF name.
        name: String,
        /// The shape it should have.
        expected: Vec<i64>,
    },
    /// A checkpoint tensor of the wrong shape.
    #[error("checkpoint tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// Its HF name.
        name: String,
        /// The shape the config implies.
        expected: Vec<i64>,
        /// The shape stored.
        found: Vec<i64>,
    },
    /// A hook name that no model has.
    #[error("unknown hook point `{name}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownHook {
        /// The name (or pattern) given.
        name: String,
        /// The closest existing name.
        suggestion: Option<String>,
    },
    /// A hook point this model lacks (`hook_resid_mid` in parallel blocks, ...).
    #[error("hook point `{name}` does not exist in this model: {why}")]
    HookUnavailable {
        /// The point.
        name: String,
        /// Why the model has no such point.
        why: String,
    },
    /// A hook returned a tensor of another shape than it was given.
    #[error("hook on `{name}` returned shape {found:?}, expected {expected:?}")]
    HookShape {
        /// The point.
        name: String,
        /// The activation's shape.
        expected: Vec<i64>,
        /// The returned shape.
        found: Vec<i64>,
    },
    /// An activation that the run did not store.
    #[error("activation `{name}` is not in the cache (cached: {cached})")]
    NotCached {
        /// The point asked for.
        name: String,
        /// What the cache holds.
        cached: String,
    },
    /// A tensor of the wrong shape.
    #[error("{what} must be {expected}, found {found:?}")]
    Shape {
        /// What was given (`tokens`, `attention mask`, ...).
        what: String,
        /// The shape it needs, in words (`[batch, pos]`, `[2, 20]`).
        expected: String,
        /// The shape it has.
        found: Vec<i64>,
    },
    /// No tokens at all.
    #[error("empty input: no tokens")]
    EmptyInput,
    /// A token id the model has no embedding for.
    #[error("token id {id} is outside the vocabulary [0, {d_vocab})")]
    TokenOutOfVocabulary {
        /// The offending id.
        id: i64,
        /// The model's vocabulary size.
        d_vocab: i64,
    },
    /// A sequence longer than the model's context.
    #[error("sequence of {len} tokens is longer than the context ({n_ctx})")]
    TooLong {
        /// Positions asked for (including a KV cache's).
        len: i64,
        /// The model's context length.
        n_ctx: i64,
    },
    /// A layer index past the last layer.
    #[error("layer {layer} out of range (model has {n_layers})")]
    LayerOutOfRange {
        /// The index asked for.
        layer: usize,
        /// The model's layer count.
        n_layers: usize,
    },
    /// MLP weights or hooks asked of an attention-only model.
    #[error("the model is attention-only: it has no MLP weights")]
    AttnOnly,
    /// Training produced a non-finite loss or non-finite weights.
    #[error("{what} at step {step}; stopped (the last checkpoint, if any, is untouched)")]
    Diverged {
        /// What went non-finite (`training loss is NaN`, `parameters are not finite`).
        what: String,
        /// The step it happened at.
        step: usize,
    },
    /// A word that is not in a vocabulary.
    #[error("`{word}` is not in the {vocabulary}")]
    UnknownWord {
        /// The word.
        word: String,
        /// Which vocabulary (`task vocabulary`).
        vocabulary: String,
    },
    /// A setting outside the values it can take (a step count of 0, a NaN rate, k above the
    /// width): its name, the value given and what it must be.
    #[error("invalid setting {name} = {value}: {expected}")]
    Setting {
        /// The setting, as the config field or command-line option names it.
        name: String,
        /// The value given.
        value: String,
        /// What it must be.
        expected: String,
    },
    /// Anything else a caller gave that cannot be used, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
    /// Data that a setup script fetches is not there yet.
    #[error("{}: not found; {fetch}", path.display())]
    MissingData {
        /// Where it should be.
        path: std::path::PathBuf,
        /// How to get it.
        fetch: &'static str,
    },
    /// A hook closure failed (with an error of any crate).
    #[error("hook on `{point}`: {source}")]
    Hook {
        /// The hook point.
        point: String,
        /// The closure's error.
        source: BoxError,
    },
    /// A gradient metric closure failed (with an error of any crate).
    #[error("metric: {0}")]
    Metric(BoxError),
    /// A model loaded without a `tokenizer.json`, asked to work with text.
    #[error("the model has no tokenizer.json, needed {needed_for}")]
    NoTokenizer {
        /// What it was needed for ("to encode the prompt").
        needed_for: String,
    },
    /// A tokenizer that cannot be read, or text it cannot encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// libtorch's message, first line only (the rest is a C++ backtrace).
    #[error("torch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, as hook and metric closures return it: `?` converts every error type into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Error {
    /// An invalid setting: its name, the value given and what it must be.
    pub(crate) fn setting(name: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> Error {
        Error::Setting { name: name.to_string(), value: value.to_string(), expected: expected.into() }
    }

    /// The error a closure returned: ours (or libtorch's) as it was, any other wrapped by `wrap`.
    pub(crate) fn from_closure(e: BoxError, wrap: impl FnOnce(BoxError) -> Error) -> Error {
        match e.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(e) => match e.downcast::<tch::TchError>() {
                Ok(torch) => Error::Torch(*torch),
                Err(other) => wrap(other),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
