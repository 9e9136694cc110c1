//! Function upstreams (`type = "aws_lambda"`) against a real moto server speaking the Lambda
//! Invoke API, with SigV4 signatures checked: requests become API Gateway v2 events (or raw
//! payloads), answers become responses, and a wrong secret is refused by moto.

mod common;

use common::moto::Moto;
use common::{request, Gateway, Upstream};

const KEY: &str = "ann-key-0123456789";

fn config(moto: &Moto, secret: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.fn_echo]
type = "aws_lambda"
function = "echo"
region = "us-east-1"
endpoint = "{url}"
access_key = "env:FN_ACCESS_KEY"
secret_key = "env:FN_SECRET_KEY"
payload = "apigw_v2"

[upstreams.fn_raw]
type = "aws_lambda"
function = "echo"
region = "us-east-1"
endpoint = "{url}"
access_key = "env:FN_ACCESS_KEY"
secret_key = "env:FN_SECRET_KEY"
payload = "raw"

[consumers.ann]
keys = ["{KEY}"]

[routes.fn]
paths = ["/fn"]
upstream = "fn_echo"
[routes.fn.plugins.key_auth]
hide_credentials = true

[routes.raw]
paths = ["/raw"]
upstream = "fn_raw"
{extra}
"#,
        url = moto.url
    )
    .replace("{secret}", secret)
}

fn start(moto: &Moto, secret: &str, extra: &str) -> Gateway {
    Gateway::start_with_env(
        &config(moto, secret, extra),
        &[("FN_ACCESS_KEY", &moto.access_key), ("FN_SECRET_KEY", secret)],
    )
}

#[test]
fn requests_become_api_gateway_events_and_answers_become_responses() {
    let moto = Moto::start();
    let gw = start(&moto, &moto.secret_key, "");
    // moto's function echoes its event: an answer without statusCode is a 200 JSON body.
    let r = request(
        &gw.addr,
        "POST",
        "/fn/orders?id=7&tag=a+b",
        &[
            ("x-api-key", KEY),
            ("Cookie", "s=1; t=2"),
            ("X-Consumer", "mallory"),
            ("Content-Type", "text/plain"),
        ],
        Some("hello function"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["rawPath"], "/fn/orders");
    assert_eq!(e["rawQueryString"], "id=7&tag=a+b");
    assert_eq!(e["queryStringParameters"]["tag"], "a b");
    assert_eq!(e["body"], "hello function");
    assert_eq!(e["isBase64Encoded"], false);
    assert_eq!(e["cookies"], serde_json::json!(["s=1", "t=2"]));
    assert_eq!(e["requestContext"]["http"]["method"], "POST");
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["requestContext"]["requestId"].as_str(), r.header("x-request-id"));
    assert_eq!(e["requestContext"]["authorizer"]["lambda"]["consumer"], "ann");
    // The consumer is the gateway's word, and the client's key is hidden from the function.
    assert_eq!(e["headers"]["x-consumer"], "ann");
    assert!(e["headers"].get("x-api-key").is_none(), "{}", e["headers"]);
    assert_eq!(e["headers"]["x-forwarded-for"], "127.0.0.1");

    // A body that is not UTF-8 goes base64-encoded.
    let raw = format!("POST /fn HTTP/1.1\r\nHost: t\r\nx-api-key: {KEY}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(&[0xff, 0x00, 0x41]);
    let r = common::client::raw_request(&gw.addr, &raw).expect("raw request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["isBase64Encoded"], true);
    assert_eq!(r.json()["body"], "/wBB");

    // A structured answer: status, headers, cookies and a base64 body.
    moto.queue(&[r#"{"statusCode":201,"headers":{"x-fn":"yes","content-type":"text/plain"},"cookies":["a=1; Path=/","b=2"],"body":"aGVsbG8=","isBase64Encoded":true}"#]);
    let r = request(&gw.addr, "GET", "/fn", &[("x-api-key", KEY)], None);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body, "hello");
    assert_eq!(r.header("x-fn"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, vec!["a=1; Path=/", "b=2"]);

    // An answer that is not an HTTP response is the function's fault: 502.
    moto.queue(&[r#"{"statusCode":"teapot"}"#]);
    let r = request(&gw.addr, "GET", "/fn", &[("x-api-key", KEY)], None);
    assert_eq!(r.status, 502, "{}", r.body);

    // payload = "raw": the body in, the function's answer out.
    let r = request(
        &gw.addr,
        "POST",
        "/raw",
        &[("Content-Type", "application/json")],
        Some(r#"{"x":[1,2]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, r#"{"x":[1,2]}"#);

    // Auth runs before any invocation.
    let r = request(&gw.addr, "GET", "/fn", &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metric(r#"gatehouse_function_invocations_total{outcome="ok",upstream="fn_echo"}"#),
        4.0
    );
}

#[test]
fn a_wrong_secret_is_refused_by_the_lambda_api() {
    let moto = Moto::start();
    let gw = start(&moto, "not-the-secret-key-0000000000000000000000", "");
    let r = request(&gw.addr, "GET", "/raw", &[], None);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "function could not be invoked");
    common::wait_until(std::time::Duration::from_secs(5), "the reason in the log", || {
        gw.stderr().contains("SignatureDoesNotMatch")
    });
    assert!(gw.stderr().contains("invoke refused with 403"), "{}", gw.stderr());
    assert_eq!(
        gw.metric(r#"gatehouse_function_invocations_total{outcome="invoke_error",upstream="fn_raw"}"#),
        1.0
    );
}

#[test]
fn a_function_is_an_aggregation_backend() {
    let moto = Moto::start();
    let users = Upstream::start("users");
    users.set(|b| b.body = Some(r#"{"name":"Ann"}"#.into()));
    let extra = format!(
        r#"
[upstreams.users]
targets = ["{}"]
[routes.dash]
paths = ["/dash"]
[routes.dash.plugins.key_auth]
[routes.dash.aggregate]
[[routes.dash.aggregate.backends]]
name = "user"
upstream = "users"
path = "/users/{{consumer}}"
[[routes.dash.aggregate.backends]]
name = "fn"
upstream = "fn_echo"
path = "/reports/{{consumer}}?month={{query.month}}"
allow = ["rawPath", "rawQueryString"]
"#,
        users.addr
    );
    let gw = start(&moto, &moto.secret_key, &extra);
    let r = request(&gw.addr, "GET", "/dash?month=2026-11", &[("x-api-key", KEY)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("true"));
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"name": "Ann"}, "fn": {"rawPath": "/reports/ann", "rawQueryString": "month=2026-11"}})
    );
}

/// moto's Lambda without Docker always succeeds, so a function that throws, and one that
/// takes too long, are played by the scripted upstream speaking the Invoke API's answer
/// (`X-Amz-Function-Error` and Lambda's error document); it does not check signatures.
#[test]
fn function_errors_and_timeouts_are_gateway_errors() {
    let lambda = Upstream::start("lambda");
    lambda.set(|b| {
        b.body = Some(r#"{"errorType":"ValueError","errorMessage":"bad input"}"#.into());
        b.headers = vec![("X-Amz-Function-Error".into(), "Unhandled".into())];
    });
    let gw = Gateway::start(&format!(
        r#"
[upstreams.f]
type = "aws_lambda"
function = "arn:aws:lambda:us-east-1:123456789012:function:thrower"
qualifier = "live"
region = "us-east-1"
endpoint = "http://{}"
access_key = "AKIDEXAMPLE"
secret_key = "secret"
read_timeout = "300ms"
[routes.f]
paths = ["/f"]
upstream = "f"
"#,
        lambda.addr
    ));
    let r = gw.get("/f");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "function failed");
    let seen = lambda.last();
    assert_eq!(
        seen.path,
        "/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:thrower/invocations?Qualifier=live"
    );
    assert!(seen
        .header("authorization")
        .unwrap_or("")
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    common::wait_until(std::time::Duration::from_secs(5), "the error type in the log", || {
        gw.stderr().contains("failed (Unhandled): ValueError")
    });
    lambda.set(|b| {
        b.headers.clear();
        b.delay = std::time::Duration::from_secs(2);
    });
    let r = gw.get("/f");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(
        gw.metric(r#"gatehouse_function_invocations_total{outcome="timeout",upstream="f"}"#),
        1.0
    );
}

#[test]
fn bad_function_upstreams_are_refused_at_load() {
    use common::gateway::refused;
    let base = r#"
[server]
pid_file = "/tmp/gh-fn/gatehouse.pid"
upgrade_sock = "/tmp/gh-fn/upgrade.sock"
[listeners.public]
addr = "127.0.0.1:18080"
[upstreams.f]
type = "aws_lambda"
function = "echo"
region = "us-east-1"
access_key = "AKIDEXAMPLE"
secret_key = "secret"
[routes.f]
paths = ["/f"]
upstream = "f"
"#;
    let swap = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replacen(from, to, 1)
    };
    refused(
        &swap("function = \"echo\"\n", ""),
        "upstreams.f.function",
        "required with type = \"aws_lambda\"",
    );
    refused(
        &swap("function = \"echo\"", "function = \"../echo\""),
        "upstreams.f.function",
        "is not a function name",
    );
    refused(
        &swap("region = \"us-east-1\"", "region = \"us-east-1\"\ntargets = [\"127.0.0.1:1\"]"),
        "upstreams.f.targets",
        "a function upstream has no targets",
    );
    refused(
        &swap(
            "region = \"us-east-1\"",
            "region = \"us-east-1\"\nendpoint = \"http://127.0.0.1:1/x\"",
        ),
        "upstreams.f.endpoint",
        "is not an http(s)://host[:port] URL",
    );
    refused(
        &swap("type = \"aws_lambda\"\n", ""),
        "upstreams.f.function",
        "only with type = \"aws_lambda\"",
    );
    refused(
        &swap("upstream = \"f\"", "upstream = \"f\"\nwebsocket = true"),
        "routes.f.websocket",
        "not possible with a function upstream",
    );
    refused(
        &swap("secret_key = \"secret\"", "secret_key = \"env:GH_NO_SUCH_VAR\""),
        "upstreams.f.secret_key",
        "GH_NO_SUCH_VAR",
    );
}
