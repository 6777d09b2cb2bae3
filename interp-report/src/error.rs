use std::path::PathBuf;

/// Every failure of `interp-report`: the analyses' own (through [`circuits::Error`], which carries the
/// runtime's, the dictionaries' and libtorch's) and the files this crate writes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An analysis's error, or the runtime's, the dictionaries' or libtorch's beneath it.
    #[error(transparent)]
    Circuits(#[from] circuits::Error),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// plotters could not draw or write a chart.
    #[error("chart {path}: {message}")]
    Chart {
        /// The chart's file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// polars could not build or write a table.
    #[error("table {path}: {message}")]
    Table {
        /// The table's file stem.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Anything else a caller gave that cannot be used, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

// The layers below report through `circuits::Error`, so that each reads the same however deep it
// was raised.
impl From<interp_core::Error> for Error {
    fn from(e: interp_core::Error) -> Self {
        Error::Circuits(e.into())
    }
}

impl From<transcoders::Error> for Error {
    fn from(e: transcoders::Error) -> Self {
        Error::Circuits(e.into())
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Circuits(e.into())
    }
}
