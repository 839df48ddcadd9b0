//! The mkosi configuration engine.
//!
//! Reads an upstream mkosi configuration tree exactly as upstream does:
//! discovery and parse order, the INI dialect, every value type, `[Match]`
//! sections, includes, profiles, subimages, specifiers and computed
//! defaults. The result is one fully resolved [`Config`] per image, which
//! serializes to (and reads back from) upstream's JSON.
//!
//! Entry point: [`parse_config`].

pub mod config;
pub mod context;
pub mod defaults;
pub mod distribution;
pub mod enums;
pub mod error;
pub mod host;
pub mod ini;
pub mod json;
pub mod parse;
pub mod pathutil;
pub mod pyglob;
pub mod settings;
pub mod shlex;
pub mod summary;
pub mod toplevel;
pub mod version;

pub use config::{Args, Config, Verb};
pub use error::{Error, Result};
pub use host::Host;
pub use parse::MKOSI_VERSION;
pub use toplevel::{bump_image_version, finalize_configdir, parse_config, CliAssignment, Parsed};
