//! `[admin]`: the admin listener, who may call it, and where API writes go.

use super::values::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub addr: String,
    /// The single token of earlier versions: still accepted, with the write role.
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub tokens: Vec<AdminToken>,
    /// Serve the web console at `/ui`.
    #[serde(default)]
    pub ui: bool,
    /// Where API writes go: a TOML file merged over the main one at every load. Relative
    /// paths are taken from the main file's directory. Without it, config writes refuse.
    #[serde(default)]
    pub managed: Option<String>,
    /// JSON lines, one per config write (who, what, the ETags and a redacted diff).
    #[serde(default)]
    pub audit_log: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub name: String,
    pub token: Secret,
    #[serde(default)]
    pub role: Role,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET only: status, metrics, config (redacted), analytics.
    #[default]
    Read,
    /// Also config writes, reload, purge and usage reset.
    Write,
}

impl Admin {
    /// Every token with its name and role; the single `token` is named "admin".
    pub fn all_tokens(&self) -> impl Iterator<Item = (&str, &Secret, Role)> {
        self.token
            .iter()
            .map(|t| ("admin", t, Role::Write))
            .chain(self.tokens.iter().map(|t| (t.name.as_str(), &t.token, t.role)))
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }
}
