use clap::Parser;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.conf.display().to_string();
    let text = match std::fs::read_to_string(&cli.conf) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read file: {e}");
            return ExitCode::from(1);
        }
    };
    let file = match config::parse_str(&name, &text) {
        Ok(f) => f,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    gatehouse::logging::init(&file.log.level);
    let live = match Live::new(&cli.conf, &text, file) {
        Ok(l) => Arc::new(l),
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    if cli.test {
        println!("{name}: ok");
        return ExitCode::SUCCESS;
    }
    server::run(
        live,
        server::Flags {
            daemon: cli.daemon,
            upgrade: cli.upgrade,
        },
    )
}
