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
    /// Set for the gateway's own JSON errors: the core writes the body
    /// (`{"error","status","request_id"}`) once it knows the request id, and `body` is unused.
    pub error: Option<String>,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body: body.into(),
            error: None,
        }
    }

    /// The gateway's uniform JSON error shape; the core renders it with the request id.
    pub fn error(status: u16, message: &str) -> Self {
        Answer {
            error: Some(message.to_string()),
            ..Answer::new(status, "application/json", Bytes::new())
        }
    }

    /// An answer with no body (204, 304).
    pub fn empty(status: u16) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            error: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}
