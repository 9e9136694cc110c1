//! Process log (not the access log): env_logger, with the level from `[log] level`,
//! changeable on reload. `RUST_LOG` still wins when set, for debugging.

pub fn init(level: &str) {
    let mut b = env_logger::Builder::new();
    b.filter_level(parse(level));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let _ = b.try_init();
}

pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(parse(level));
    }
}

fn parse(level: &str) -> log::LevelFilter {
    level.parse().unwrap_or(log::LevelFilter::Info)
}
