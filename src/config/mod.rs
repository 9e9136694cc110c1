//! The TOML file: serde structs, value parsers, and the checks that refuse a bad file.
//!
//! The parsed [`File`] is not what requests run on; `crate::snapshot` turns it into the
//! runtime model. Keeping the two apart lets the file format grow without touching the
//! hot path.

mod admin;
mod aggregate;
mod alerts;
pub mod discovery;
mod error;
mod file;
mod function;
pub mod managed;
mod metering;
mod observability;
pub mod source;
mod tls;
mod upstream;
mod validate;
pub mod values;

pub use aggregate::{AggregateCfg, BackendCfg, Merge, OnPartial, Part, Source, Template};
pub use alerts::{default_windows, AlertsCfg, ReceiverCfg, ReceiverKind, RuleCfg, RuleKind, Threshold, WindowCfg};
pub use error::{ConfigError, ConfigErrors};
pub use file::*;
pub use function::{Payload, UpstreamKind};
pub use metering::{MeteringCfg, RetryCfg, RouteMeteringCfg, SinkCfg, SinkKind, LAGO_BATCH};
pub use observability::check_ratio;

use std::path::Path;

/// Reads, parses and validates a config file. Every problem found is reported, each with
/// the file, the key path and the reason.
pub fn load(path: &Path) -> Result<File, ConfigErrors> {
    let file_name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigErrors::one(ConfigError::new(&file_name, "", format!("cannot read file: {e}"))))?;
    parse_str(&file_name, &text)
}

/// Parses and validates config text; `file_name` is only used in error messages.
pub fn parse_str(file_name: &str, text: &str) -> Result<File, ConfigErrors> {
    let mut parsed = deserialize(file_name, text)?;
    let errors = validate::validate(&mut parsed);
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ConfigErrors(
            errors
                .into_iter()
                .map(|(key, reason)| ConfigError::new(file_name, &key, reason))
                .collect(),
        ))
    }
}

/// The text as a [`File`] without the cross-reference checks: the syntax and type errors,
/// with their lines in this text (a shared document is checked alone this way before it
/// is joined to a node file).
pub fn deserialize(file_name: &str, text: &str) -> Result<File, ConfigErrors> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let reason = inner.message().to_string();
        let reason = match line {
            Some(l) => format!("{reason} (line {l})"),
            None => reason,
        };
        ConfigErrors::one(ConfigError::new(file_name, if key == "." { "" } else { &key }, reason))
    })
}
