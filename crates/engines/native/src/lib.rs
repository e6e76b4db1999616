//! Gatehouse's own data plane.
//!
//! Worker threads each run a single-threaded tokio runtime that accepts on every listener,
//! so a connection, its requests and its upstream connection pool stay on one core. Every
//! request reads the current [`Snapshot`] (route table, per-service metrics, `X-Proxy`)
//! through an `ArcSwap`; installing a new one is a pointer swap that never touches
//! listeners or open connections.

mod access_log;
mod body;
mod buffer;
mod h1;
mod h2;
mod handler;
mod handshakes;
mod headers;
mod heavy;
mod listen;
mod local;
mod occupancy;
mod snapshot;
mod throttle;
mod tls;
mod upstream;

pub use access_log::{AccessLog, AccessLogTarget};
#[cfg(feature = "fuzzing")]
pub use h1::fuzzing;
pub use listen::{Drain, EdgePolicy, EngineError, ListenerConfig, NativeProxy};
pub use snapshot::{ServiceRuntime, Snapshot, SnapshotError};
pub use tls::{install_default_provider, server_config, CertError, CertStore, Certificates};
