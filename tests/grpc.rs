//! gRPC through the real gateway: a real tonic server and tonic client, h2c on both sides
//! (and TLS with ALPN h2 to the upstream): unary, server, client and bidi streaming,
//! trailers intact, many calls on few upstream connections, long streams past the read
//! timeout, every refusal as the gRPC code a client reads, `grpc-timeout`, and the gRPC
//! health check.

mod common;
use common::grpc::{channel, chat, check, sum, GrpcUpstream};
use common::Gateway;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::Code;

/// The usual header with h2c on the public listener, so tonic reaches the gateway with
/// prior knowledge.
fn start(body: &str) -> Gateway {
    let header = common::gateway::HEADER.replace("addr = \"{listen}\"", "addr = \"{listen}\"\nh2c = true");
    Gateway::start_raw(&format!("{header}\n{body}"), &[])
}

fn orders(up: &str, route_extra: &str) -> String {
    format!(
        r#"
[upstreams.orders]
targets = ["{up}"]
http2 = true
max_streams = 100
retries = 0
[upstreams.orders.circuit_breaker]
consecutive_failures = 1
max_ejected_percent = 100
[routes.orders]
paths = ["/grpc.health.v1.Health/", "/test.Echo/"]
upstream = "orders"
grpc = true
{route_extra}
"#
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn unary_and_streaming_calls_keep_their_trailers_and_share_connections() {
    let up = GrpcUpstream::start(None);
    let gw = start(&orders(&up.addr, ""));
    let rt = rt();
    rt.block_on(async {
        let ch = channel(&gw.addr).await;
        assert_eq!(check(ch.clone(), "").await.expect("unary"), 1, "SERVING");
        // An application error is the upstream's status, passed through, and not held
        // against the target.
        let e = check(ch.clone(), "missing").await.expect_err("NOT_FOUND");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(e.message(), "unknown service");
        // Client streaming; its error is trailers-only with the server's own trailer.
        assert_eq!(sum(ch.clone(), vec![1, 2, 3]).await.expect("client streaming"), 6);
        let e = sum(ch.clone(), vec![1, 2]).await.expect_err("odd");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.metadata().get("x-sum").map(|v| v.to_str().unwrap()), Some("3"));
        // Bidi: answers as they come, then the status and a trailer after the data.
        let (got, end) = chat(ch.clone(), vec![1, 2, 3]).await;
        assert_eq!(got, vec![2, 4, 6]);
        assert_eq!(end.code(), Code::OutOfRange, "{end:?}");
        assert_eq!(end.metadata().get("x-count").map(|v| v.to_str().unwrap()), Some("3"));

        // 40 calls at once from one client connection: the upstream sees few connections.
        let before = up.state.conns.load(Ordering::SeqCst);
        let calls: Vec<_> = (0..40).map(|_| tokio::spawn(check(ch.clone(), ""))).collect();
        for c in calls {
            assert_eq!(c.await.unwrap().expect("concurrent call"), 1);
        }
        let opened = up.state.conns.load(Ordering::SeqCst) - before;
        assert!(opened <= 2, "40 concurrent calls opened {opened} upstream connections");
    });
    let status = gw.admin_get("/status").json();
    assert_eq!(status["clusters"]["orders"]["targets"][0]["ejections"], 0, "{status}");
    // UNAVAILABLE from the target is the target failing: the breaker (one failure) ejects it.
    rt.block_on(async {
        let e = check(channel(&gw.addr).await, "broken").await.expect_err("UNAVAILABLE");
        assert_eq!(e.code(), Code::Unavailable);
    });
    let status = gw.admin_get("/status").json();
    assert_eq!(status["clusters"]["orders"]["targets"][0]["ejections"], 1, "{status}");
    assert_eq!(
        gw.metric("gatehouse_grpc_requests_total{grpc_status=\"5\",method=\"/grpc.health.v1.Health/Check\",route=\"orders\"}"),
        1.0
    );
    assert!(gw.metric("gatehouse_grpc_requests_total{grpc_status=\"0\",method=\"/test.Echo/Sum\",route=\"orders\"}") >= 1.0);
    common::wait_until(Duration::from_secs(5), "the bidi call's log line", || {
        gw.access_log()
            .iter()
            .any(|l| l["grpc_method"] == "/test.Echo/Chat" && l["grpc_status"] == 11)
    });
}

#[test]
fn a_server_stream_runs_30s_with_gaps_longer_than_the_read_timeout() {
    let up = GrpcUpstream::start(None);
    let body = orders(&up.addr, "timeout = \"0s\"").replace("retries = 0", "retries = 0\nread_timeout = \"1s\"");
    let gw = start(&body);
    let rt = rt();
    rt.block_on(async {
        let mut c = tonic_health::pb::health_client::HealthClient::new(channel(&gw.addr).await);
        let req = tonic_health::pb::HealthCheckRequest {
            service: "gaps:20:1500".into(),
        };
        let started = Instant::now();
        let mut s = c.watch(req).await.expect("watch").into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await.expect("no cut in the gaps") {
            assert_eq!(m.status, 1);
            n += 1;
        }
        assert_eq!(n, 20);
        assert!(started.elapsed() >= Duration::from_secs(29));
    });
}

#[test]
fn refusals_are_the_grpc_codes_a_client_reads() {
    let up = GrpcUpstream::start(None);
    let extra = r#"
[routes.orders.plugins.key_auth]
[routes.orders.plugins.rate_limit]
requests = 2
per = "1m"
[routes.echo]
paths = ["/test.Echo/"]
upstream = "orders"
grpc = true
[routes.echo.plugins.ip_restriction]
deny = ["127.0.0.0/8"]
[consumers.shop]
keys = ["shop-key"]
"#;
    let gw = start(&orders(&up.addr, extra).replace("\"/grpc.health.v1.Health/\", \"/test.Echo/\"", "\"/grpc.health.v1.Health/\""));
    let down = start(&orders("127.0.0.1:1", ""));
    let rt = rt();
    rt.block_on(async {
        let ch = channel(&gw.addr).await;
        let e = check(ch.clone(), "").await.expect_err("no key");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let keyed = |svc: &'static str| {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            async move {
                let mut r = tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: svc.into() });
                r.metadata_mut().insert("x-api-key", "shop-key".parse().unwrap());
                c.check(r).await.map(|r| r.into_inner().status)
            }
        };
        assert_eq!(keyed("").await.expect("with a key"), 1);
        assert_eq!(keyed("").await.expect("second of two"), 1);
        let e = keyed("").await.expect_err("over the rate limit");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        let e = sum(ch.clone(), vec![2]).await.expect_err("denied address");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // No route: the method does not exist here.
        let mut g = tonic::client::Grpc::new(ch.clone());
        g.ready().await.unwrap();
        let e = g
            .unary(
                tonic::Request::new(common::grpc::Num { n: 1 }),
                tonic::codegen::http::uri::PathAndQuery::from_static("/nope.Svc/Call"),
                tonic_prost::ProstCodec::<common::grpc::Num, common::grpc::Num>::default(),
            )
            .await
            .expect_err("no route");
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
        // The upstream is down.
        let e = check(channel(&down.addr).await, "").await.expect_err("no upstream");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    });
    // The route's read timeout, past which the gateway gives up: DEADLINE_EXCEEDED.
    let slow = start(&orders(&up.addr, "timeout = \"300ms\""));
    rt.block_on(async {
        let t = Instant::now();
        let e = check(channel(&slow.addr).await, "slow").await.expect_err("slow");
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "the gateway answered before the upstream");
    });
    assert_eq!(up.state.calls.load(Ordering::SeqCst), 0, "no refused call reached the echo service");
}

/// One call from a raw h2 client: the answer's HTTP status and header block.
async fn raw_call(addr: &str, path: &str, timeout: Option<&str>, body: &'static [u8]) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(bytes::Bytes::from_static(body), true).unwrap();
    let resp = resp.await.unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

fn v<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// What is on the wire: a refusal is HTTP 200 with the status in a trailers-only header
/// block (a client that maps HTTP errors itself would read 401 and 404 the same way, so
/// this looks at the frames), and `grpc-timeout` from a client that does not enforce it
/// itself (tonic would, and report CANCELLED) is answered by the gateway.
#[test]
fn refusals_are_trailers_only_and_grpc_timeout_is_the_deadline() {
    let up = GrpcUpstream::start(None);
    let gw = start(&orders(&up.addr, "[routes.orders.plugins.key_auth]\n[consumers.c]\nkeys = [\"k\"]"));
    let open = start(&orders(&up.addr, ""));
    let rt = rt();
    rt.block_on(async {
        let (status, h) = raw_call(&gw.addr, "/grpc.health.v1.Health/Check", None, b"\x00\x00\x00\x00\x00").await;
        assert_eq!(
            (status, v(&h, "grpc-status"), v(&h, "content-type")),
            (200, "16", "application/grpc"),
            "{h:?}"
        );
        // Printable ASCII goes as it is; only other bytes and `%` are percent-encoded.
        assert_eq!(v(&h, "grpc-message"), "authentication required");
        let (status, h) = raw_call(&gw.addr, "/nope.Svc/Call", None, b"\x00\x00\x00\x00\x00").await;
        assert_eq!((status, v(&h, "grpc-status")), (200, "12"), "{h:?}");

        let t = Instant::now();
        // HealthCheckRequest{service: "slow"}, length-prefixed.
        let (status, h) = raw_call(
            &open.addr,
            "/grpc.health.v1.Health/Check",
            Some("300m"),
            b"\x00\x00\x00\x00\x06\x0a\x04slow",
        )
        .await;
        assert_eq!((status, v(&h, "grpc-status")), (200, "4"), "{h:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "answered at the deadline: {:?}", t.elapsed());
    });
}

/// A stream still sending when its `grpc-timeout` passes is cut then, not when it ends.
#[test]
fn grpc_timeout_bounds_the_whole_of_a_stream() {
    let up = GrpcUpstream::start(None);
    let gw = start(&orders(&up.addr, "timeout = \"0s\""));
    let rt = rt();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://{}/grpc.health.v1.Health/Watch", gw.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "1000m")
            .body(())
            .unwrap();
        let t = Instant::now();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        // HealthCheckRequest{service: "gaps:20:200"}: 20 updates over 4 s.
        send.send_data(bytes::Bytes::from_static(b"\x00\x00\x00\x00\x0d\x0a\x0bgaps:20:200"), true)
            .unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(b) => {
                    let _ = body.flow_control().release_capacity(b.len());
                    got += b.len();
                }
                Err(_) => break,
            }
        }
        let took = t.elapsed();
        // Each update is a 7-byte message (5-byte prefix, status SERVING).
        let updates = got / 7;
        assert!((2..10).contains(&updates), "{updates} updates before the deadline");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "cut at {took:?}"
        );
    });
}

#[test]
fn the_grpc_health_check_takes_a_not_serving_target_out() {
    let a = GrpcUpstream::start(None);
    let b = GrpcUpstream::start(None);
    let body = format!(
        r#"
[upstreams.orders]
targets = ["{}", "{}"]
http2 = true
[upstreams.orders.health_check]
type = "grpc"
interval = "200ms"
healthy_after = 1
unhealthy_after = 1
[routes.orders]
paths = ["/test.Echo/"]
upstream = "orders"
grpc = true
"#,
        a.addr, b.addr
    );
    let gw = start(&body);
    let healthy = |i: usize| gw.admin_get("/status").json()["clusters"]["orders"]["targets"][i]["healthy"] == true;
    common::wait_until(Duration::from_secs(5), "both targets checked healthy", || {
        healthy(0) && healthy(1) && a.state.checks.load(Ordering::SeqCst) > 0
    });
    a.set_serving(false);
    common::wait_until(Duration::from_secs(5), "NOT_SERVING to take a out", || !healthy(0));
    assert!(healthy(1));
    let rt = rt();
    let before = a.state.calls.load(Ordering::SeqCst);
    rt.block_on(async {
        let ch = channel(&gw.addr).await;
        for _ in 0..10 {
            assert_eq!(sum(ch.clone(), vec![2, 2]).await.unwrap(), 4);
        }
    });
    assert_eq!(
        a.state.calls.load(Ordering::SeqCst),
        before,
        "no call went to the NOT_SERVING target"
    );
    a.set_serving(true);
    common::wait_until(Duration::from_secs(5), "a to come back", || healthy(0));
}

#[test]
fn grpc_over_tls_to_the_upstream() {
    let dir = common::gateway::test_dir();
    let ca = common::tls::Ca::new("grpc CA");
    let leaf = ca.leaf(&dir, "orders", &["orders.internal"], -1, 30);
    let ca_file = ca.write(&dir, "ca.pem");
    let up = GrpcUpstream::start(Some((
        std::fs::read_to_string(&leaf.cert).unwrap(),
        std::fs::read_to_string(&leaf.key).unwrap(),
    )));
    let body = orders(&up.addr, "").replace(
        "http2 = true",
        &format!(
            "http2 = true\ntls = true\nsni = \"orders.internal\"\nca = \"file:{}\"",
            ca_file.display()
        ),
    );
    let gw = start(&body);
    let rt = rt();
    rt.block_on(async {
        let ch = channel(&gw.addr).await;
        assert_eq!(check(ch.clone(), "").await.expect("unary over TLS"), 1);
        let (got, end) = chat(ch, vec![5, 6]).await;
        assert_eq!(got, vec![10, 12]);
        assert_eq!(end.metadata().get("x-count").map(|v| v.to_str().unwrap()), Some("2"));
    });
}

#[test]
fn grpc_from_a_tls_client_with_alpn_h2() {
    let up = GrpcUpstream::start(None);
    let dir = common::gateway::test_dir();
    let ca = common::tls::Ca::new("edge CA");
    let leaf = ca.leaf(&dir, "edge", &["orders.test"], -1, 30);
    let ca_pem = std::fs::read_to_string(ca.write(&dir, "ca.pem")).unwrap();
    let https = format!("127.0.0.1:{}", common::free_port());
    let header = common::gateway::HEADER.replace(
        "[admin]",
        &format!(
            "[listeners.https]\naddr = \"{https}\"\ntls = true\n[tls.certificates.edge]\ncert = \"file:{}\"\nkey = \"file:{}\"\ndefault = true\n\n[admin]",
            leaf.cert.display(),
            leaf.key.display()
        ),
    );
    let _gw = Gateway::start_raw(&format!("{header}\n{}", orders(&up.addr, "")), &[]);
    let rt = rt();
    rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("orders.test");
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{https}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("TLS with ALPN h2 to the gateway");
        assert_eq!(check(ch.clone(), "").await.expect("unary over TLS"), 1);
        assert_eq!(sum(ch.clone(), vec![4, 4]).await.expect("client streaming over TLS"), 8);
        let (got, end) = chat(ch, vec![7]).await;
        assert_eq!((got, end.code()), (vec![14], Code::OutOfRange));
    });
}
