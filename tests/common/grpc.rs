//! A real tonic gRPC upstream and client for the gateway's tests, with no protoc: the
//! standard `grpc.health.v1.Health` service (tonic-health's generated server trait,
//! implemented here so it can be slow or stream with gaps) and a small `test.Echo` service
//! written against tonic's server API with prost-derived messages, for the client- and
//! bidi-streaming calls.
//!
//! Health: service "" answers SERVING (or NOT_SERVING once `set_serving(false)`),
//! "slow" answers after 3 s, "missing" is NOT_FOUND, "broken" is UNAVAILABLE. `Watch("gaps:N:MS")` streams N
//! SERVING updates MS ms apart.
//! Echo: `Sum` (client streaming) adds the numbers; an odd sum fails with
//! FAILED_PRECONDITION and an `x-sum` trailer. `Chat` (bidi) answers each n with 2n; a 0
//! ends the call with OUT_OF_RANGE and an `x-count` trailer after the messages.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::{http, BoxFuture};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    #[prost(int64, tag = "1")]
    pub n: i64,
}

#[derive(Default)]
pub struct State {
    pub serving: AtomicBool,
    pub checks: AtomicUsize,
    pub calls: AtomicUsize,
    /// Connections accepted: a gateway multiplexing its calls opens few.
    pub conns: AtomicUsize,
    /// The `te` header of the last Echo call (gRPC servers may require `trailers`).
    pub last_te: std::sync::Mutex<Option<String>>,
}

struct HealthImpl(Arc<State>);

fn reply(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

#[tonic::async_trait]
impl Health for HealthImpl {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.checks.fetch_add(1, Ordering::SeqCst);
        match req.get_ref().service.as_str() {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Response::new(reply(ServingStatus::Serving)))
            }
            "missing" => Err(Status::not_found("unknown service")),
            "broken" => Err(Status::unavailable("backend down")),
            _ if self.0.serving.load(Ordering::SeqCst) => Ok(Response::new(reply(ServingStatus::Serving))),
            _ => Ok(Response::new(reply(ServingStatus::NotServing))),
        }
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let spec = req.get_ref().service.clone();
        let mut it = spec
            .strip_prefix("gaps:")
            .unwrap_or("1:0")
            .split(':')
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (n, ms) = (it.next().unwrap_or(1), it.next().unwrap_or(0));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for _ in 0..n {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if tx.send(Ok(reply(ServingStatus::Serving))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `test.Echo`, routed by path as generated code would.
#[derive(Clone)]
struct Echo(Arc<State>);

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

fn trailer(name: &'static str, v: i64) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    m.insert(name, v.to_string().parse().expect("ascii"));
    m
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let te = req.headers().get("te").and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Ok(mut last) = self.0.last_te.lock() {
            *last = te;
        }
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Num, Num>::default());
        match req.uri().path() {
            "/test.Echo/Sum" => Box::pin(async move {
                let svc = tower::service_fn(|r: Request<Streaming<Num>>| async move {
                    let mut s = r.into_inner();
                    let mut sum = 0;
                    while let Some(m) = s.next().await {
                        sum += m?.n;
                    }
                    if sum % 2 != 0 {
                        return Err(Status::with_metadata(Code::FailedPrecondition, "odd sum", trailer("x-sum", sum)));
                    }
                    Ok(Response::new(Num { n: sum }))
                });
                Ok(grpc.client_streaming(svc, req).await)
            }),
            "/test.Echo/Chat" => Box::pin(async move {
                let svc = tower::service_fn(|r: Request<Streaming<Num>>| async move {
                    let mut s = r.into_inner();
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    tokio::spawn(async move {
                        let mut count = 0;
                        while let Some(Ok(m)) = s.next().await {
                            if m.n == 0 {
                                let end = Status::with_metadata(Code::OutOfRange, "done", trailer("x-count", count));
                                let _ = tx.send(Err(end)).await;
                                return;
                            }
                            count += 1;
                            if tx.send(Ok(Num { n: m.n * 2 })).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok::<_, Status>(Response::new(ReceiverStream::new(rx)))
                });
                Ok(grpc.streaming(svc, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

pub struct GrpcUpstream {
    pub addr: String,
    pub state: Arc<State>,
}

impl GrpcUpstream {
    /// Serves h2c, or TLS (ALPN h2) with `tls = Some((cert_pem, key_pem))`.
    pub fn start(tls: Option<(String, String)>) -> GrpcUpstream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr").to_string();
        let state = Arc::new(State::default());
        state.serving.store(true, Ordering::SeqCst);
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                let counted = st.clone();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).map(move |c| {
                    counted.conns.fetch_add(1, Ordering::SeqCst);
                    c
                });
                let mut b = tonic::transport::Server::builder();
                if let Some((cert, key)) = tls {
                    let id = tonic::transport::Identity::from_pem(cert, key);
                    b = b.tls_config(tonic::transport::ServerTlsConfig::new().identity(id)).expect("tls");
                }
                b.add_service(HealthServer::new(HealthImpl(st.clone())))
                    .add_service(Echo(st))
                    .serve_with_incoming(incoming)
                    .await
                    .expect("serve");
            });
        });
        GrpcUpstream { addr, state }
    }

    pub fn set_serving(&self, on: bool) {
        self.state.serving.store(on, Ordering::SeqCst);
    }
}

/// A channel to `addr` (h2c) through which the test's calls go.
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gateway")
}

pub async fn check(ch: tonic::transport::Channel, service: &str) -> Result<i32, Status> {
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = c.check(HealthCheckRequest { service: service.into() }).await?;
    Ok(r.into_inner().status)
}

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

pub async fn sum(ch: tonic::transport::Channel, nums: Vec<i64>) -> Result<i64, Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let req = Request::new(tokio_stream::iter(nums.into_iter().map(|n| Num { n })));
    let r = g
        .client_streaming(req, path("/test.Echo/Sum"), tonic_prost::ProstCodec::<Num, Num>::default())
        .await?;
    Ok(r.into_inner().n)
}

/// Sends `nums` then 0; the doubled answers and the final status (with its trailers).
pub async fn chat(ch: tonic::transport::Channel, nums: Vec<i64>) -> (Vec<i64>, Status) {
    let mut g = tonic::client::Grpc::new(ch);
    if let Err(e) = g.ready().await {
        return (Vec::new(), Status::unknown(e.to_string()));
    }
    let msgs: Vec<Num> = nums.into_iter().chain([0]).map(|n| Num { n }).collect();
    let req = Request::new(tokio_stream::iter(msgs));
    let mut got = Vec::new();
    let mut s = match g
        .streaming(req, path("/test.Echo/Chat"), tonic_prost::ProstCodec::<Num, Num>::default())
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (got, e),
    };
    loop {
        match s.message().await {
            Ok(Some(m)) => got.push(m.n),
            Ok(None) => return (got, Status::ok("")),
            Err(e) => return (got, e),
        }
    }
}
