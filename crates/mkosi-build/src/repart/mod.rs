//! Disk images from repart.d partition definitions, assembled in-process.
//!
//! This is our replacement for `systemd-repart` as mkosi drives it: it only
//! ever creates new images (`--empty=create`/`allow` on a fresh file with
//! `--size=auto`), so there is no existing partition table to merge with.
//!
//! * [`definition`] parses repart.d files (with drop-ins) into [`definition::Definition`]s.
//! * [`plan`] decides sizes, offsets, UUIDs and labels (pure, unit-tested).
//! * [`populate`] stages the files that go into a partition (CopyFiles=, ExcludeFiles=, MakeDirectories=).
//! * [`mkfs`] makes a filesystem image file from a staged directory with the standard `mkfs.*` tools.
//! * [`verity_sig`] produces the content of a verity signature partition.
//!
//! The GPT itself and the dm-verity hash tree are written by `mkosi_formats`.

pub mod definition;
pub mod mkfs;
pub mod plan;
pub mod populate;
pub mod verity_sig;

use std::path::PathBuf;

use mkosi_sandbox::run::RunError;

/// Errors of the disk image assembly.
#[derive(Debug, thiserror::Error)]
pub enum RepartError {
    /// A bad repart.d definition: names the file and line.
    #[error("{}:{line}: {message}", path.display())]
    Definition { path: PathBuf, line: usize, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{what} {}: {source}", path.display())]
    Io { what: String, path: PathBuf, source: std::io::Error },
    #[error("{message}")]
    Message { message: String, hint: Option<String> },
}

impl RepartError {
    pub fn msg(message: impl Into<String>) -> RepartError {
        RepartError::Message { message: message.into(), hint: None }
    }

    pub fn hint(message: impl Into<String>, hint: impl Into<String>) -> RepartError {
        RepartError::Message { message: message.into(), hint: Some(hint.into()) }
    }

    pub fn hint_text(&self) -> Option<&str> {
        match self {
            RepartError::Message { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }
}

pub(crate) fn io(what: &str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RepartError {
    let (what, path) = (what.to_string(), path.into());
    move |source| RepartError::Io { what, path, source }
}

pub type Result<T, E = RepartError> = std::result::Result<T, E>;

mod assemble;
pub use assemble::{make_image, read_partitions, PartitionResult, RepartRequest};
