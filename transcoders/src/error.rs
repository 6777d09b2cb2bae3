use std::path::PathBuf;

/// Every failure of `transcoders`, carrying the offending path, name or shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] interp_core::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A dictionary or activation-cache folder that does not hold what its format requires.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("unknown dictionary architecture `{found}`; supported: {}", crate::dictionary::SAELENS_ARCHITECTURES.join(", "))]
    UnknownArchitecture { found: String },
    /// Activations whose width is not the dictionary's.
    #[error("{what}: width {found}, but the dictionary expects {expected}")]
    Width { what: String, expected: i64, found: i64 },
    #[error("invalid input: {0}")]
    Input(String),
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

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Format { path: path.into(), message: message.into() }
    }
}
