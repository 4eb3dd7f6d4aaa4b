//! The error type of `ld3-solvers`: every variant names the cause and, where there is one, the fix.

/// Errors of the solvers, schedules and schedule files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The caller's input cannot be used; the message says why and what to do instead.
    #[error("{0}")]
    Invalid(String),
    /// The model produced NaN or infinity.
    #[error(
        "the denoiser returned a non-finite value (NaN or infinity) at network time t_net = {t_net} \
         (evaluation {evaluation}); check the model weights and that the input state is finite \
         (a solver diverging at too few steps, or a schedule outside the model's time range, \
         can also cause this)"
    )]
    NonFinite {
        /// The network time of the first evaluation that went wrong.
        t_net: f64,
        /// Which evaluation of the solve it was (1 = the first).
        evaluation: usize,
    },
    /// The model failed (an error from the model's own crate).
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Not `#[source]`: the message already holds it (a chain would print it twice).
        cause: std::io::Error,
    },
    /// A JSON document does not have the expected form.
    #[error("{what}: {cause}")]
    Json {
        /// What the document should have been.
        what: String,
        /// Not `#[source]`, as for `Io`.
        cause: serde_json::Error,
    },
}

/// Result alias for `ld3-solvers`.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::Invalid`].
pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}
