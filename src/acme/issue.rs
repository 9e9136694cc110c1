//! One ACME order: the account (restored from storage, or created and stored), the HTTP-01
//! challenges put where the proxy answers them, then the chain and its new key.

use super::AcmeState;
use crate::config::AcmeCfg;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::path::Path;
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn builder(cfg: &AcmeCfg) -> Result<AccountBuilder, String> {
    let b = match cfg.directory_ca.as_deref().and_then(|c| c.strip_prefix("file:")) {
        Some(path) => Account::builder_with_root(path),
        None => Account::builder(),
    };
    b.map_err(|e| format!("ACME HTTP client: {e}"))
}

async fn account(cfg: &AcmeCfg) -> Result<Account, String> {
    let dir = Path::new(&cfg.storage);
    let path = dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<StoredAccount>(&text) {
            Ok(s) if s.directory == cfg.directory => {
                return builder(cfg)?
                    .from_credentials(s.credentials)
                    .await
                    .map_err(|e| format!("restoring the account in {}: {e}", path.display()));
            }
            Ok(_) => log::info!("acme: {} belongs to another directory; creating an account", path.display()),
            Err(e) => log::warn!("acme: {} is unreadable ({e}); creating an account", path.display()),
        }
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder(cfg)?
        .create(&new, cfg.directory.clone(), None)
        .await
        .map_err(|e| format!("creating an account at {}: {e}", cfg.directory))?;
    let stored = StoredAccount {
        directory: cfg.directory.clone(),
        credentials,
    };
    let text = serde_json::to_string(&stored).map_err(|e| format!("account credentials: {e}"))?;
    super::storage::write(dir, "account.json", &text, 0o600)?;
    Ok(account)
}

/// Removes the tokens it was given when the order ends, however it ends.
struct Tokens<'a> {
    state: &'a AcmeState,
    tokens: Vec<String>,
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.state.drop_challenge(t);
        }
    }
}

/// Orders a certificate for `cfg.hosts`: (chain PEM, key PEM).
pub async fn order(cfg: &AcmeCfg, state: &AcmeState) -> Result<(String, String), String> {
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = cfg.hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Tokens { state, tokens: Vec::new() };
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| format!("authorization: {e}"))?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = a.challenge(ChallengeType::Http01).ok_or("the CA offers no http-01 challenge")?;
        state.put_challenge(&challenge.token, challenge.key_authorization().as_str().to_string());
        tokens.tokens.push(challenge.token.clone());
        challenge.set_ready().await.map_err(|e| format!("challenge ready: {e}"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(120));
    match order.poll_ready(&retry).await.map_err(|e| format!("validation: {e}"))? {
        OrderStatus::Ready => {}
        other => return Err(format!("the order is {other:?} after validation")),
    }
    drop(tokens);
    let key = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
    let chain = order.poll_certificate(&retry).await.map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, key))
}
