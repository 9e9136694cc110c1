use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// A response a plugin gives instead of proxying (401, 403, 429, a static page...).
///
/// The core writes it, adds the request id and runs the response side of the chain on it,
/// so a plugin never has to remember framing headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body: body.into(),
        }
    }

    /// The gateway's uniform JSON error shape; the core fills in the request id.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message, "status": status });
        Answer::new(status, "application/json", body.to_string())
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}
