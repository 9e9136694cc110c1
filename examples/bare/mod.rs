//! The smallest Pingora 0.9 proxy to one upstream, shared by the two floor examples:
//! `bare_proxy` (row P, Pingora as shipped) and `bare_proxy_mimalloc` (row PM, the same with
//! Gatehouse's allocator, so Gatehouse's own cost can be read without the allocator's gain).
//!
//! `bare_proxy LISTEN UPSTREAM [THREADS]`

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::time::Duration;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    }
    let upstream = args[2].parse().unwrap_or_else(|e| {
        eprintln!("bad upstream address {}: {e}", args[2]);
        std::process::exit(2)
    });
    // Two floors (say, with and without work stealing) may run side by side.
    let port = args[1].rsplit(':').next().unwrap_or("0").to_string();
    let conf = ServerConf {
        threads: args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1),
        work_stealing: std::env::var("BARE_WORK_STEALING").map(|v| v != "0").unwrap_or(true),
        pid_file: format!("/tmp/gatehouse-bare-{port}.pid"),
        upgrade_sock: format!("/tmp/gatehouse-bare-{port}.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    svc.add_tcp(&args[1]);
    server.add_service(svc);
    server.run_forever()
}
