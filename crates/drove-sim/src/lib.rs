//! drove-sim: Drove controllers on loopback, faithful to what a gateway can observe
//! (`shared/research/drove-api.md` §6).
//!
//! [`Sim::start`] runs N controller nodes sharing one [`ClusterState`]. Tests drive the
//! cluster through [`Sim::with`] (or the HTTP control API under `/__sim/`), switch nodes'
//! [`NodeMode`], inject [`FaultRule`]s and read back what each node was asked.

mod api;
pub mod auth;
mod backends;
pub mod cluster;
mod control;
pub mod faults;
pub mod model;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

pub use auth::{Auth, Role, User};
pub use cluster::{AppSpec, ClusterState, ExposedPort, Exposure, SimError, Timings};
pub use faults::{FaultAction, FaultRule};
pub use model::{AppState, InstancePort, InstanceState, PortType};

/// How a controller node behaves at the socket level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NodeMode {
    Up,
    /// Listener closed: connections are refused.
    Down,
    /// Connections accepted and never answered.
    Hang,
    /// Every answer this much later.
    Slow {
        ms: u64,
    },
    /// Connections reset right after accept.
    Reset,
}

/// One request as a node received it, for tests to assert on.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub node: usize,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

const MAX_RECORDED: usize = 10_000;

pub struct SimConfig {
    pub nodes: usize,
    pub auth: Auth,
    pub timings: Timings,
    /// Executors named `exec-1..` on 127.0.0.1.
    pub executors: usize,
    /// Start a small HTTP server for every instance the simulation starts, so requests
    /// routed to an instance reach something real. Otherwise host ports are made up.
    pub serve_instances: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { nodes: 3, auth: Auth::None, timings: Timings::default(), executors: 3, serve_instances: false }
    }
}

pub struct Shared {
    cluster: Mutex<ClusterState>,
    auth: Mutex<Auth>,
    faults: Mutex<Vec<FaultRule>>,
    requests: Mutex<Vec<RecordedRequest>>,
    modes: watch::Sender<Vec<NodeMode>>,
    addresses: Vec<SocketAddr>,
    timers_changed: Notify,
    stopping: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn cluster(&self) -> MutexGuard<'_, ClusterState> {
        lock(&self.cluster)
    }

    fn mode(&self, node: usize) -> NodeMode {
        self.modes.borrow().get(node).copied().unwrap_or(NodeMode::Down)
    }

    fn record(&self, node: usize, request: &wire::Request) {
        let mut requests = lock(&self.requests);
        if requests.len() >= MAX_RECORDED {
            requests.drain(..MAX_RECORDED / 2);
        }
        requests.push(RecordedRequest {
            node,
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: request.headers.clone(),
        });
    }

    /// Runs `f` on the cluster, then whatever timed steps fell due, and wakes the timer task.
    fn with<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        let result = {
            let mut cluster = self.cluster();
            let result = f(&mut cluster);
            cluster.run_due();
            result
        };
        self.timers_changed.notify_one();
        result
    }

    fn set_mode(&self, node: usize, mode: NodeMode) -> Result<(), SimError> {
        let mut result = Err(SimError::NoNode(node));
        self.modes.send_modify(|modes| {
            if let Some(m) = modes.get_mut(node) {
                *m = mode;
                result = Ok(());
            }
        });
        result
    }
}

/// A running simulated cluster. Dropping it stops the nodes.
pub struct Sim {
    shared: Arc<Shared>,
}

impl Sim {
    pub async fn start(config: SimConfig) -> std::io::Result<Sim> {
        let mut listeners = Vec::new();
        for _ in 0..config.nodes {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        let ports: Box<dyn cluster::Ports> = if config.serve_instances {
            Box::new(backends::ServedPorts::new(tokio::runtime::Handle::current()))
        } else {
            Box::new(cluster::MadeUpPorts(31_000))
        };
        let mut state = ClusterState::new(config.nodes, config.timings, ports);
        for n in 1..=config.executors {
            state.add_executor(&format!("exec-{n}"), "127.0.0.1");
        }
        let (stopping, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cluster: Mutex::new(state),
            auth: Mutex::new(config.auth),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            modes: watch::channel(vec![NodeMode::Up; config.nodes]).0,
            addresses,
            timers_changed: Notify::new(),
            stopping,
        });
        for (index, listener) in listeners.into_iter().enumerate() {
            tokio::spawn(run_node(index, shared.clone(), listener));
        }
        tokio::spawn(run_timers(shared.clone()));
        Ok(Sim { shared })
    }

    /// The nodes' base URLs, `http://127.0.0.1:PORT`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.shared.addresses.iter().map(|a| format!("http://{a}")).collect()
    }

    pub fn addresses(&self) -> &[SocketAddr] {
        &self.shared.addresses
    }

    /// Changes the cluster (see [`ClusterState`]'s methods); timed steps then run on their own.
    pub fn with<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        self.shared.with(f)
    }

    pub fn set_mode(&self, node: usize, mode: NodeMode) -> Result<(), SimError> {
        self.shared.set_mode(node, mode)
    }

    pub fn set_auth(&self, auth: Auth) {
        *lock(&self.shared.auth) = auth;
    }

    pub fn inject(&self, rule: FaultRule) {
        lock(&self.shared.faults).push(rule);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Every request received so far (the newest 10,000 at most).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Resolves once the process should stop (the control API's `POST /__sim/stop`).
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.stopping.send_replace(true);
    }
}

async fn run_timers(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let wait = {
            let cluster = shared.cluster();
            let due = cluster.next_due().map(|at| at.saturating_sub(cluster.now()).max(0) as u64);
            due.map_or(Duration::from_secs(3600), Duration::from_millis)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.timers_changed.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        shared.cluster().run_due();
    }
}

async fn run_node(index: usize, shared: Arc<Shared>, listener: TcpListener) {
    let address = shared.addresses[index];
    let mut modes = shared.modes.subscribe();
    let mut stopping = shared.stopping.subscribe();
    let mut listener = Some(listener);
    loop {
        if shared.mode(index) == NodeMode::Down {
            listener = None;
        } else if listener.is_none() {
            match TcpListener::bind(address).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(node = index, %address, error = %e, "cannot reopen the node's port; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            accepted = async { listener.as_ref().expect("bound").accept().await }, if listener.is_some() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(index, shared.clone(), stream));
                }
            }
            changed = modes.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Holds a connection without answering until the peer leaves or the sim stops.
async fn hang(shared: &Shared, mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut stopping = shared.stopping.subscribe();
    let mut sink = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_connection(node: usize, shared: Arc<Shared>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    match shared.mode(node) {
        NodeMode::Reset => return wire::reset(stream),
        NodeMode::Hang => return hang(&shared, stream).await,
        _ => {}
    }
    let mut buf = Vec::new();
    loop {
        let request = match wire::read_request(&mut stream, &mut buf).await {
            Ok(r) => r,
            Err(wire::ReadError::Closed) => return,
            Err(wire::ReadError::Bad(why)) => {
                wire::write_response(&mut stream, false, &wire::Response::new(400, "text/plain", why)).await;
                return;
            }
        };
        match shared.mode(node) {
            NodeMode::Down => return,
            NodeMode::Reset => return wire::reset(stream),
            NodeMode::Hang => return hang(&shared, stream).await,
            NodeMode::Slow { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            NodeMode::Up => {}
        }
        let response = if request.path.starts_with("/__sim/") {
            control::respond(&shared, &request)
        } else {
            shared.record(node, &request);
            let fault = faults::take_matching(&mut lock(&shared.faults), node, &request);
            match fault {
                Some(FaultAction::Hang) => return hang(&shared, stream).await,
                Some(FaultAction::ConnectionReset) => return wire::reset(stream),
                Some(FaultAction::Delay { ms }) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    api::respond(&shared, node, &request, None)
                }
                fault => api::respond(&shared, node, &request, fault.as_ref()),
            }
        };
        if !wire::write_response(&mut stream, request.keep_alive, &response).await {
            return;
        }
    }
}
