//! Function upstreams (`type = "aws_lambda"`): a request becomes one call of Lambda's
//! Invoke API, signed with SigV4 by the SDK's signer, and the function's answer becomes the
//! response. `apigw` maps requests and answers in API Gateway's payload format 2.0.
//!
//! The calls go through reqwest (rustls, web PKI roots, its own pool): the endpoint is an
//! AWS API, not one of the operator's targets, so there is no balancing, health check or
//! breaker; Lambda retries and scales on its side.

pub mod apigw;

use crate::config::{self, Payload};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use once_cell::sync::Lazy;
use prometheus::{Histogram, IntCounterVec, Opts};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

static CLIENT: Lazy<reqwest::Client> = Lazy::new(|| {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("gatehouse")
        .build()
        .unwrap_or_default()
});

static INVOCATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "gatehouse_function_invocations_total",
            "Function upstream calls, by outcome (ok, function_error, invoke_error, timeout).",
        ),
        &["upstream", "outcome"],
    )
    .expect("static counter definition");
    let _ = crate::metrics::METRICS.registry.register(Box::new(c.clone()));
    c
});

pub struct Function {
    /// The upstream's name in the file.
    pub name: Arc<str>,
    /// `lambda:FUNCTION`, as the access log's target.
    pub target: Arc<str>,
    url: String,
    region: String,
    identity: Identity,
    pub payload: Payload,
    timeout: Duration,
    connect_timeout: Duration,
    duration: Histogram,
}

/// What the Invoke API answered with a 200.
pub struct Invoked {
    pub payload: Bytes,
    /// `X-Amz-Function-Error`: the function threw (`Unhandled`) or reported an error.
    pub function_error: Option<String>,
}

#[derive(Debug)]
pub enum InvokeError {
    /// The call did not get an answer (connect, TLS, reset).
    Transport(String),
    Timeout,
    /// The Invoke API refused: its status and error type (`SignatureDoesNotMatch`,
    /// `ResourceNotFoundException`, `TooManyRequestsException`...).
    Refused {
        status: u16,
        error_type: String,
    },
    TooLarge,
    Signing(String),
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::Transport(e) => write!(f, "invoke failed: {e}"),
            InvokeError::Timeout => write!(f, "invoke timed out"),
            InvokeError::Refused { status, error_type } => write!(f, "invoke refused with {status}: {error_type}"),
            InvokeError::TooLarge => write!(f, "function response too large"),
            InvokeError::Signing(e) => write!(f, "signing the invoke request: {e}"),
        }
    }
}

impl Function {
    pub fn new(name: &str, u: &config::Upstream) -> Result<Function, String> {
        let (Some(function), Some(region), Some(access), Some(secret)) = (&u.function, &u.region, &u.access_key, &u.secret_key) else {
            return Err("function, region, access_key and secret_key are required".into());
        };
        let endpoint = match &u.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://lambda.{region}.amazonaws.com"),
        };
        // Names and qualifiers were checked to need no encoding (config::function).
        let mut url = format!("{endpoint}/2015-03-31/functions/{function}/invocations");
        if let Some(q) = &u.qualifier {
            url.push_str("?Qualifier=");
            url.push_str(q);
        }
        let token = u.session_token.as_ref().map(|t| t.value.clone());
        let identity = Credentials::new(access.value.clone(), secret.value.clone(), token, None, "gatehouse-config").into();
        for outcome in ["ok", "function_error", "invoke_error", "timeout"] {
            INVOCATIONS.with_label_values(&[name, outcome]);
        }
        Ok(Function {
            name: Arc::from(name),
            target: Arc::from(format!("lambda:{function}").as_str()),
            url,
            region: region.clone(),
            identity,
            payload: u.payload.unwrap_or_default(),
            timeout: u.read_timeout.0,
            connect_timeout: u.connect_timeout.0,
            duration: crate::metrics::METRICS.upstream_duration.with_label_values(&[name]),
        })
    }

    /// One synchronous (`RequestResponse`) invocation; the answer is read up to `limit` bytes.
    pub async fn invoke(&self, payload: Vec<u8>, limit: usize) -> Result<Invoked, InvokeError> {
        let started = std::time::Instant::now();
        let r = self.call(payload, limit).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &r {
            Ok(i) if i.function_error.is_some() => "function_error",
            Ok(_) => "ok",
            Err(InvokeError::Timeout) => "timeout",
            Err(_) => "invoke_error",
        };
        INVOCATIONS.with_label_values(&[&self.name, outcome]).inc();
        r
    }

    async fn call(&self, payload: Vec<u8>, limit: usize) -> Result<Invoked, InvokeError> {
        let headers = self.sign(&payload)?;
        let mut req = CLIENT
            .post(&self.url)
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(payload);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let sent = tokio::time::timeout(self.timeout + self.connect_timeout, req.send()).await;
        let mut resp = match sent {
            Err(_) => return Err(InvokeError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(InvokeError::Timeout),
            Ok(Err(e)) => return Err(InvokeError::Transport(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let error_header = header("x-amzn-errortype");
        let function_error = header("x-amz-function-error");
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(InvokeError::TooLarge);
        }
        let mut body = bytes::BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > limit {
                        return Err(InvokeError::TooLarge);
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(InvokeError::Timeout),
                Err(e) => return Err(InvokeError::Transport(error_chain(&e))),
            }
        }
        if status != 200 {
            let error_type = error_header
                .map(|t| t.split(':').next().unwrap_or_default().to_string())
                .or_else(|| apigw::error_type(&body))
                .unwrap_or_else(|| "unknown".into());
            return Err(InvokeError::Refused { status, error_type });
        }
        Ok(Invoked {
            payload: body.freeze(),
            function_error,
        })
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and the token if any) for a POST of
    /// `payload` to the invoke URL.
    fn sign(&self, payload: &[u8]) -> Result<Vec<(String, String)>, InvokeError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("lambda")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| InvokeError::Signing(e.to_string()))?
            .into();
        let headers = [("content-type", "application/json")];
        let signable = SignableRequest::new("POST", &self.url, headers.into_iter(), SignableBody::Bytes(payload))
            .map_err(|e| InvokeError::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| InvokeError::Signing(e.to_string()))?
            .into_parts();
        Ok(instructions.headers().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

/// The error and its causes, which reqwest keeps apart (the top one alone says only
/// "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
