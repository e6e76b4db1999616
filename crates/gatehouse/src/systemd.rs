//! systemd, told the truth (`Type=notify`, `notify-reload`): `READY=1` once every listener is
//! bound, the state restored and the first routes in service; `RELOADING=1` with
//! `MONOTONIC_USEC` around reloads; `STOPPING=1`; a `STATUS=` line a person can read; and
//! `WATCHDOG=1` only while every proxy worker's event loop runs; and the listening sockets
//! systemd passes (socket activation). Without `NOTIFY_SOCKET` or `LISTEN_FDS`, all of it
//! does nothing.

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex, OnceLock};
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

/// Listening sockets systemd passed this process (socket activation: `LISTEN_FDS` from fd 3,
/// `LISTEN_PID`, `LISTEN_FDNAMES`), not yet claimed by a listener.
fn passed() -> &'static Mutex<Vec<(std::net::SocketAddr, TcpListener)>> {
    static PASSED: OnceLock<Mutex<Vec<(std::net::SocketAddr, TcpListener)>>> = OnceLock::new();
    PASSED.get_or_init(|| {
        let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let count: i32 = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).filter(|_| ours).unwrap_or(0);
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        let mut sockets = Vec::new();
        for fd in 3..3 + count.clamp(0, 1024) {
            let name = names.next().unwrap_or("");
            // SAFETY: systemd hands these descriptors to this process, each once; nothing
            // else in the process opened or owns them.
            let socket = unsafe { TcpListener::from_raw_fd(fd) };
            // Not passed on to the processes we start (nginx, HAProxy, hooks).
            // SAFETY: a plain fcntl on a descriptor this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            match socket.local_addr() {
                Ok(address) => sockets.push((address, socket)),
                Err(e) => {
                    tracing::warn!(fd, name, error = %e, "a socket systemd passed is not a TCP listener; ignored")
                }
            }
        }
        Mutex::new(sockets)
    })
}

/// The socket systemd passed for `address`, if it passed one (matched by the address it is
/// bound to, as `[[listeners]]` give it).
pub fn take_listener(address: std::net::SocketAddr) -> Option<TcpListener> {
    let mut passed = passed().lock().unwrap_or_else(|e| e.into_inner());
    let at = passed.iter().position(|(bound, _)| *bound == address)?;
    tracing::info!(%address, "listening on the socket systemd passed");
    Some(passed.remove(at).1)
}

/// Half the watchdog period systemd set for this process, if it set one.
fn watchdog_every() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        // After a binary upgrade the old process's id is still there: this one took its place.
        Some(Ok(pid)) if pid != std::process::id() && Some(pid) != crate::upgrade::replaces() => None,
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
