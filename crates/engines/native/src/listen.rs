//! Listeners and worker threads.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_metrics::Metrics;
use gatehouse_model::acme::{Challenges, OnDemand};
use gatehouse_model::{EdgeLimits, ForwardingPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::access_log::AccessLog;
use crate::h1;
use crate::handler::{ConnInfo, Shared};
use crate::handshakes::Handshakes;
use crate::occupancy::{ConnectionSlot, Occupancy, Refused};
use crate::snapshot::Snapshot;
use crate::tls::{self, CertStore};
use crate::upstream;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handshake for an unknown name waits for an on-demand certificate.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(20);
/// How often each worker drops expired idle upstream connections.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(10);
const POOL_MAX_IDLE: Duration = Duration::from_secs(90);
/// How often each worker shows it is alive (for the service manager's watchdog).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// Task polls between two looks at the sockets (tokio's default is 61). Tasks that wake each
/// other (a connection and its upstream moving a body) never leave the run queue empty, so
/// the sockets are looked at only every this many polls: under a 1-byte-chunk upload a poll
/// costs ~100 us, and with 61 a request arriving meanwhile waited behind 16 to 30 rounds of
/// read, decode and send (2-3 ms) to be seen. With 8: one epoll_wait per ~4 requests instead
/// of ~12 under keep-alive load, a cost lost in the noise of CPU per request.
const TASKS_PER_IO_POLL: u32 = 8;

/// What the proxy allows clients and believes of them.
pub struct EdgePolicy {
    pub limits: EdgeLimits,
    pub forwarding: ForwardingPolicy,
    /// ACME challenges answered before routing (HTTP-01) and in handshakes (TLS-ALPN-01).
    pub challenges: Arc<Challenges>,
    /// Where handshakes for names without a certificate ask for one (on-demand TLS).
    pub on_demand: Option<Arc<OnDemand>>,
}

/// How the workers stop.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// How long requests in flight may run on.
    pub timeout: Duration,
    /// Another process accepts on the same sockets now (a binary upgrade): idle keep-alive
    /// connections wait for their next request, answered with `Connection: close`, and
    /// tunnels run on, both until `timeout`. Otherwise both close at once: no one would take
    /// the next request.
    pub handover: bool,
}

/// The workers' stop signal, as each connection sees it.
pub(crate) type Stopped = watch::Receiver<Option<Drain>>;

/// One address to accept on; TLS when it has a certificate store. `inherited` is a socket
/// already listening there (systemd's socket activation, a binary upgrade), used instead of
/// binding.
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<Arc<CertStore>>,
    pub inherited: Option<std::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: io::Error },
    #[error("TLS setup for {address}: {source}")]
    Tls { address: SocketAddr, source: rustls::Error },
    #[error("cannot start a worker: {0}")]
    Worker(io::Error),
}

struct Listener {
    socket: std::net::TcpListener,
    tls: Option<Arc<TlsEndpoint>>,
}

/// A TLS listener's handshake side: its configuration, and the certificates it looks names
/// up in (to know when to ask for an on-demand one).
struct TlsEndpoint {
    config: Arc<rustls::ServerConfig>,
    store: Arc<CertStore>,
}

/// The running native proxy.
pub struct NativeProxy {
    shared: Arc<Shared>,
    /// Each worker's last heartbeat, in milliseconds since `started`.
    heartbeats: Arc<[std::sync::atomic::AtomicU64]>,
    started: std::time::Instant,
    /// `Some(drain)` asks the workers to stop, letting requests finish as it says.
    stop: watch::Sender<Option<Drain>>,
    workers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    addresses: Vec<SocketAddr>,
    /// The listening sockets, in listener order, for handing over to a new binary; closed
    /// at shutdown (a socket left open would queue connections no one accepts).
    sockets: std::sync::Mutex<Vec<std::net::TcpListener>>,
}

impl NativeProxy {
    /// Binds every listener and starts `workers` threads accepting on all of them.
    pub fn start(
        listeners: Vec<ListenerConfig>,
        workers: usize,
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<AccessLog>>,
        edge: EdgePolicy,
    ) -> Result<Self, EngineError> {
        let EdgePolicy { limits, forwarding, challenges, on_demand } = edge;
        let mut bound = Vec::new();
        let mut addresses = Vec::new();
        let mut https_port = None;
        for l in listeners {
            let socket = match l.inherited {
                Some(socket) => socket.set_nonblocking(true).map(|()| socket),
                None => bind(l.address),
            }
            .map_err(|source| EngineError::Bind { address: l.address, source })?;
            let address = socket.local_addr().map_err(|source| EngineError::Bind { address: l.address, source })?;
            addresses.push(address);
            if l.tls.is_some() {
                https_port.get_or_insert(address.port());
            }
            let tls = match l.tls {
                None => None,
                Some(store) => {
                    let config = tls::server_config(store.clone(), Some(challenges.clone()), &[b"h2", b"http/1.1"])
                        .map_err(|source| EngineError::Tls { address: l.address, source })?;
                    Some(Arc::new(TlsEndpoint { config: Arc::new(config), store }))
                }
            };
            bound.push(Listener { socket, tls });
        }
        metrics.route_table_generation.set(snapshot.generation() as i64);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            access_log,
            installed: Notify::new(),
            https_port,
            occupancy: Occupancy::new(&limits),
            forwarding,
            refusals: Default::default(),
            limits,
            challenges,
            on_demand,
        });
        let (stop, stopped) = watch::channel(None);
        let mut threads = Vec::new();
        let started = std::time::Instant::now();
        let heartbeats: Arc<[std::sync::atomic::AtomicU64]> =
            (0..workers.max(1)).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        for n in 0..workers.max(1) {
            let mine = bound
                .iter()
                .map(|l| Ok(Listener { socket: l.socket.try_clone()?, tls: l.tls.clone() }))
                .collect::<io::Result<Vec<_>>>()
                .map_err(EngineError::Worker)?;
            let (shared, stopped, heartbeats) = (shared.clone(), stopped.clone(), heartbeats.clone());
            let beat = move || heartbeats[n].store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let handshakes = Handshakes::start(format!("gatehouse-tls-{n}")).map_err(EngineError::Worker)?;
            let thread = std::thread::Builder::new()
                .name(format!("gatehouse-worker-{n}"))
                .spawn(move || run_worker(mine, Arc::new(handshakes), shared, stopped, beat))
                .map_err(EngineError::Worker)?;
            threads.push(thread);
        }
        let sockets = std::sync::Mutex::new(bound.into_iter().map(|l| l.socket).collect());
        Ok(NativeProxy {
            shared,
            heartbeats,
            started,
            stop,
            workers: std::sync::Mutex::new(threads),
            addresses,
            sockets,
        })
    }

    /// Whether every worker's event loop ran within `within`: a worker wedged by a blocking
    /// call or a busy loop stops beating.
    pub fn workers_alive(&self, within: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let within = within.as_millis() as u64;
        self.heartbeats.iter().all(|beat| now.saturating_sub(beat.load(Ordering::Relaxed)) <= within)
    }

    /// Makes `snapshot` the one every new request uses. Requests already running finish on
    /// the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        self.shared.metrics.route_table_generation.set(snapshot.generation() as i64);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.installed.notify_waiters();
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The bound addresses, in listener order (port 0 resolved).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Copies of the listening sockets, in listener order (a binary upgrade hands them
    /// over); none once shut down.
    pub fn socket_copies(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.iter().map(|s| Ok(s.try_clone()?.into())).collect()
    }

    /// Stops accepting, lets open requests finish as `drain` says, then returns (blocking:
    /// call it off the async runtime).
    pub fn shutdown(&self, drain: Drain) {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = self.stop.send(Some(drain));
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs one worker: its TLS listeners' handshakes go through `handshakes`.
fn run_worker(
    listeners: Vec<Listener>,
    handshakes: Arc<Handshakes>,
    shared: Arc<Shared>,
    stopped: Stopped,
    beat: impl Fn() + Send + 'static,
) {
    let built = tokio::runtime::Builder::new_current_thread().event_interval(TASKS_PER_IO_POLL).enable_all().build();
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        // Every connection task holds a clone of `open`; the channel closes when all are done.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        for listener in listeners {
            let socket = match TcpListener::from_std(listener.socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register a listener");
                    continue;
                }
            };
            let tls = listener.tls.map(|endpoint| (endpoint, handshakes.clone()));
            tokio::spawn(accept_loop(socket, tls, shared.clone(), stopped.clone(), open.clone()));
        }
        drop(open);
        let sweeper = tokio::spawn(async {
            loop {
                tokio::time::sleep(POOL_SWEEP_EVERY).await;
                upstream::sweep(POOL_MAX_IDLE);
            }
        });
        let heart = tokio::spawn(async move {
            loop {
                beat();
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        });
        let mut stopped = stopped;
        let drain = loop {
            if let Some(drain) = *stopped.borrow_and_update() {
                break drain.timeout;
            }
            if stopped.changed().await.is_err() {
                break Duration::ZERO;
            }
        };
        sweeper.abort();
        heart.abort();
        if tokio::time::timeout(drain, all_closed.recv()).await.is_err() {
            tracing::info!(?drain, "drain time over; closing the remaining connections");
        }
    });
}

/// How many connections the accept loop takes before the worker's other tasks run. A burst
/// of new connections (a reconnect storm, each with a TLS handshake) then
/// queues behind the requests of established connections instead of ahead of all of them:
/// a request waits for a few handshakes, not hundreds (nginx takes one per turn).
const ACCEPTS_PER_TURN: u32 = 4;

/// `tls` is the listener's TLS side and its worker's handshake helper.
async fn accept_loop(
    socket: TcpListener,
    tls: Option<(Arc<TlsEndpoint>, Arc<Handshakes>)>,
    shared: Arc<Shared>,
    stopped: Stopped,
    open: mpsc::Sender<()>,
) {
    let mut stop = std::pin::pin!(stop_requested(stopped.clone()));
    let mut this_turn = 0;
    loop {
        this_turn += 1;
        if this_turn > ACCEPTS_PER_TURN {
            this_turn = 1;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = stop.as_mut() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match shared.occupancy.connect(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        // Closed at once: nothing read, nothing written.
                        refused_connection(&shared, peer, refused);
                        continue;
                    }
                };
                let conn = ConnInfo::new(shared.clone(), peer, tls.is_some(), slot.client().clone());
                let counted = OpenConnection::new(&shared, open.clone(), slot);
                let _ = stream.set_nodelay(true);
                // Each task is sized for what it runs: plain HTTP/1 tasks do not carry the
                // TLS handshake's or HTTP/2's state.
                match &tls {
                    None => tokio::spawn(serve_h1(stream, conn, stopped.clone(), counted)),
                    Some((endpoint, handshakes)) => tokio::spawn(serve_tls(
                        stream,
                        (endpoint.clone(), handshakes.clone()),
                        conn,
                        stopped.clone(),
                        counted,
                    )),
                };
            }
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::error!(error = %e, "cannot accept connections; retrying in 500 ms");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

fn refused_connection(shared: &Shared, peer: SocketAddr, refused: Refused) {
    shared.metrics.proxy_error("connection_limit");
    let limit = match refused {
        Refused::All => "max_connections",
        Refused::PerClient => "max_connections_per_client",
    };
    match shared.refusals.allow(1000) {
        Some(held_back) => {
            tracing::warn!(client = %peer.ip(), limit, similar_lines_held_back = held_back, "connection refused: over a limit")
        }
        None => tracing::debug!(client = %peer.ip(), limit, "connection refused: over a limit"),
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Resolves once the workers are asked to stop. Keep the future across waits where it can
/// be: once registered, polling it again is free.
pub(crate) async fn stop_requested(mut stopped: Stopped) {
    // The borrow `wait_for` returns must not live across an await: drop it at once.
    let _ = stopped.wait_for(Option::is_some).await.map(|_| ());
}

/// Resolves once the workers are asked to stop and no other process takes over: idle
/// keep-alive connections and tunnels close then (see [`Drain::handover`]).
pub(crate) async fn stop_closes_idle(mut stopped: Stopped) {
    let handover = stopped.wait_for(Option::is_some).await.map(|d| d.is_some_and(|d| d.handover));
    if handover.unwrap_or(false) {
        std::future::pending::<()>().await;
    }
}

/// Keeps the open-connections gauge honest however a connection ends, and holds the
/// worker's drain channel open while the connection lives.
pub(crate) struct OpenConnection {
    shared: Arc<Shared>,
    _open: mpsc::Sender<()>,
    _slot: ConnectionSlot,
}

impl OpenConnection {
    fn new(shared: &Arc<Shared>, open: mpsc::Sender<()>, slot: ConnectionSlot) -> Self {
        shared.metrics.open_connections.inc();
        OpenConnection { shared: shared.clone(), _open: open, _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared.metrics.open_connections.dec();
    }
}

/// The TLS handshake. The ClientHello is read first. With on-demand TLS, a name no
/// certificate covers is asked for (the handshake waits while it is obtained, or goes on
/// with what there is when it is refused).
/// The costly step, the answer to the ClientHello, is left to the worker's
/// [`Handshakes`] helper.
async fn handshake(
    stream: TcpStream,
    (endpoint, handshakes): &(Arc<TlsEndpoint>, Arc<Handshakes>),
    conn: &ConnInfo,
) -> io::Result<TlsStream<TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    if let Some(on_demand) = &conn.shared.on_demand {
        let hello = start.client_hello();
        let validating = tls::validates_acme(&hello);
        let unknown = hello.server_name().filter(|name| !validating && !endpoint.store.covers(name)).map(str::to_owned);
        if let Some(name) = unknown {
            let issued = tokio::time::timeout(ON_DEMAND_WAIT, on_demand.ask(&name)).await.unwrap_or(false);
            tracing::debug!(peer = %conn.peer, name, issued, "on-demand certificate");
        }
    }
    handshakes.answer(start, endpoint.config.clone()).await?.await
}

async fn serve_tls(
    stream: TcpStream,
    tls: (Arc<TlsEndpoint>, Arc<Handshakes>),
    conn: ConnInfo,
    stopped: Stopped,
    counted: OpenConnection,
) {
    let budget = TLS_HANDSHAKE_TIMEOUT + if conn.shared.on_demand.is_some() { ON_DEMAND_WAIT } else { Duration::ZERO };
    let stream = match tokio::time::timeout(budget, handshake(stream, &tls, &conn)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            conn.shared.metrics.proxy_error("tls_handshake");
            return;
        }
        Err(_) => {
            conn.shared.metrics.proxy_error("tls_handshake");
            return;
        }
    };
    let alpn = stream.get_ref().1.alpn_protocol();
    if alpn == Some(tls::ACME_TLS_ALPN) {
        // A CA's TLS-ALPN-01 validation: the handshake was the answer; nothing follows.
        tracing::info!(peer = %conn.peer, "answered a TLS-ALPN-01 validation");
        return;
    }
    if alpn == Some(b"h2") {
        Box::pin(crate::h2::serve(stream, conn, stopped, counted)).await
    } else {
        Box::pin(serve_h1(stream, conn, stopped, counted)).await
    }
}

async fn serve_h1<IO: h1::Transport>(io: IO, conn: ConnInfo, stopped: Stopped, _counted: OpenConnection) {
    h1::serve(io, conn, stopped).await
}
