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
}
