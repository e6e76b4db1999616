//! Hitless binary upgrades. `gatehouse upgrade` (or `SIGRTMIN+1`) starts the binary at the
//! same path with the same arguments and hands it every listening socket (proxy, admin API,
//! admin socket) and the Drove views; once the new process says it is ready, this one stops
//! accepting, lets its connections finish (up to the drain) and exits. Not one connection is
//! refused: the sockets never close, both processes accept from them for a moment.
//!
//! shellflip spawns the new process, carries its readiness and the handover pipe, lets one
//! upgrade run at a time and tells systemd the new `MAINPID`. The sockets pass as inherited
//! descriptors, named (by configured address or path) in the handover. A new process that
//! fails, or is not ready within [`READY_WITHIN`], exits; this one keeps serving and the
//! caller gets the reason the new one wrote to its report pipe.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use gatehouse_drove::NamespaceView;
use serde::{Deserialize, Serialize};
use shellflip::lifecycle::{LifecycleHandler, PipeWriter};
use shellflip::RestartConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::Gateway;

/// A new process that is not serving by then gives up (exits), and the old one keeps serving.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long the new process waits for the handover from the old one.
const HANDOVER_WITHIN: Duration = Duration::from_secs(5);
/// The longest failure reason kept from a new process.
const REPORT_LIMIT: usize = 4096;

/// The signal that asks for an upgrade. SIGUSR1 and SIGUSR2 keep drove-gateway's meaning
/// (an nginx or HAProxy restart) and SIGHUP reloads the configuration.
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// What the old process tells the new one, as JSON on shellflip's handover pipe. Sockets are
/// descriptor numbers the new process inherited.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Handover {
    /// The old process.
    from: u32,
    /// shellflip's coordination socket, which the new process inherits.
    coordination: PathBuf,
    /// Where the new process writes why it failed.
    report: RawFd,
    /// Listening TCP sockets by the address the configuration gives (port 0 included).
    #[serde(default)]
    tcp: Vec<(SocketAddr, RawFd)>,
    /// Listening Unix sockets by path.
    #[serde(default)]
    unix: Vec<(PathBuf, RawFd)>,
    /// The Drove views in service, newer than any state file.
    #[serde(default)]
    drove: BTreeMap<String, NamespaceView>,
}

/// What this process inherited from the one it replaces.
struct Inherited {
    from: u32,
    coordination: Option<PathBuf>,
    report: Option<File>,
    tcp: Vec<(SocketAddr, std::net::TcpListener)>,
    unix: Vec<(PathBuf, std::os::unix::net::UnixListener)>,
    drove: BTreeMap<String, NamespaceView>,
}

fn inherited() -> std::sync::MutexGuard<'static, Inherited> {
    static INHERITED: Mutex<Inherited> = Mutex::new(Inherited {
        from: 0,
        coordination: None,
        report: None,
        tcp: Vec::new(),
        unix: Vec::new(),
        drove: BTreeMap::new(),
    });
    INHERITED.lock().unwrap_or_else(|e| e.into_inner())
}

static READY: AtomicBool = AtomicBool::new(false);

/// Reads the handover when an old process started this one (call first thing). Without one,
/// does nothing. A new process that is not ready within [`READY_WITHIN`] exits.
pub fn receive() {
    let Some(mut pipe) = shellflip::lifecycle::receive_from_old_process() else { return };
    let read = async {
        let mut text = Vec::new();
        tokio::time::timeout(HANDOVER_WITHIN, pipe.read_to_end(&mut text)).await.ok()?.ok()?;
        Some(text)
    };
    let text = tokio::runtime::Builder::new_current_thread().enable_all().build().ok().and_then(|rt| rt.block_on(read));
    let handover: Handover = match text.as_deref().map(serde_json::from_slice) {
        Some(Ok(handover)) => handover,
        // Nothing to report through: the reason goes to the log, the old process sees the exit.
        Some(Err(e)) => die(&format!("the handover from the old process is not understood: {e}")),
        None => die(&format!("no handover from the old process within {HANDOVER_WITHIN:?}")),
    };
    let mut mine = inherited();
    mine.from = handover.from;
    mine.coordination = Some(handover.coordination);
    // SAFETY (all three): the old process opened these descriptors for this one alone, and
    // names each once; nothing else here owns them. Each is made close-on-exec, so the
    // processes this one starts (nginx, hooks) do not inherit them.
    mine.report = Some(unsafe { File::from_raw_fd(close_on_exec(handover.report)) });
    mine.tcp = handover
        .tcp
        .into_iter()
        .map(|(address, fd)| (address, unsafe { std::net::TcpListener::from_raw_fd(close_on_exec(fd)) }))
        .collect();
    mine.unix = handover
        .unix
        .into_iter()
        .map(|(path, fd)| (path, unsafe { std::os::unix::net::UnixListener::from_raw_fd(close_on_exec(fd)) }))
        .collect();
    mine.drove = handover.drove;
    drop(mine);
    std::thread::spawn(|| {
        std::thread::sleep(READY_WITHIN);
        if !READY.load(Ordering::SeqCst) {
            fail(&format!("not ready within {READY_WITHIN:?}"));
            std::process::exit(1);
        }
    });
}

fn close_on_exec(fd: RawFd) -> RawFd {
    // SAFETY: a plain fcntl; an invalid descriptor makes it fail, which the later use reports.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    fd
}

fn die(reason: &str) -> ! {
    eprintln!("gatehouse: upgrade: {reason}");
    std::process::exit(1)
}

/// The old process, when this one replaces it.
pub fn replaces() -> Option<u32> {
    Some(inherited().from).filter(|pid| *pid != 0)
}

/// The listening socket the old process had for `address` (as configured).
pub fn take_tcp(address: SocketAddr) -> Option<std::net::TcpListener> {
    let mut mine = inherited();
    let at = mine.tcp.iter().position(|(a, _)| *a == address)?;
    tracing::info!(%address, "listening on the socket the old process handed over");
    Some(mine.tcp.remove(at).1)
}

/// The listening Unix socket the old process had at `path`.
pub fn take_unix(path: &Path) -> Option<std::os::unix::net::UnixListener> {
    let mut mine = inherited();
    let at = mine.unix.iter().position(|(p, _)| p == path)?;
    Some(mine.unix.remove(at).1)
}

/// The Drove views the old process served (empty when there is none).
pub fn take_drove_views() -> BTreeMap<String, NamespaceView> {
    std::mem::take(&mut inherited().drove)
}

/// Tells the old process why this one will not serve (it reports it to whoever asked).
pub fn fail(reason: &str) {
    if let Some(report) = inherited().report.as_mut() {
        let _ = report.write_all(reason.as_bytes());
    }
}

/// Listening sockets to hand over, each a close-on-exec copy, by configured address or path.
#[derive(Default)]
pub struct Sockets {
    pub tcp: Vec<(SocketAddr, OwnedFd)>,
    pub unix: Vec<(PathBuf, OwnedFd)>,
}

/// The upgrade this process can do, once it serves.
struct Armed {
    coordination: PathBuf,
    /// The copies the handler passes on; closed when this process stops accepting.
    sockets: Arc<Mutex<Sockets>>,
    /// Why the last new process failed, as it said.
    last_failure: Arc<Mutex<Option<String>>>,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

/// Resolves with the new process once an upgrade succeeded.
pub type Upgraded = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<std::process::Child>> + Send>>;

/// Arms upgrades (call once serving: the first poll of the returned future tells the old
/// process, if any, that this one is ready). The future resolves with the new process once
/// an upgrade succeeded; it never resolves when upgrades cannot be armed (logged).
pub fn arm(gateway: &Arc<Gateway>, sockets: Sockets, admin_socket: Option<&Path>) -> Upgraded {
    READY.store(true, Ordering::SeqCst);
    let coordination = inherited().coordination.clone().unwrap_or_else(|| coordination_path(admin_socket));
    let last_failure = Arc::new(Mutex::new(None));
    let sockets = Arc::new(Mutex::new(sockets));
    let handler = Upgrader {
        gateway: Arc::downgrade(gateway),
        sockets: sockets.clone(),
        coordination: coordination.clone(),
        last_failure: last_failure.clone(),
        prepared: None,
    };
    let config = RestartConfig {
        enabled: true,
        coordination_socket_path: coordination.clone(),
        // The sockets pass in the handover, never as systemd's (the old process's LISTEN_FDS
        // numbers mean nothing in the new one).
        environment: vec![("LISTEN_FDS".into(), "0".into())],
        lifecycle_handler: Box::new(handler),
        exit_on_error: false,
        restart_signal: tokio::signal::unix::SignalKind::from_raw(signal()),
    };
    match config.try_into_restart_task() {
        Ok(task) => {
            if replaces().is_none() {
                // Only whoever may run this service may start a new binary in its place.
                let _ = std::fs::set_permissions(&coordination, std::fs::Permissions::from_mode(0o600));
            }
            let _ = ARMED.set(Armed { coordination, sockets, last_failure });
            Box::pin(task)
        }
        Err(e) => {
            tracing::warn!(socket = %coordination.display(), error = %e, "binary upgrades are off: cannot listen for them");
            // Still tell an old process that this one serves.
            if let Err(e) = shellflip::startup_complete() {
                tracing::warn!(error = %e, "cannot tell the old process that this one serves");
            }
            Box::pin(std::future::pending())
        }
    }
}

/// shellflip's coordination socket: beside the admin socket, or in the temporary folder.
fn coordination_path(admin_socket: Option<&Path>) -> PathBuf {
    match admin_socket {
        Some(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".upgrade");
            PathBuf::from(name)
        }
        None => std::env::temp_dir().join(format!("gatehouse-{}.upgrade", std::process::id())),
    }
}

/// This process stops accepting: closes its copies of the listening sockets (a socket left
/// open would queue connections no one accepts), and, unless it `handed_over` to a new
/// process, removes the coordination socket's file.
pub fn stop_accepting(handed_over: bool) {
    let Some(armed) = ARMED.get() else { return };
    *armed.sockets.lock().unwrap_or_else(|e| e.into_inner()) = Sockets::default();
    if !handed_over {
        let _ = std::fs::remove_file(&armed.coordination);
    }
}

/// Starts an upgrade and waits for its outcome: the new process's id, or why it failed.
pub async fn request() -> Result<u32, String> {
    let armed = ARMED.get().ok_or("binary upgrades are off on this instance (see its log)")?;
    *armed.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let config =
        RestartConfig { enabled: true, coordination_socket_path: armed.coordination.clone(), ..Default::default() };
    config.request_restart().await.map_err(|e| {
        let said = armed.last_failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        match said {
            Some(reason) => format!("the new process did not start: {reason}"),
            None => format!("{e:#}"),
        }
    })
}

/// The old process's side of one upgrade at a time (shellflip runs it on its own thread).
struct Upgrader {
    gateway: Weak<Gateway>,
    sockets: Arc<Mutex<Sockets>>,
    coordination: PathBuf,
    last_failure: Arc<Mutex<Option<String>>>,
    /// What the process being started inherits, made before it starts.
    prepared: Option<std::io::Result<Prepared>>,
}

/// Inheritable copies of the sockets and of the report pipe's write end for the process
/// being started (closed here once it started), and the pipe's read end.
struct Prepared {
    copies: Vec<OwnedFd>,
    report: File,
    report_fd: RawFd,
    tcp: Vec<(SocketAddr, RawFd)>,
    unix: Vec<(PathBuf, RawFd)>,
}

impl Upgrader {
    fn prepare(&self) -> std::io::Result<Prepared> {
        let mut copies = Vec::new();
        // An inheritable copy of `fd` (dup leaves out close-on-exec).
        let mut pass = |fd: RawFd| -> std::io::Result<RawFd> {
            // SAFETY: dup of a descriptor this process owns.
            let copy = unsafe { libc::dup(fd) };
            if copy < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `copy` was just opened and is owned by nothing else.
            copies.push(unsafe { OwnedFd::from_raw_fd(copy) });
            Ok(copy)
        };
        let (report, write) = report_pipe()?;
        let report_fd = pass(write.as_raw_fd())?;
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let tcp = sockets.tcp.iter().map(|(a, fd)| Ok((*a, pass(fd.as_raw_fd())?))).collect::<std::io::Result<_>>()?;
        let unix = sockets
            .unix
            .iter()
            .map(|(p, fd)| Ok((p.clone(), pass(fd.as_raw_fd())?)))
            .collect::<std::io::Result<_>>()?;
        drop(sockets);
        Ok(Prepared { copies, report, report_fd, tcp, unix })
    }

    fn handover(&self, prepared: &Prepared) -> std::io::Result<Handover> {
        let gateway = self.gateway.upgrade().ok_or_else(|| std::io::Error::other("shutting down"))?;
        let busy = gateway.deploys().busy();
        if !busy.is_empty() {
            return Err(std::io::Error::other(format!(
                "a deploy or state change of {} is running; upgrade once it ended",
                busy.join(", ")
            )));
        }
        Ok(Handover {
            from: std::process::id(),
            coordination: self.coordination.clone(),
            report: prepared.report_fd,
            tcp: prepared.tcp.clone(),
            unix: prepared.unix.clone(),
            drove: gateway.drove_views(),
        })
    }
}

/// A pipe whose ends are both close-on-exec (the write end passes as a copy).
fn report_pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two descriptors it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

#[async_trait::async_trait]
impl LifecycleHandler for Upgrader {
    async fn pre_new_process(&mut self) {
        tracing::info!("upgrade: starting the new binary");
        self.prepared = Some(self.prepare());
    }

    async fn send_to_new_process(&mut self, mut pipe: PipeWriter) -> std::io::Result<()> {
        let prepared = self.prepared.take().unwrap_or_else(|| Err(std::io::Error::other("nothing prepared")));
        let sent = match prepared {
            Ok(mut prepared) => {
                let sent = match self.handover(&prepared) {
                    Ok(handover) => {
                        let text = serde_json::to_vec(&handover).map_err(std::io::Error::other)?;
                        pipe.write_all(&text).await.and(pipe.shutdown().await)
                    }
                    Err(e) => Err(e),
                };
                // The new process has its copies (it started): this process's close here.
                prepared.copies.clear();
                self.prepared = Some(Ok(prepared));
                sent
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &sent {
            tracing::error!(error = %e, "upgrade refused; this process keeps serving");
        }
        sent
    }

    async fn new_process_failed(&mut self) {
        let mut said = Vec::new();
        if let Some(Ok(prepared)) = self.prepared.take() {
            let _ = (&prepared.report).take(REPORT_LIMIT as u64).read_to_end(&mut said);
        }
        let said = String::from_utf8_lossy(&said).trim().to_string();
        let reason = if said.is_empty() { "it exited before it was ready (see its log)".to_string() } else { said };
        tracing::error!(reason = %reason, "upgrade failed: the new process did not start; this one keeps serving");
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}
