//! A fake of the NGINX Plus API's HTTP upstream endpoints, as nginx.org's
//! `ngx_http_api_module` reference describes them: versions 1 to 9 under `/api/`,
//! `/api/{v}/http/upstreams[/{name}[/servers[/{id}]]]` with GET, POST, PATCH and DELETE,
//! server objects with their defaults, and the error objects (`UpstreamNotFound`,
//! `UpstreamStatic`, `UpstreamServerNotFound`, `UpstreamConfFormatError`, ...). NGINX Plus
//! itself cannot run here; this stands in for it. Loopback only.

mod api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use api::Server;

/// One upstream group: `zone` is whether it lives in shared memory (the API can only
/// change such groups).
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub zone: bool,
    pub servers: Vec<Server>,
    pub next_id: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub upstreams: BTreeMap<String, Upstream>,
    /// Every request as `METHOD PATH`, for tests.
    pub requests: Vec<String>,
}

pub struct NginxPlusSim {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl NginxPlusSim {
    /// Serves on 127.0.0.1 (a free port) with these upstream groups, each `(name, zone)`.
    pub async fn start(upstreams: &[(&str, bool)]) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            upstreams: upstreams
                .iter()
                .map(|(n, zone)| (n.to_string(), Upstream { zone: *zone, ..Default::default() }))
                .collect(),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| api::handle(req, state.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(NginxPlusSim { address, state, task })
    }

    /// `host:port`, as `nginxplusapiaddr` takes it.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Adds an upstream group, as a reload with a new `upstream` block would.
    pub fn add_upstream(&self, name: &str, zone: bool) {
        self.lock().upstreams.entry(name.to_string()).or_insert(Upstream { zone, ..Default::default() });
    }

    /// The `server` addresses of a group, in id order.
    pub fn servers(&self, upstream: &str) -> Vec<String> {
        self.lock()
            .upstreams
            .get(upstream)
            .map(|u| u.servers.iter().map(|s| s.server.clone()).collect())
            .unwrap_or_default()
    }

    pub fn upstream(&self, name: &str) -> Option<Upstream> {
        self.lock().upstreams.get(name).cloned()
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NginxPlusSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}
