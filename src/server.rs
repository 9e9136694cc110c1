//! Assembles the Pingora server from the config: proxy listeners, the admin listener, and
//! the background tasks (health checks, reload triggers).

use crate::admin::Admin;
use crate::config::File;
use crate::listen::{Connections, HeaderGuard, Limits, Listeners};
use crate::live::Live;
use crate::proxy::Gateway;
use crate::tls::CertResolver;
use crate::upstream::health::HealthChecker;
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch, UnixShutdownSignalWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

pub struct Flags {
    pub daemon: bool,
    pub upgrade: bool,
}

/// Pingora's settings from `[server]`. The configuration must go in through
/// `new_with_opt_and_conf`: set later, the upgrade socket stays at its default and an
/// upgrading process would not find the old one.
pub fn server_conf(file: &File, flags: &Flags) -> ServerConf {
    let s = &file.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        daemon: flags.daemon,
        // Privileges are dropped by crate::privileges after binding, not by Pingora.
        user: None,
        group: None,
        grace_period_seconds: Some(s.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.0.as_secs()),
        ..ServerConf::default()
    }
}

/// `listeners`: built (TLS acceptors included) and checked before, so `-t` refuses what
/// would fail here.
pub fn run(live: Arc<Live>, listeners: Listeners, flags: Flags) -> ! {
    let file = live.boot().clone();
    let listeners = Arc::new(listeners);
    for p in [&file.server.pid_file, &file.server.upgrade_sock] {
        if let Some(dir) = std::path::Path::new(p).parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::warn!("cannot create {}: {e}", dir.display());
            }
        }
    }
    // Pingora writes the pid file only when it daemonizes; scripts/upgrade and service
    // managers need it in the foreground too.
    if !flags.daemon {
        if let Err(e) = std::fs::write(&file.server.pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid file {}: {e}", file.server.pid_file);
        }
    }
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&file, &flags));
    server.bootstrap();

    // Pingora's proxy, wrapped: Connections (cap) -> HeaderGuard (deadline, limits,
    // framing) -> HttpProxy<Gateway>.
    gatehouse_plugins::callout::install(Arc::new(crate::proxy::callout::Calls { live: live.clone() }));
    let gateway = Gateway {
        live: live.clone(),
        listeners: listeners.clone(),
    };
    let mut proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
    let s = &file.server;
    let mut opts = HttpServerOptions::default();
    opts.keepalive_request_limit = Some(s.keepalive_requests);
    // Consulted only for connections the guard hands over after reading their h2c preface.
    opts.h2c = true;
    opts.h2_idle_timeout = Some(s.keepalive_timeout.0);
    // Pingora's own refusal of CONNECT is a bare 405; let it reach request_filter, whose
    // first step refuses it with the gateway's JSON answer and closes (target::settle).
    opts.allow_connect_method_proxying = true;
    proxy.server_options = Some(opts);
    proxy.h2_options = Some(crate::listen::h2_options(s));
    let limits = Limits {
        header_timeout: s.header_timeout.0,
        keepalive_timeout: s.keepalive_timeout.0,
        max_header_size: s.max_header_size.0 as usize,
        max_headers: s.max_headers,
        max_uri: s.max_uri.0 as usize,
    };
    let certs = Arc::new(CertResolver { live: live.clone() });
    let guard = HeaderGuard {
        inner: Arc::new(proxy),
        limits: limits.clone(),
        live: live.clone(),
        listeners,
        certs: certs.clone(),
        tls_handshake_timeout: s.tls_handshake_timeout.0,
        grace_period: s.grace_period.0,
    };
    let mut svc = Service::new(
        "gatehouse proxy".to_string(),
        Connections::new(guard, s.max_connections, s.max_connections_per_ip, live.clone()),
    );
    // A plaintext connection is read straight into the header guard's and Pingora's own
    // buffers: a read buffer in front of them would only copy, and an idle keep-alive
    // connection would hold it (1 KiB of its ~9.5). TLS records and PROXY headers are read
    // in small pieces, so those listeners keep `read_buffer`.
    let buffered = L4BufferSettings::default().read(s.read_buffer.0 as usize);
    let direct = L4BufferSettings::default().read(0);
    for l in file.listeners.values() {
        let buffers = if l.tls || l.proxy_protocol { buffered } else { direct };
        svc.add_listener(ListenerConfig::tcp(l.addr.clone()).l4_buffer(buffers));
    }
    server.add_service(svc);

    // The admin listener gets the same header deadline, limits and connection cap: it is
    // often reachable from more places than it should be.
    if let Some(admin) = &file.admin {
        let addr = admin
            .addr
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let guard = HeaderGuard {
            inner: Arc::new(Admin { live: live.clone() }),
            limits,
            live: live.clone(),
            listeners: Arc::new(Listeners::plain("admin", addr)),
            certs,
            tls_handshake_timeout: s.tls_handshake_timeout.0,
            grace_period: s.grace_period.0,
        };
        let mut svc = Service::new(
            "gatehouse admin".to_string(),
            Connections::new(guard, s.max_connections, 0, live.clone()),
        );
        svc.add_tcp(&admin.addr);
        server.add_service(svc);
    }
    server.add_service(background_service("health checks", HealthChecker { live: live.clone() }));
    server.add_service(background_service(
        "discovery",
        crate::discovery::DiscoveryService { live: live.clone() },
    ));
    server.add_service(background_service(
        "fleet config",
        crate::fleet::FleetService { live: live.clone() },
    ));
    server.add_service(background_service("acme", crate::acme::AcmeWorker { live: live.clone() }));
    let live_for_alerts = live.clone();
    server.add_service(background_service("reload triggers", ReloadTriggers { live }));
    let privileges = (file.server.user.is_some() || file.server.group.is_some()).then(|| {
        let mut addrs: Vec<String> = file.listeners.values().map(|l| l.addr.clone()).collect();
        addrs.extend(file.admin.as_ref().map(|a| a.addr.clone()));
        crate::privileges::DropPrivileges {
            user: file.server.user.clone(),
            group: file.server.group.clone(),
            addrs,
        }
    });
    server.add_service(background_service("stores", crate::state::StoreWorker { privileges }));
    server.add_service(background_service("alerts", crate::alerts::AlertsService { live: live_for_alerts }));
    crate::metering::init(&file);
    server.add_service(background_service("metering", crate::metering::MeteringService));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    // Every runtime has stopped (after the grace period, or at once on SIGINT): what is
    // still in memory goes to disk before the process ends.
    crate::state::final_flush();
    crate::access_log::close_all();
    crate::metering::close_all();
    crate::trace::close_all();
    std::process::exit(0)
}

/// Pingora's signals (SIGQUIT upgrade, SIGTERM graceful stop, SIGINT fast stop), with the
/// quota counters flushed before an upgrade hands the sockets over: the new process then
/// starts from what this one counted.
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        if matches!(signal, ShutdownSignal::GracefulUpgrade) {
            let _ = tokio::task::spawn_blocking(crate::state::final_flush).await;
        }
        signal
    }
}

/// SIGHUP, and with `watch_config` a change of the file's modification time, reload the
/// config. Pingora owns SIGTERM/SIGQUIT/SIGINT; SIGHUP is ours.
struct ReloadTriggers {
    live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        let watch = self.live.boot().server.watch_config;
        let mtime = || std::fs::metadata(&self.live.path).and_then(|m| m.modified()).ok();
        let mut last = mtime();
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading {}", self.live.path.display());
                    let live = self.live.clone();
                    let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                }
                _ = poll.tick(), if watch => {
                    let now = mtime();
                    if now != last {
                        last = now;
                        log::info!("{} changed: reloading", self.live.path.display());
                        let live = self.live.clone();
                        let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                    }
                }
            }
        }
    }
}
