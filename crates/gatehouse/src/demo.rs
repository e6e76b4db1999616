//! `gatehouse demo`: the proxy on a built-in configuration with sample backends in this
//! process, so a person can try routing without writing a file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drove_sim::{AppSpec, Sim, SimConfig, Timings};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::ConfigSource;

/// The demo's configuration; `{…}` placeholders are filled with the sample backends' ports.
const DEMO_CONFIG: &str = r#"# The configuration `gatehouse demo` runs (printed by `gatehouse demo --print-config`).
address = "{admin_ip}"
port = {admin_port}
loglevel = "info"
xproxy = "gatehouse-demo"
# Drove: poll the leader's events every second; keep the view in memory only.
event_refresh_interval_sec = 1
state_persistence_enabled = false
# Deploys (`gatehouse deploy --socket ...`) are kept in a folder of this run only.
admin_socket = "{runtime}/gatehouse.sock"
deploy_state = "{runtime}/deploys.json"

[[listeners]]
address = "{listen}"

# Two instances, balanced round robin.
[[services]]
name = "web"
hosts = ["web.localhost", "localhost", "127.0.0.1"]
targets = ["http://127.0.0.1:{web1}", "http://127.0.0.1:{web2}"]

# A path prefix that is stripped before forwarding, least-requests balancing, weights.
[[services]]
name = "api"
hosts = ["web.localhost", "localhost", "127.0.0.1"]
path_prefix = "/api"
strip_prefix = true
balance = "least_requests"
targets = [{ url = "http://127.0.0.1:{api1}", weight = 3 }, "http://127.0.0.1:{api2}"]

# A wildcard host, with sticky clients.
[[services]]
name = "tenants"
hosts = ["*.apps.localhost"]
balance = "ip_hash"
targets = ["http://127.0.0.1:{tenant1}", "http://127.0.0.1:{tenant2}"]
max_body_size = "1MiB"

# A simulated Drove cluster (drove-sim, in this process): three controllers, node 0 leads.
# Apps appear as routes by their vhost within a second of an instance turning healthy.
[[namespaces]]
name = "demo"
drove = [{drove_urls}]
leader_vhost = "drove.localhost"
"#;

/// The simulated cluster's apps: (name, vhost, instances at start).
const DROVE_APPS: &[(&str, &str, u32)] = &[
    ("shop", "shop.drove.localhost", 2),
    ("blog", "blog.drove.localhost", 1),
    ("orders", "orders.drove.localhost", 1),
];

pub struct Demo {
    pub source: ConfigSource,
    pub text: String,
    sim: Arc<Sim>,
    /// A sample backend's port, for the deploy example.
    web1: u16,
}

impl Demo {
    pub fn web1(&self) -> u16 {
        self.web1
    }

    /// Every few seconds scales `shop` up or down, so `/v1/routes` and curl show routes
    /// changing live. Runs until the process stops.
    pub fn start_cluster_changes(&self) -> tokio::task::JoinHandle<()> {
        let sim = self.sim.clone();
        tokio::spawn(async move {
            let sizes = [3, 4, 2, 1, 2];
            for size in sizes.iter().cycle() {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tracing::info!(app = "shop-1", instances = size, "demo: drove-sim scales the app");
                if let Err(e) = sim.with(|c| c.scale("shop-1", *size)) {
                    tracing::warn!(error = %e, "demo: scaling failed");
                }
            }
        })
    }
}

/// Starts the sample backends and returns the configuration that routes to them.
pub async fn prepare(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Demo> {
    let mut text = DEMO_CONFIG
        .replace("{admin_ip}", &admin.ip().to_string())
        .replace("{admin_port}", &admin.port().to_string())
        .replace("{listen}", &listen.to_string())
        .replace("{runtime}", &runtime_folder().display().to_string());
    let mut web1 = 0;
    for name in ["web1", "web2", "api1", "api2", "tenant1", "tenant2"] {
        let port = start_backend(name).await?;
        text = text.replace(&format!("{{{name}}}"), &port.to_string());
        if name == "web1" {
            web1 = port;
        }
    }
    let sim = Sim::start(SimConfig {
        serve_instances: true,
        timings: Timings { step_ms: 300, monitor_ms: 2_000, ..Timings::default() },
        ..SimConfig::default()
    })
    .await?;
    for (name, vhost, instances) in DROVE_APPS {
        sim.with(|c| c.add_app(AppSpec::web(name, "1", vhost), *instances))?;
    }
    let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
    text = text.replace("{drove_urls}", &urls.join(", "));
    let source = ConfigSource::Embedded { text: text.clone(), origin: PathBuf::from("<demo>") };
    Ok(Demo { source, text, sim: Arc::new(sim), web1 })
}

/// The demo's socket and deploy state: a folder of this process, so demos never share them.
fn runtime_folder() -> PathBuf {
    std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()))
}

pub fn instructions(listen: SocketAddr, admin: SocketAddr, web1: u16) -> String {
    let p = listen.port();
    let socket = runtime_folder().join("gatehouse.sock");
    let socket = socket.display();
    format!(
        r#"
Gatehouse demo is running. Try:

  curl http://localhost:{p}/                                  # "web": round robin over two instances
  curl http://localhost:{p}/api/users                         # "api": /api stripped, weighted least-requests
  curl -H 'Host: shop.apps.localhost' http://127.0.0.1:{p}/    # "tenants": wildcard host, sticky by client IP
  curl -H 'Host: nowhere.test' http://127.0.0.1:{p}/           # no route: 404

Drove (a simulated cluster of three controllers; `shop` is scaled every 6 seconds):

  curl -H 'Host: shop.drove.localhost' http://127.0.0.1:{p}/     # answered by a shop instance
  curl -H 'Host: drove.localhost' http://127.0.0.1:{p}/apis/v1/endpoints   # the leader, via leader_vhost
  watch -n1 curl -s -H 'Host: shop.drove.localhost' http://127.0.0.1:{p}/   # instances come and go
  curl -s http://{admin}/v1/routes                                         # shop's targets, live

Deploys (blue-green: health-checked, switched at once, old targets drained):

  gatehouse deploy hello --socket {socket} --host hello.localhost --target 127.0.0.1:{web1} --health-check-path /
  curl -H 'Host: hello.localhost' http://127.0.0.1:{p}/
  gatehouse list --socket {socket}

Admin API (http://{admin}):

  curl http://{admin}/v1/routes      # the live route table
  curl http://{admin}/v1/health
  curl http://{admin}/v1/metrics
  curl -X POST http://{admin}/v1/reload

Stop with Ctrl-C.
"#
    )
}

async fn start_backend(name: &'static str) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let forwarded_for =
                        req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let text = format!(
                        "Hello from {name}\n  {} {} (Host: {}, X-Forwarded-For: {forwarded_for})\n",
                        req.method(),
                        req.uri(),
                        req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("-"),
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(port)
}
