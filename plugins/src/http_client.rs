//! One HTTP client for plugins that call out (JWKS, forward auth): pooled connections and
//! TLS with the web PKI roots.

use once_cell::sync::Lazy;
use std::time::Duration;

pub static CLIENT: Lazy<reqwest::Client> = Lazy::new(|| {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("gatehouse")
        .build()
        .unwrap_or_default()
});
