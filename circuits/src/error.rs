use std::path::PathBuf;

/// Every failure of `circuits`, carrying the offending name, shape or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's error.
    #[error(transparent)]
    Core(#[from] interp_core::Error),
    /// The dictionaries' error.
    #[error(transparent)]
    Dictionary(#[from] transcoders::Error),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tensor of the wrong shape.
    #[error("{what} must be {expected}, found {found:?}")]
    Shape {
        /// What was given (`edge mask`, `noise`, ...).
        what: String,
        /// The shape it needs, in words.
        expected: String,
        /// The shape it has.
        found: Vec<i64>,
    },
    /// An ACDC checkpoint that another run wrote (other prompts, graph, metric or settings), or not
    /// a checkpoint at all: resuming from it would mix two runs.
    #[error("{}: not a checkpoint of this run (it holds {found}; this run is {expected}). Remove it or choose another --checkpoint", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What it holds: the other run's fingerprint, or why it does not read as a checkpoint.
        found: String,
        /// This run's fingerprint.
        expected: String,
    },
    /// A line of a prompt file (pairs or tracing prompts) that cannot be used.
    #[error("{}: line {line}: {kind}", path.display())]
    PromptLine {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        kind: LineError,
    },
    /// A prompt file without a prompt.
    #[error("{}: no prompts (one JSON object per line)", path.display())]
    NoPrompts {
        /// The file.
        path: PathBuf,
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
    /// Transcoders that do not replace this model's MLPs (another model's, an SAE, a layer
    /// missing, other widths).
    #[error("transcoders that do not fit the model: {0}")]
    Transcoders(String),
    /// A node id that the (pruned) graph does not hold.
    #[error("node `{id}` is not in the pruned graph (pruned away, or no such node); ids look like 3_1204_5, E_464_0")]
    UnknownNode {
        /// The id asked for.
        id: String,
    },
    /// A head the model does not have.
    #[error("no head L{layer}H{head}: the model has {n_layers} layers of {n_heads} heads")]
    NoHead {
        /// The layer asked for.
        layer: usize,
        /// The head asked for.
        head: i64,
        /// The model's layers.
        n_layers: usize,
        /// Its heads per layer.
        n_heads: i64,
    },
    /// A list whose length does not match what it describes (scores per edge, values per budget).
    #[error("{found} {what}, expected {expected}")]
    Count {
        /// What the list holds and what it must match ("edge scores for the graph's edges").
        what: String,
        /// Its length.
        found: usize,
        /// The length it needs.
        expected: usize,
    },
    /// Anything else a caller gave that cannot be used, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
    /// The clean and corrupted runs score the same, so no component can explain a difference.
    #[error(
        "nothing to explain: the metric ({metric}) is {value:.6} on both the clean and the corrupted prompts; choose prompts or a metric that tell them apart"
    )]
    NothingToExplain {
        /// The metric's name.
        metric: String,
        /// Its value on both.
        value: f64,
    },
    /// A model whose components do not add into the residual stream the way an edge graph needs.
    #[error("no edge graph for this model: {0}")]
    UnsupportedLayout(String),
    /// A file the analysis would write does not fit the free space of its folder.
    #[error("{what} needs {:.2} GB in {}, which has {:.2} GB free", *.needed as f64 / 1e9, .dir.display(), *.free as f64 / 1e9)]
    DiskSpace {
        /// The folder.
        dir: PathBuf,
        /// Bytes the file needs.
        needed: u64,
        /// Bytes free there.
        free: u64,
        /// What the file holds, and how to avoid it.
        what: String,
    },
    /// A memory budget that cannot hold the smallest unit of work (one prompt).
    #[error("a memory budget of {:.2} GB is too small: {what} needs at least {:.2} GB", *.given as f64 / 1e9, *.needed as f64 / 1e9)]
    MemoryBudget {
        /// The budget, in bytes of peak memory.
        given: u64,
        /// The least that works, in bytes of peak memory.
        needed: u64,
        /// What did not fit.
        what: String,
    },
    /// libtorch's message, first line only (the rest is a C++ backtrace).
    #[error("torch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// An invalid setting: its name, the value given and what it must be.
    pub(crate) fn setting(name: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> Error {
        Error::Setting { name: name.to_string(), value: value.to_string(), expected: expected.into() }
    }
}

/// What is wrong with one line of a prompt file; [`Error::PromptLine`] adds the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line does not parse as JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("expected a JSON object")]
    NotAnObject,
    /// A field the file's kind requires is absent.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// Neither a prompt's text nor its token ids.
    #[error("missing `{text}` (text) or `{ids}` (token ids)")]
    MissingPrompt {
        /// The text field.
        text: &'static str,
        /// The token-id field.
        ids: &'static str,
    },
    /// Both a prompt's text and its token ids.
    #[error("give `{text}` or `{ids}`, not both")]
    TextAndIds {
        /// The text field.
        text: &'static str,
        /// The token-id field.
        ids: &'static str,
    },
    /// A field this kind of file does not have (a typo, most often).
    #[error("unknown field `{field}` (fields: {})", allowed.join(", "))]
    UnknownField {
        /// The field found.
        field: String,
        /// The fields the file may have.
        allowed: &'static [&'static str],
    },
    /// A field of the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: String,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// A list field with nothing in it.
    #[error("`{0}` is an empty list")]
    EmptyList(String),
    /// Text, but the model has no tokenizer to read it with.
    #[error("text prompts need the model's tokenizer.json; give token ids (`clean_ids`, ...) instead")]
    NoTokenizer,
    /// The tokenizer failed on the text.
    #[error("{0}")]
    Tokenizer(String),
    /// A prompt of no tokens.
    #[error("an empty prompt")]
    EmptyPrompt,
    /// A prompt longer than the model's context.
    #[error("{len} tokens, longer than the model's context of {n_ctx}")]
    TooLong {
        /// Its tokens.
        len: usize,
        /// The model's context.
        n_ctx: i64,
    },
    /// A prompt token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary (0..{d_vocab})")]
    TokenOutOfVocabulary {
        /// The id.
        id: i64,
        /// The model's input vocabulary.
        d_vocab: i64,
    },
    /// An answer token id outside the model's output vocabulary.
    #[error("token id {id} in `{field}` is outside the output vocabulary (0..{d_vocab_out})")]
    AnswerOutOfVocabulary {
        /// `answer` or `wrong`.
        field: String,
        /// The id.
        id: i64,
        /// The model's output vocabulary.
        d_vocab_out: i64,
    },
    /// An answer string that is not exactly one token.
    #[error("`{field}` {text:?} is {} tokens {pieces:?}, not one; give a single token (often with its leading space) or a token id", pieces.len())]
    NotOneToken {
        /// `answer` or `wrong`.
        field: String,
        /// The string.
        text: String,
        /// Its tokens.
        pieces: Vec<String>,
    },
    /// A pair whose prompts differ in length.
    #[error("clean is {} tokens and corrupted {}; position-wise patching needs pairs of equal length (clean {clean:?}, corrupted {corrupted:?})", clean.len(), corrupted.len())]
    UnequalLengths {
        /// The clean prompt's tokens (their text where the model has a tokenizer, else ids).
        clean: Vec<String>,
        /// The corrupted prompt's tokens.
        corrupted: Vec<String>,
    },
    /// A tracing line with other than one answer token.
    #[error("causal tracing scores one answer token, found {0}")]
    AnswerCount(usize),
    /// A tracing line whose subject cannot be found or used.
    #[error("{0}")]
    Subject(String),
}
