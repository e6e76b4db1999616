//! `gatehouse demo`: the proxy on a built-in configuration with sample backends in this
//! process, so a person can try routing without writing a file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
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
"#;

pub struct Demo {
    pub source: ConfigSource,
    pub text: String,
}

/// Starts the sample backends and returns the configuration that routes to them.
pub async fn prepare(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Demo> {
    let mut text = DEMO_CONFIG
        .replace("{admin_ip}", &admin.ip().to_string())
        .replace("{admin_port}", &admin.port().to_string())
        .replace("{listen}", &listen.to_string());
    for name in ["web1", "web2", "api1", "api2", "tenant1", "tenant2"] {
        let port = start_backend(name).await?;
        text = text.replace(&format!("{{{name}}}"), &port.to_string());
    }
    let source = ConfigSource::Embedded { text: text.clone(), origin: PathBuf::from("<demo>") };
    Ok(Demo { source, text })
}

pub fn instructions(listen: SocketAddr, admin: SocketAddr) -> String {
    let p = listen.port();
    format!(
        r#"
Gatehouse demo is running. Try:

  curl http://localhost:{p}/                                  # "web": round robin over two instances
  curl http://localhost:{p}/api/users                         # "api": /api stripped, weighted least-requests
  curl -H 'Host: shop.apps.localhost' http://127.0.0.1:{p}/    # "tenants": wildcard host, sticky by client IP
  curl -H 'Host: nowhere.test' http://127.0.0.1:{p}/           # no route: 404

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
