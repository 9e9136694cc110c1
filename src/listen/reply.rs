//! Answers written straight to the socket, before Pingora has a session: always
//! `Connection: close`, JSON, with a request id.

use crate::proxy::identity::new_request_id;
use pingora_core::protocols::Stream;
use tokio::io::AsyncWriteExt;

pub async fn refuse(stream: &mut Stream, status: u16, reason: &str, message: &str) -> String {
    let id = new_request_id();
    let body = serde_json::json!({ "error": message, "status": status, "request_id": id }).to_string();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-request-id: {id}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    let write = async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    // A peer that does not read must not hold this task: bound the write.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
    id
}
