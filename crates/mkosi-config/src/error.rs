//! Errors of the configuration engine. Every error raised while reading a
//! file carries the file, line and setting it came from.

use std::fmt;
use std::path::PathBuf;

/// Where in the configuration an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// The setting (or match key) being parsed, as written.
    pub setting: Option<String>,
}

/// A configuration error for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub hint: Option<String>,
    pub location: Option<Location>,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error { message: message.into(), hint: None, location: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Attach a location unless the error already has one.
    pub fn at(mut self, file: impl Into<PathBuf>, line: Option<usize>, setting: Option<&str>) -> Error {
        if self.location.is_none() {
            self.location = Some(Location { file: file.into(), line, setting: setting.map(str::to_string) });
        }
        self
    }

    /// Attach the command line option an error came from.
    pub fn on_cli(mut self, option: &str) -> Error {
        if self.location.is_none() {
            self.message = format!("{option}: {}", self.message);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{}", loc.file.display())?;
            if let Some(line) = loc.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
            if let Some(setting) = &loc.setting {
                write!(f, "{setting}=: ")?;
            }
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
