use clap::Parser;

/// mimalloc (its v2 line): the ladder (scripts/bench) measured it against glibc malloc, and
/// callgrind against mimalloc v3 and jemalloc; loadtest/RESULTS.md has the figures.
/// Wrapped in the counter behind the benchmark's allocations per request (off unless
/// `GATEHOUSE_COUNT_ALLOCS=1`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: gatehouse::alloc_count::Counting<mimalloc::MiMalloc> = gatehouse::alloc_count::Counting(mimalloc::MiMalloc);
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOC: gatehouse::alloc_count::Counting<std::alloc::System> = gatehouse::alloc_count::Counting(std::alloc::System);
use gatehouse::{config, live::Live, server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Gatehouse API gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Config file.
    #[arg(short = 'c', long = "conf", default_value = "conf/gatehouse.toml")]
    conf: PathBuf,
    /// Check the config and exit: 0 when valid, 1 with the reasons otherwise.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (pid in server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take the listening sockets over from a running gatehouse (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Print one value of the validated config and exit (server.pid_file,
    /// server.upgrade_sock, admin.addr, server.grace_period): for scripts/upgrade.
    #[arg(long = "get", value_name = "KEY")]
    get: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Read a password from stdin and print its argon2id hash for `basic_auth.password_hash`.
    HashPassword,
    /// Alert rules: `alerts export-rules` prints the config's `[alerts.rules]` as a
    /// Prometheus rules file.
    Alerts {
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// Fleet config: `config push` writes a shared config to etcd.
    Config {
        #[command(subcommand)]
        action: Box<ConfigAction>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum AlertsAction {
    ExportRules,
}

#[derive(clap::Subcommand, Debug)]
enum ConfigAction {
    /// Validate a shared config as `-t` would and write it to etcd by compare-and-swap on
    /// the revision read; prints the new revision.
    Push {
        /// The shared document (TOML, without node-only tables).
        #[arg(short = 'c', long = "conf")]
        file: PathBuf,
        /// etcd endpoints (repeat or separate with commas).
        #[arg(long = "etcd", value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long = "key", default_value = "/gatehouse/config")]
        key: String,
        /// Write only if the key is at this revision (0: does not exist yet).
        #[arg(long = "expect-revision")]
        expect_revision: Option<i64>,
        /// A node file to check the joined config with.
        #[arg(long = "node")]
        node: Option<PathBuf>,
        /// etcd user (etcd's authentication); the password comes from GATEHOUSE_ETCD_PASSWORD.
        #[arg(long = "user")]
        user: Option<String>,
        #[arg(long = "timeout", default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// With https:// endpoints: the CA of etcd's certificate (PEM; required).
        #[arg(long = "cacert")]
        cacert: Option<String>,
        /// With https:// endpoints: a client certificate and its key (PEM) for etcd.
        #[arg(long = "cert", requires = "key_file")]
        cert: Option<String>,
        #[arg(long = "key-file", requires = "cert")]
        key_file: Option<String>,
    },
}

/// An admin API without a token can change nothing (reload, purge, usage reset refuse),
/// and lets anyone who reaches it read metrics and status.
fn admin_warning(file: &config::File) -> Option<String> {
    let admin = file.admin.as_ref()?;
    (!admin.has_token()).then(|| {
        format!(
            "admin.token is not set: the admin API at {} answers reads to anyone who reaches it and refuses every state-changing call",
            admin.addr
        )
    })
}

/// Fleet text and the warning of a start from the cache.
struct FleetStart {
    fleet: gatehouse::fleet::FleetText,
    warning: Option<String>,
    from_etcd: bool,
    cfg: config::source::ConfigSourceCfg,
    node_text: String,
}
type Fleet = Option<FleetStart>;

/// The config a start serves and `-t` checks: the file with the API's writes
/// (`admin.managed`) merged over it, or in fleet mode the file joined to the shared
/// document from etcd (or its cache).
fn load(path: &std::path::Path, name: &str, text: String) -> Result<(config::File, String, Fleet), String> {
    if let Some(cfg) = config::source::of_node(name, &text).map_err(|e| e.to_string())? {
        let s = gatehouse::fleet::start(name, &text, &cfg).map_err(|e| format!("{name}: config_source: {e}"))?;
        let start = FleetStart {
            fleet: s.fleet,
            warning: s.warning,
            from_etcd: s.from_etcd,
            cfg,
            node_text: text,
        };
        return Ok((s.file, s.text, Some(start)));
    }
    let text = config::managed::effective(path, &text).map_err(|e| e.to_string())?.text;
    let file = config::parse_str(name, &text).map_err(|e| e.to_string())?;
    Ok((file, text, None))
}

/// A fleet node's live config. A revision from etcd that fails to build falls back to
/// the cache like one that fails to validate; a revision that built is cached (not by `-t`).
fn fleet_live(path: &std::path::Path, name: &str, text: String, file: config::File, f: FleetStart, test: bool) -> Result<Live, String> {
    let rev = f.fleet.shared.clone();
    match Live::with_fleet(path, &text, file, f.fleet) {
        Ok(live) => {
            if f.from_etcd && !test {
                gatehouse::fleet::save_cache(&f.cfg, &rev);
            }
            Ok(live)
        }
        Err(errors) if f.from_etcd => {
            let mut errors = errors;
            let shared = gatehouse::fleet::shared_name(&f.cfg.key, rev.revision);
            config::source::attribute(&mut errors, &rev.text, &shared);
            gatehouse::fleet::refused(rev.revision, errors.0.iter().map(|e| e.to_string()).collect());
            let why = format!("revision {} of etcd key {} does not build:\n{errors}", rev.revision, f.cfg.key);
            let mut s =
                gatehouse::fleet::from_cache(name, &f.node_text, &f.cfg, &why).map_err(|e| format!("{name}: config_source: {e}"))?;
            // The watch will not try it again until a reload or a new revision.
            s.fleet.refused = Some(rev);
            if let Some(w) = &s.warning {
                log::warn!("{w}");
            }
            Live::with_fleet(path, &s.text, s.file, s.fleet).map_err(|e| e.to_string())
        }
        Err(errors) => Err(errors.to_string()),
    }
}

fn main() -> ExitCode {
    gatehouse::alloc_count::enable_from_env();
    let mut cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim_end_matches(['\n', '\r']).is_empty() {
            eprintln!("hash-password: give the password on stdin");
            return ExitCode::from(2);
        }
        return match gatehouse_plugins::basic_auth::hash_password(line.trim_end_matches(['\n', '\r'])) {
            Ok(h) => {
                println!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hash-password: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Config { action }) = &cli.command {
        let ConfigAction::Push {
            file,
            etcd,
            key,
            expect_revision,
            node,
            user,
            timeout,
            cacert,
            cert,
            key_file,
        } = action.as_ref();
        let push = gatehouse::fleet::push::Push {
            file,
            endpoints: etcd,
            key,
            expect_revision: *expect_revision,
            node: node.as_deref(),
            timeout: *timeout,
            user: user.clone(),
            tls: gatehouse::fleet::etcd::TlsFiles {
                ca: cacert.clone(),
                cert: cert.clone(),
                key: key_file.clone(),
            },
        };
        return match gatehouse::fleet::push::run(&push) {
            Ok(rev) => {
                println!("pushed {} to {key}: revision {rev}", file.display());
                ExitCode::SUCCESS
            }
            Err(gatehouse::fleet::push::Refused::Invalid(errors)) => {
                eprintln!("{errors}");
                if node.is_none() {
                    eprintln!("config push: checked without a node file: --node NODE.toml also checks references to a node's tables ([store], TLS listeners)");
                }
                eprintln!("config push: refused, nothing written");
                ExitCode::from(1)
            }
            Err(gatehouse::fleet::push::Refused::Etcd(e)) => {
                eprintln!("config push: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Absolute, so reloads still find the file after daemonizing changes the directory.
    if let Ok(abs) = std::fs::canonicalize(&cli.conf) {
        cli.conf = abs;
    }
    let name = cli.conf.display().to_string();
    let text = match std::fs::read_to_string(&cli.conf) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read file: {e}");
            return ExitCode::from(1);
        }
    };
    let (file, text, fleet) = match load(&cli.conf, &name, text) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::Alerts {
        action: AlertsAction::ExportRules,
    }) = cli.command
    {
        let Some(alerts) = file.alerts.as_ref() else {
            eprintln!("{name}: there is no [alerts] table to export");
            return ExitCode::from(1);
        };
        let group = format!(
            "gatehouse-{}",
            cli.conf.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()
        );
        let rules = gatehouse::alerts::export::rules(alerts, &group);
        println!("# Prometheus rules from {name}'s [alerts.rules], by `gatehouse alerts export-rules`.");
        println!("# JSON is YAML: Prometheus and promtool read this file as it is.");
        println!("{}", serde_json::to_string_pretty(&rules).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if let Some(key) = &cli.get {
        let s = &file.server;
        let value = match key.as_str() {
            "server.pid_file" => s.pid_file.clone(),
            "server.upgrade_sock" => s.upgrade_sock.clone(),
            "server.grace_period" => s.grace_period.0.as_secs().to_string(),
            "server.graceful_shutdown_timeout" => s.graceful_shutdown_timeout.0.as_secs().to_string(),
            "admin.addr" => file.admin.as_ref().map(|a| a.addr.clone()).unwrap_or_default(),
            other => {
                eprintln!("--get: unknown key `{other}`");
                return ExitCode::from(2);
            }
        };
        println!("{value}");
        return ExitCode::SUCCESS;
    }
    gatehouse::logging::init(&file.log.level, file.log.format);
    if let Some(w) = fleet.as_ref().and_then(|f| f.warning.as_ref()) {
        if cli.test {
            eprintln!("{name}: warning: {w}");
        } else {
            log::warn!("{w}");
        }
    }
    if !cli.test {
        // Before any plugin is built for serving: limits read the store settings.
        if file.cache.is_some() || file.routes.values().any(|r| r.plugins.contains_key(gatehouse::cache::PLUGIN)) {
            gatehouse::cache::init(&file.cache.clone().unwrap_or_default());
        }
        if let Err(e) = gatehouse::state::declare_stores(&file) {
            eprintln!("{name}: store: {e}");
            return ExitCode::from(1);
        }
    }
    if !cli.test {
        // DNS names answered before the first request is.
        gatehouse::discovery::prime(&file);
    }
    let live = match fleet {
        Some(f) => fleet_live(&cli.conf, &name, text, file, f, cli.test),
        None => Live::new(&cli.conf, &text, file).map_err(|e| e.to_string()),
    };
    let live = match live {
        Ok(l) => Arc::new(l),
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let listeners = match gatehouse::listen::Listeners::build(live.boot()) {
        Ok(l) => l,
        Err((key, reason)) => {
            eprintln!("{name}: {key}: {reason}");
            return ExitCode::from(1);
        }
    };
    if let Some(w) = admin_warning(live.boot()) {
        if cli.test {
            eprintln!("{name}: warning: {w}");
        } else {
            log::warn!("{w}");
        }
    }
    if cli.test {
        println!("{name}: ok");
        return ExitCode::SUCCESS;
    }
    server::run(
        live,
        listeners,
        server::Flags {
            daemon: cli.daemon,
            upgrade: cli.upgrade,
        },
    )
}
