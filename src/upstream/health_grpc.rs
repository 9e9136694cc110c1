//! The gRPC health check: `grpc.health.v1.Health/Check` through tonic's generated client,
//! over the connection the checker opened (plain h2c, or OpenSSL with ALPN h2), so the
//! check trusts exactly what requests to the target trust.

use super::health::Io;
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Whether the target says `service` (or the server, for "") is SERVING; `None` when the
/// call failed.
pub async fn serving(io: Box<dyn Io>, service: &str) -> Option<bool> {
    // The connector is asked once, for the one connection this check uses.
    let conn = Mutex::new(Some(io));
    let connector = tower::service_fn(move |_: http::Uri| {
        let io = conn.lock().ok().and_then(|mut c| c.take());
        async move {
            io.map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("health check connection already used"))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://health.check")
        .connect_with_connector(connector)
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status == ServingStatus::Serving as i32)
}
