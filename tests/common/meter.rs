//! Usage metering from the receivers' side: the batches the gateway's sinks send (to a
//! scripted upstream acting as the HTTP sink), each event checked against the CloudEvents
//! SDK's own model; the spool directory on disk; a minimal Redis client for the stream sink;
//! and load whose request ids the test chooses (the gateway keeps a client's valid
//! `x-request-id`), so that every answered request can be matched with its event.

use super::client::{read_response, Response};
use super::upstream::{Recorded, Upstream};
use super::Gateway;
use cloudevents::{AttributesReader, Data, Event};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The HTTP sink's content type.
pub const BATCH_TYPE: &str = "application/cloudevents-batch+json";

/// An HTTP sink named `name` posting to `recv` at `/events`: it looks for new events every
/// 100 ms and retries within a fraction of a second, so that a test sees a whole outage in
/// seconds. `extra` adds settings (`batch_max`, `headers`).
pub fn http_sink(name: &str, recv: &Upstream, extra: &str) -> String {
    format!(
        r#"
[metering.sinks.{name}]
type = "http"
url = "http://{addr}/events"
flush_interval = "100ms"
timeout = "2s"
retry = {{ initial = "50ms", max = "200ms" }}
{extra}
"#,
        addr = recv.addr
    )
}

/// Wall-clock milliseconds since the Unix epoch (the clock the gateway stamps events with).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// The Unix milliseconds a UUIDv7 carries (its first 48 bits). Panics unless `id` is a
/// hyphenated, lower-case UUID of version 7 and the RFC 9562 variant.
pub fn uuid_v7_ms(id: &str) -> u64 {
    let b = id.as_bytes();
    let shape = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => matches!(*c, b'0'..=b'9' | b'a'..=b'f'),
        });
    assert!(shape, "`{id}` is not a hyphenated lower-case UUID");
    assert_eq!(b[14], b'7', "`{id}` is not a version 7 UUID");
    assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "`{id}` is not of the RFC 9562 variant");
    u64::from_str_radix(&format!("{}{}", &id[..8], &id[9..13]), 16).expect("hex digits")
}

/// Checks one event against the CloudEvents SDK's model (spec version, required attributes
/// and their types, a JSON object as data) and returns the SDK's event.
pub fn validate(v: &Value) -> Event {
    let e: Event = serde_json::from_value(v.clone()).unwrap_or_else(|err| panic!("not a CloudEvent ({err}): {v}"));
    assert_eq!(e.specversion().as_str(), "1.0", "{v}");
    assert_eq!(Some(e.id()), v["id"].as_str(), "{v}");
    uuid_v7_ms(e.id());
    assert!(!e.source().is_empty(), "a source: {v}");
    assert!(!e.ty().is_empty(), "a type: {v}");
    assert!(e.time().is_some(), "a time: {v}");
    assert!(e.subject().is_some_and(|s| !s.is_empty()), "a subject: {v}");
    assert_eq!(e.datacontenttype(), Some("application/json"), "{v}");
    assert!(
        matches!(e.data(), Some(Data::Json(d)) if d.is_object()),
        "data is a JSON object: {v}"
    );
    e
}

/// The event's `time` in Unix milliseconds, as the SDK reads it.
pub fn time_ms(v: &Value) -> u64 {
    let ms = validate(v).time().map(|t| t.timestamp_millis()).expect("a time");
    u64::try_from(ms).expect("a time after 1970")
}

/// The batches POSTed to `path`, in arrival order (refused ones and retries included): each
/// is a JSON array of events with the CloudEvents batch content type. Not validated here
/// (polls call this often); `by_id` and `validate` check what a test keeps.
pub fn batches(recorded: &[Recorded], path: &str) -> Vec<Vec<Value>> {
    recorded
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .map(|r| {
            assert!(
                r.header("content-type").is_some_and(|c| c.starts_with(BATCH_TYPE)),
                "batch content type: {:?}",
                r.header("content-type")
            );
            let body: Value =
                serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("batch is not JSON ({e}): {}", String::from_utf8_lossy(&r.body)));
            let events = body.as_array().unwrap_or_else(|| panic!("a batch is a JSON array: {body}")).clone();
            assert!(!events.is_empty(), "an empty batch was sent");
            events
        })
        .collect()
}

/// Every event the receiver got at `path`, in arrival order, copies included.
pub fn events(recv: &Upstream, path: &str) -> Vec<Value> {
    batches(&recv.recorded(), path).into_iter().flatten().collect()
}

/// The event's `data.request_id`.
pub fn request_id(e: &Value) -> &str {
    e["data"]["request_id"].as_str().unwrap_or_else(|| panic!("data.request_id: {e}"))
}

/// The request ids of the events `recv` has got at `path` (cheap enough to poll).
pub fn delivered_request_ids(recv: &Upstream, path: &str) -> HashSet<String> {
    events(recv, path).iter().map(|e| request_id(e).to_string()).collect()
}

/// One copy of each event, by id, each validated. Panics if two copies of an id differ: a
/// redelivered event is the same event.
pub fn by_id(events: &[Value]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for e in events {
        let id = e["id"].as_str().unwrap_or_else(|| panic!("an id: {e}")).to_string();
        match out.get(&id) {
            Some(first) => assert_eq!(first, e, "two copies of event {id} differ"),
            None => {
                validate(e);
                out.insert(id, e.clone());
            }
        }
    }
    out
}

/// The distinct event ids carrying each request id.
pub fn ids_per_request(by_id: &BTreeMap<String, Value>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, e) in by_id {
        out.entry(request_id(e).to_string()).or_default().insert(id.clone());
    }
    out
}

/// Request ids in the order their first event arrived.
pub fn first_arrival_order<'a>(events: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in events {
        let id = e["id"].as_str().unwrap_or_default();
        if seen.insert(id.to_string()) {
            out.push(request_id(e).to_string());
        }
    }
    out
}

/// One scrape of the admin `/metrics`, read once so that series compared together come from
/// the same moment.
pub struct Scrape(String);

impl Scrape {
    pub fn of(gw: &Gateway) -> Scrape {
        Scrape(gw.admin_get("/metrics").body)
    }

    /// The value of series `name` with exactly `labels` (in any order); 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        want.sort();
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (n, l) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                continue;
            }
            let mut have: Vec<String> = l.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect();
            have.sort();
            if have == want {
                return value.parse().unwrap_or(0.0);
            }
        }
        0.0
    }
}

/// One series from a fresh scrape.
pub fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    Scrape::of(gw).get(name, labels)
}

/// `/status` → `metering.sinks.NAME`.
pub fn sink_status(gw: &Gateway, sink: &str) -> Value {
    gw.admin_get("/status").json()["metering"]["sinks"][sink].clone()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Bytes of the files under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    files_under(dir).iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum()
}

/// The file names in `<spool>/segments`, sorted.
pub fn segments(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool.join("segments"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The JSON lines of a file (a dead-letter file, a file sink's output); empty if missing.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display())))
        .collect()
}

pub use super::client::try_request;

/// One keep-alive connection: its requests are served, and so metered, one after another.
pub struct KeepAlive {
    addr: String,
    conn: Option<TcpStream>,
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.to_string(),
            conn: None,
        }
    }

    /// Sends a GET; like real clients, resends once on a fresh connection when the server
    /// had closed the idle one before reading it.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let mut last = None;
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            let mut s = match self.conn.take() {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(&self.addr).unwrap_or_else(|e| panic!("connect {}: {e}", self.addr));
                    s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
                    s
                }
            };
            let result = match s.write_all(raw.as_bytes()) {
                Ok(()) => read_response(&mut s),
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => {
                    if !r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                        self.conn = Some(s);
                    }
                    return r;
                }
                Err(e) if reused && attempt == 0 => last = Some(e),
                Err(e) => panic!("GET {path}: {e}"),
            }
        }
        panic!("GET {path}: {last:?}")
    }
}

/// A request of `IdLoad` that got an answer, and when.
#[derive(Debug, Clone)]
pub struct Answered {
    pub id: String,
    pub status: u16,
    pub at: Instant,
}

/// Clients sending GETs in a loop on fresh connections, each with its own `x-request-id`
/// (`PREFIX-CLIENT-N`), recording which got an answer and when. Failures (the gateway being
/// killed) are not answers and are not retried.
pub struct IdLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<Answered>>>,
    threads: Vec<JoinHandle<()>>,
}

impl IdLoad {
    pub fn start(addr: &str, path: &str, clients: usize, prefix: &str) -> IdLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, answered) = (stop.clone(), answered.clone());
                let (addr, path, prefix) = (addr.to_string(), path.to_string(), prefix.to_string());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let id = format!("{prefix}-{c}-{n}");
                        n += 1;
                        if let Ok(r) = try_request(&addr, "GET", &path, &[("x-request-id", id.as_str())], None) {
                            let at = Instant::now();
                            answered.lock().unwrap().push(Answered { id, status: r.status, at });
                        }
                        // Pacing, not synchronisation: a steady rate the sinks can keep up with.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        IdLoad { stop, answered, threads }
    }

    pub fn answered(&self) -> usize {
        self.answered.lock().unwrap().len()
    }

    /// Stops the clients; returns every answered request.
    pub fn finish(self) -> Vec<Answered> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut answered = Vec::new();
        answered.append(&mut self.answered.lock().unwrap());
        answered
    }
}

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("not an integer reply: {other:?}"),
        }
    }

    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            other => panic!("not an array reply: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Simple(s) => s.clone(),
            other => panic!("not a string reply: {other:?}"),
        }
    }
}

/// One Redis command on a fresh connection to 127.0.0.1:`port`.
pub fn redis(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes())?;
    read_resp(&mut BufReader::new(s))
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut raw = String::new();
    if r.read_line(&mut raw)? == 0 {
        return Err(std::io::Error::other("redis closed the connection"));
    }
    let line = raw.trim_end();
    let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
    let kind = *line.as_bytes().first().ok_or_else(bad)?;
    let rest = line.get(1..).ok_or_else(bad)?;
    let num = || rest.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        b'+' => Resp::Simple(rest.to_string()),
        b'-' => Resp::Error(rest.to_string()),
        b':' => Resp::Int(num()?),
        b'$' => match usize::try_from(num()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut b = vec![0; n + 2];
                r.read_exact(&mut b)?;
                b.truncate(n);
                Resp::Bulk(Some(b))
            }
        },
        b'*' => match usize::try_from(num()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => {
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        },
        _ => return Err(bad()),
    })
}

/// A stream's entries through XRANGE: (entry id, field name, the field's value as JSON).
pub fn stream_entries(port: u16, key: &str) -> Vec<(String, String, Value)> {
    let reply = redis(port, &["XRANGE", key, "-", "+"]).expect("XRANGE");
    reply
        .items()
        .iter()
        .map(|entry| {
            let parts = entry.items();
            let fields = parts[1].items();
            assert_eq!(fields.len(), 2, "one field per stream entry: {entry:?}");
            let json = fields[1].text();
            let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("stream entry is not JSON ({e}): {json}"));
            (parts[0].text(), fields[0].text(), v)
        })
        .collect()
}

/// HGETALL as a map.
pub fn hash(port: u16, key: &str) -> BTreeMap<String, String> {
    let reply = redis(port, &["HGETALL", key]).expect("HGETALL");
    reply.items().chunks(2).map(|kv| (kv[0].text(), kv[1].text())).collect()
}
