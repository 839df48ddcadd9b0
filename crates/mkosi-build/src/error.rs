//! Build errors: every failure names the step it happened in.

use std::path::PathBuf;

use mkosi_distro::DistroError;
use mkosi_sandbox::run::RunError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{step} failed: {source}")]
    Step { step: String, source: Box<BuildError> },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    Sandbox(#[from] mkosi_sandbox::SandboxError),
    #[error(transparent)]
    Config(#[from] mkosi_config::Error),
    #[error(transparent)]
    Repart(#[from] crate::repart::RepartError),
    #[error("{what} {}: {source}", path.display())]
    Io { what: String, path: PathBuf, source: std::io::Error },
    #[error("{message}")]
    Message { message: String, hint: Option<String> },
}

impl BuildError {
    pub fn msg(message: impl Into<String>) -> BuildError {
        BuildError::Message { message: message.into(), hint: None }
    }

    pub fn hint(message: impl Into<String>, hint: impl Into<String>) -> BuildError {
        BuildError::Message { message: message.into(), hint: Some(hint.into()) }
    }

    /// Wrap the error with the name of the step it happened in.
    pub fn in_step(self, step: &str) -> BuildError {
        match self {
            e @ BuildError::Step { .. } => e,
            e => BuildError::Step { step: step.to_string(), source: Box::new(e) },
        }
    }

    /// A hint for the user, if any.
    pub fn hint_text(&self) -> Option<&str> {
        match self {
            BuildError::Step { source, .. } => source.hint_text(),
            BuildError::Message { hint, .. } => hint.as_deref(),
            BuildError::Config(c) => c.hint.as_deref(),
            BuildError::Repart(r) => r.hint_text(),
            _ => None,
        }
    }
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;

pub(crate) fn io(what: &str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
    let (what, path) = (what.to_string(), path.into());
    move |source| BuildError::Io { what, path, source }
}
