//! Active health checks of targets: the HTTP check and HAProxy's `rise`/`fall` thresholds,
//! the rotation they decide (never empty for writers: panic mode), and the monitors that
//! check a service's targets at its interval. The deploy source watches its services with
//! these pieces; [`Watch`] watches services of the configuration file.

mod check;
mod monitor;
mod targets;
mod watch;

pub use check::{check, Counter, Probe};
pub use monitor::{spawn, Observer};
pub use targets::ServiceHealth;
pub use watch::Watch;
