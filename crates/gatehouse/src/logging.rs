//! Logs: text on stderr (JSON with `GATEHOUSE_LOG_FORMAT=json`), at the file's `loglevel`
//! unless `GATEHOUSE_LOG` gives a filter. The level follows reloads.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

/// Dependencies log only when something is wrong, and rustls only its own errors: its
/// warnings are about what a client sent (an IP address as SNI, from every `wrk`), one line
/// per connection that any client could repeat at will. A filter that names one of them
/// (`GATEHOUSE_LOG=debug,rustls=debug`) decides for it.
fn filter_for(level: &str) -> EnvFilter {
    let mut directives = level.to_string();
    for quiet in ["hyper=warn", "h2=warn", "rustls=error", "tokio_rustls=error"] {
        let target = quiet.split('=').next().unwrap_or(quiet);
        if !level.split(',').any(|d| d.trim().starts_with(target)) {
            directives.push(',');
            directives.push_str(quiet);
        }
    }
    EnvFilter::new(directives)
}

pub fn init(level: &str) -> LogHandle {
    let env = std::env::var("GATEHOUSE_LOG").ok().filter(|f| !f.is_empty());
    let filter = filter_for(env.as_deref().unwrap_or(level));
    let (filter, handle) = reload::Layer::new(filter);
    let json = std::env::var("GATEHOUSE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
    LogHandle { filter: handle, from_env: env.is_some() }
}

impl LogHandle {
    pub fn set_level(&self, level: &str) {
        if !self.from_env {
            let _ = self.filter.reload(filter_for(level));
        }
    }
}
