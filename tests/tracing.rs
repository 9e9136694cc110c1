//! OpenTelemetry tracing through real sockets: the gateway, a scripted upstream that records
//! the `traceparent` it got, and an OTLP/HTTP receiver that decodes the exports with the
//! protocol's own types.

mod common;
use common::otlp::{Collector, Mode, Span};
use common::{free_port, request, wait_until, Gateway, Upstream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn config(c: &Collector, up: &Upstream, extra: &str) -> String {
    format!(
        r#"
[tracing]
endpoint = "{endpoint}"
service_name = "edge-test"
{flush}
headers = {{ authorization = "env:OTLP_TOKEN" }}
{extra}

[upstreams.app]
targets = ["{up}"]

[upstreams.gone]
targets = ["127.0.0.1:{dead1}", "127.0.0.1:{dead2}"]
retries = 1

[routes.app]
paths = ["/app"]
upstream = "app"

[routes.zero]
paths = ["/zero"]
upstream = "app"
sample_ratio = 0.0

[routes.gone]
paths = ["/gone"]
upstream = "gone"
"#,
        endpoint = c.endpoint(),
        flush = if extra.contains("flush_interval") {
            ""
        } else {
            "flush_interval = \"50ms\""
        },
        up = up.addr,
        dead1 = free_port(),
        dead2 = free_port(),
    )
}

fn start(c: &Collector, up: &Upstream, extra: &str) -> Gateway {
    Gateway::start_with_env(&config(c, up, extra), &[("OTLP_TOKEN", "Bearer t0k")])
}

/// (trace id, parent id, flags) of a `traceparent`.
fn traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent `{v}`");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn wait_spans(c: &Collector, trace_id: &str, n: usize) -> Vec<Span> {
    wait_until(WAIT, &format!("{n} spans of trace {trace_id}"), || c.trace(trace_id).len() >= n);
    c.trace(trace_id)
}

fn one(spans: &[Span], kind: i32) -> Span {
    let of_kind: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(of_kind.len(), 1, "one span of kind {kind} in {spans:#?}");
    of_kind[0].clone()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[test]
fn a_request_makes_a_server_span_and_a_client_span_whose_id_the_upstream_gets() {
    let c = Collector::start();
    let up = Upstream::start("app");
    let gw = start(&c, &up, "");
    let r = gw.get("/app/x?q=1");
    assert_eq!(r.status, 200);

    let sent = up.last();
    let (trace_id, parent, flags) = traceparent(sent.header("traceparent").expect("upstream got a traceparent"));
    assert_eq!(flags, "01", "sampled");
    let spans = wait_spans(&c, &trace_id, 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one(&spans, SERVER);
    let client = one(&spans, CLIENT);
    assert_eq!(server.parent_span_id, "", "a new trace starts at the gateway");
    assert_eq!(client.parent_span_id, server.span_id, "the attempt is the request's child");
    assert_eq!(parent, client.span_id, "the upstream's parent is the CLIENT span");
    assert_eq!(server.service, "edge-test");
    assert_eq!(server.name, "GET app");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/app/x"),
        ("http.route", "app"),
        ("http.response.status_code", "200"),
        ("client.address", "127.0.0.1"),
        ("gatehouse.upstream", "app"),
    ] {
        assert_eq!(
            server.attributes.get(k).map(String::as_str),
            Some(v),
            "server span {k}: {server:#?}"
        );
    }
    assert!(!server.attributes.contains_key("error.type"));
    let (host, port) = up.addr.rsplit_once(':').unwrap();
    for (k, v) in [
        ("server.address", host),
        ("server.port", port),
        ("http.response.status_code", "200"),
        ("gatehouse.upstream", "app"),
    ] {
        assert_eq!(
            client.attributes.get(k).map(String::as_str),
            Some(v),
            "client span {k}: {client:#?}"
        );
    }
    // Exported as protobuf, with the configured header.
    let (content_type, auth) = c.requests()[0].clone();
    assert_eq!(content_type, "application/x-protobuf");
    assert_eq!(auth, "Bearer t0k");
    // The access log line carries the trace id.
    wait_until(WAIT, "the access log line", || !gw.access_log().is_empty());
    assert_eq!(gw.access_log()[0]["trace_id"], trace_id.as_str());

    // A 404 (no route) is traced too, as an error-free SERVER span of its own.
    assert_eq!(gw.get("/nowhere").status, 404);
    wait_until(WAIT, "the 404's span", || {
        c.spans()
            .iter()
            .any(|s| s.attributes.get("url.path").map(String::as_str) == Some("/nowhere"))
    });
    let lost = c
        .spans()
        .into_iter()
        .find(|s| s.attributes.get("url.path").map(String::as_str) == Some("/nowhere"))
        .unwrap();
    assert_eq!(lost.kind, SERVER);
    assert_eq!(lost.attributes.get("http.response.status_code").map(String::as_str), Some("404"));
    assert_eq!(lost.attributes.get("gatehouse.rejection").map(String::as_str), Some("no_route"));
}

#[test]
fn an_incoming_traceparent_is_continued_and_a_malformed_one_replaced() {
    let c = Collector::start();
    let up = Upstream::start("app");
    let gw = start(&c, &up, "");

    // Route `zero` samples no new traces: its upstream still gets a context, flagged 00.
    assert_eq!(gw.get("/zero/new").status, 200);
    let (unsampled, _, flags) = traceparent(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "00");

    // A sampled parent is followed even there (parent-based sampling).
    let incoming = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{incoming}-00f067aa0ba902b7-01");
    let r = request(
        &gw.addr,
        "GET",
        "/zero/continued",
        &[("traceparent", &tp), ("tracestate", "vendor=abc")],
        None,
    );
    assert_eq!(r.status, 200);
    let sent = up.last();
    let (trace_id, parent, flags) = traceparent(sent.header("traceparent").unwrap());
    assert_eq!((trace_id.as_str(), flags.as_str()), (incoming, "01"));
    assert_ne!(parent, "00f067aa0ba902b7", "the upstream's parent is the gateway's span");
    assert_eq!(sent.header("tracestate"), Some("vendor=abc"));
    let spans = wait_spans(&c, incoming, 2);
    let server = one(&spans, SERVER);
    assert_eq!(server.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(one(&spans, CLIENT).span_id, parent);
    // Spans leave in order: the unsampled request, which came first, sent none.
    assert!(c.trace(&unsampled).is_empty(), "an unsampled request was exported");

    // A malformed traceparent starts a new trace, and its tracestate is dropped.
    let bad = "00-ZZf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(&gw.addr, "GET", "/app/bad", &[("traceparent", bad), ("tracestate", "evil=1")], None);
    assert_eq!(r.status, 200);
    let sent = up.last();
    let (fresh, _, _) = traceparent(sent.header("traceparent").unwrap());
    assert_ne!(fresh.to_lowercase(), "zzf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(fresh.len(), 32);
    assert_eq!(sent.header("tracestate"), None, "the forged tracestate went upstream");
    let spans = wait_spans(&c, &fresh, 2);
    assert_eq!(one(&spans, SERVER).parent_span_id, "");
}

#[test]
fn each_upstream_attempt_is_its_own_client_span() {
    let c = Collector::start();
    let up = Upstream::start("app");
    let gw = start(&c, &up, "");
    let r = gw.get("/gone/x");
    assert_eq!(r.status, 502);
    wait_until(WAIT, "the access log line", || !gw.access_log().is_empty());
    let trace_id = gw.access_log()[0]["trace_id"].as_str().expect("trace id in the log").to_string();
    let spans = wait_spans(&c, &trace_id, 3);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = one(&spans, SERVER);
    assert_eq!(server.status, 2, "a 502 is an error: {server:#?}");
    assert!(server.attributes.contains_key("error.type"));
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    assert_eq!(clients.len(), 2, "two attempts, two spans");
    for s in &clients {
        assert_eq!(s.parent_span_id, server.span_id);
        assert_eq!(s.status, 2);
        assert!(s.attributes.contains_key("error.type"), "{s:#?}");
    }
    let resends: Vec<Option<&String>> = clients.iter().map(|s| s.attributes.get("http.request.resend_count")).collect();
    assert!(resends.contains(&None) && resends.contains(&Some(&"1".to_string())), "{resends:?}");
}

#[test]
fn spans_can_go_as_otlp_json() {
    let c = Collector::start();
    let up = Upstream::start("app");
    let gw = start(&c, &up, r#"protocol = "json""#);
    assert_eq!(gw.get("/app/json").status, 200);
    let (trace_id, _, _) = traceparent(up.last().header("traceparent").unwrap());
    let spans = wait_spans(&c, &trace_id, 2);
    assert_eq!(
        one(&spans, SERVER).attributes.get("url.path").map(String::as_str),
        Some("/app/json")
    );
    assert!(c.requests()[0].0.starts_with("application/json"));
}

fn p99(gw: &Gateway, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            assert_eq!(gw.get(&format!("/app/{i}")).status, 200);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n * 99 / 100]
}

#[test]
fn a_sick_collector_costs_requests_nothing_and_drops_are_counted() {
    let c = Collector::start();
    let up = Upstream::start("app");
    let gw = start(&c, &up, "max_queue = 16\nmax_batch = 4\ntimeout = \"200ms\"");
    let healthy = p99(&gw, 200);
    let exported = |gw: &Gateway| gw.metric("gatehouse_tracing_spans_exported_total");
    let full = |gw: &Gateway| gw.metric(r#"gatehouse_tracing_spans_dropped_total{reason="queue_full"}"#);
    // The small queue may overflow even now: every span is either sent or counted.
    wait_until(WAIT, "every span sent or counted", || exported(&gw) + full(&gw) >= 400.0);
    assert!(exported(&gw) > 0.0);
    let full_before = full(&gw);

    // Refusing: every batch fails and is counted.
    c.set_mode(Mode::Refuse(503));
    let failed = |gw: &Gateway| gw.metric(r#"gatehouse_tracing_spans_dropped_total{reason="export_failed"}"#);
    assert_eq!(gw.get("/app/refused").status, 200);
    wait_until(WAIT, "a failed export counted", || failed(&gw) >= 2.0);

    // Silent: the exporter waits out its timeout per batch, the queue fills, and the
    // requests do not notice.
    c.set_mode(Mode::Hang);
    let hung = p99(&gw, 200);
    assert!(full(&gw) > full_before, "a hung collector filled no queue");
    // A loose bound on purpose: the machine is shared; a request waiting for the exporter
    // would take its 200ms timeout, far above both.
    assert!(
        hung < healthy * 3 + Duration::from_millis(50),
        "p99 {hung:?} with the collector hung, {healthy:?} healthy"
    );

    // Back: spans flow again.
    c.set_mode(Mode::Accept);
    let before = exported(&gw);
    assert_eq!(gw.get("/app/back").status, 200);
    wait_until(WAIT, "exports after the collector came back", || exported(&gw) > before);
}

#[test]
fn bad_tracing_settings_are_refused_with_their_key() {
    let cases = [
        ("[tracing]\nendpoint = \"collector:4318\"\n", "tracing.endpoint", "not an http"),
        (
            "[tracing]\nendpoint = \"http://c:4318/v1/traces\"\nsample_ratio = 1.5\n",
            "tracing.sample_ratio",
            "between 0 and 1",
        ),
        (
            "[tracing]\nendpoint = \"http://c:4318/v1/traces\"\nprotocol = \"grpc\"\n",
            "tracing.protocol",
            "unknown variant",
        ),
        (
            "[routes.r]\npaths = [\"/\"]\nsample_ratio = 0.5\n",
            "routes.r.sample_ratio",
            "no [tracing] table",
        ),
    ];
    for (text, key, reason) in cases {
        common::gateway::refused(&format!("[listeners.public]\naddr = \"127.0.0.1:18080\"\n{text}"), key, reason);
    }
}

#[test]
fn process_log_lines_are_json_objects_when_asked() {
    let up = Upstream::start("app");
    let body = format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n[routes.app]\npaths = [\"/\"]\nupstream = \"app\"\n",
        up.addr
    );
    let config = common::gateway::HEADER.replace("level = \"warn\"", "level = \"info\"\nformat = \"json\"");
    let gw = Gateway::start_raw(&format!("{config}\n{body}"), &[]);
    assert_eq!(gw.get("/").status, 200);
    wait_until(WAIT, "a log line", || gw.stderr().lines().any(|l| !l.trim().is_empty()));
    let text = gw.stderr();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for k in ["time", "level", "target", "message"] {
            assert!(v[k].is_string(), "`{k}` missing in {line}");
        }
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn spans_queued_at_a_graceful_stop_are_sent_before_exit() {
    let c = Collector::start();
    let up = Upstream::start("app");
    // A flush interval no test waits out: only the stop can send these spans.
    let mut gw = start(&c, &up, r#"flush_interval = "1h""#);
    assert_eq!(gw.get("/app/last").status, 200);
    let (trace_id, _, _) = traceparent(up.last().header("traceparent").unwrap());
    assert!(c.trace(&trace_id).is_empty());
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(15)), "the gateway did not stop");
    assert_eq!(c.trace(&trace_id).len(), 2, "the spans were lost at the stop");
}
