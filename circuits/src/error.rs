use std::path::PathBuf;

/// Every failure of `circuits`, carrying the offending name, shape or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] interp_core::Error),
    #[error(transparent)]
    Dictionary(#[from] transcoders::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid input: {0}")]
    Input(String),
    /// The clean and corrupted runs score the same, so no component can explain a difference.
    #[error("nothing to explain: the metric ({metric}) is {value:.6} on both the clean and the corrupted prompts; choose prompts or a metric that tell them apart")]
    NothingToExplain { metric: String, value: f64 },
    /// A model whose components do not add into the residual stream the way an edge graph needs.
    #[error("no edge graph for this model: {0}")]
    UnsupportedLayout(String),
    #[error("chart {path}: {message}")]
    Chart { path: PathBuf, message: String },
    /// polars could not build or write a table.
    #[error("table {path}: {message}")]
    Table { path: PathBuf, message: String },
    /// libtorch's message, first line only (the rest is a C++ backtrace).
    #[error("torch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
