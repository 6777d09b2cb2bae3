use std::path::PathBuf;

/// Every failure of `transcoders`, carrying the offending path, name or shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's error (loading a model, running it).
    #[error(transparent)]
    Core(#[from] interp_core::Error),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A dictionary or activation-cache folder that does not hold what its format requires.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An architecture name no reader knows.
    #[error("unknown dictionary architecture `{found}`; supported: {}", supported.join(", "))]
    UnknownArchitecture {
        /// The name found.
        found: String,
        /// The names the readers know.
        supported: &'static [&'static str],
    },
    /// Activations whose width is not the dictionary's.
    #[error("{what}: width {found}, but the dictionary expects {expected}")]
    Width {
        /// Which activations.
        what: String,
        /// The dictionary's width.
        expected: i64,
        /// The activations' width.
        found: i64,
    },
    /// Activations with NaN or inf.
    #[error("activations of `{hook}` in batch {batch} contain NaN or inf")]
    NotFinite {
        /// The hook they came from.
        hook: String,
        /// The batch (training step) they are in.
        batch: usize,
    },
    /// A dictionary's loss went non-finite in training.
    #[error("the loss of `{hook}` is {loss} at step {step}; stopped (the last checkpoint is untouched)")]
    Diverged {
        /// The hook the dictionary reads.
        hook: String,
        /// The loss.
        loss: f64,
        /// The step.
        step: usize,
    },
    /// An activation cache that another model, corpus or setting produced.
    #[error("{}: this activation cache was written by another run:\n  {}\n{}", path.display(), differences.join("\n  "), if *reuse_allowed { "delete it, point to another cache folder, or reuse it as it is (--reuse-cache)" } else { "it cannot serve this dictionary; delete it or point to another cache folder" })]
    CacheMismatch {
        /// The cache folder.
        path: PathBuf,
        /// One line per difference.
        differences: Vec<String>,
        /// Whether the cache could still serve (it has the hooks, at the right widths).
        reuse_allowed: bool,
    },
    /// A dictionary made for another model: a hook it reads or writes is not one of the model's.
    #[error("{}: the dictionary's hook `{hook}` does not fit this model: {source}", path.display())]
    OtherModel {
        /// The dictionary's folder.
        path: PathBuf,
        /// The hook.
        hook: String,
        /// The model's reason.
        source: Box<interp_core::Error>,
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
    /// Activations that lack a hook a dictionary reads or predicts.
    #[error("the activations have no `{hook}` (they have: {})", available.join(", "))]
    MissingHook {
        /// The hook asked for.
        hook: String,
        /// The hooks they have.
        available: Vec<String>,
    },
    /// Anything else a caller gave that cannot be used, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
    /// libtorch's message, first line only (the rest is a C++ backtrace).
    #[error("torch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An invalid setting: its name, the value given and what it must be.
    pub(crate) fn setting(name: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> Error {
        Error::Setting { name: name.to_string(), value: value.to_string(), expected: expected.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Format { path: path.into(), message: message.into() }
    }
}
