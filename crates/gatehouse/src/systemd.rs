//! systemd, told the truth (`Type=notify`, `notify-reload`): `READY=1` once every listener is
//! bound, the state restored and the first routes in service; `RELOADING=1` with
//! `MONOTONIC_USEC` around reloads; `STOPPING=1`; a `STATUS=` line a person can read; and
//! `WATCHDOG=1` only while every proxy worker's event loop runs. Without `NOTIFY_SOCKET`,
//! all of it does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::gateway::Gateway;

struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let bytes = path.as_bytes();
            let address = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some(Notifier { socket: UnixDatagram::unbound().ok()?, address })
        })
        .as_ref()
}

fn notify(message: &str) {
    if let Some(notifier) = notifier() {
        if let Err(e) = notifier.socket.send_to_addr(message.as_bytes(), &notifier.address) {
            tracing::debug!(error = %e, "cannot tell systemd");
        }
    }
}

/// Serving: every listener bound, the state restored, the routes in service.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A reload starts now (`notify-reload` wants the monotonic time with it).
pub fn reloading() {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"));
}

pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping: no new connections, letting requests finish");
}

/// Half the watchdog period systemd set for this process, if it set one.
fn watchdog_every() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        _ => Some(Duration::from_micros(usec / 2)).filter(|d| !d.is_zero()),
    }
}

/// Pings systemd's watchdog at half its period while every worker's event loop runs; a
/// wedged worker stops the pings, and systemd restarts the service.
pub fn spawn_watchdog(gateway: Arc<Gateway>) {
    let Some(every) = watchdog_every() else { return };
    tokio::spawn(async move {
        let mut wedged = false;
        loop {
            tokio::time::sleep(every).await;
            // A worker beats every 250 ms; a second of silence, or a period, is a wedge.
            if gateway.workers_alive(every.max(Duration::from_secs(1))) {
                notify("WATCHDOG=1");
                wedged = false;
            } else if !wedged {
                tracing::error!("a proxy worker stopped running: withholding systemd's watchdog pings");
                wedged = true;
            }
        }
    });
}
