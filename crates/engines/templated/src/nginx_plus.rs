//! Membership changes through the NGINX Plus API (`nginxplusapiaddr`, API version 8): per
//! upstream (one per vhost, as drove-gateway names them), the servers are listed, missing
//! ones added, changed ones patched and surplus ones deleted, adds first. An upstream NGINX
//! does not have yet needs a config reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::data::RenderingData;

const API_VERSION: u32 = 8;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// A server an upstream should have. `server` is `ip:port`; `None` when its host did not
/// resolve, so nothing of that upstream is deleted this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlusServer {
    pub server: Option<String>,
}

/// Upstream (vhost) -> its servers.
pub type PlusWanted = BTreeMap<String, Vec<PlusServer>>;

/// The upstreams drove-gateway reconciles: apps whose hosts are all HTTP(S).
pub fn plus_wanted(data: &RenderingData, mut address: impl FnMut(&str) -> Option<String>) -> PlusWanted {
    data.apps
        .values()
        .filter(|app| {
            !app.hosts.is_empty() && app.hosts.iter().all(|h| h.port_type == "http" || h.port_type == "https")
        })
        .map(|app| {
            let servers = app
                .hosts
                .iter()
                .map(|h| PlusServer { server: address(&h.host).map(|ip| gatehouse_model::host_port(&ip, h.port)) })
                .collect();
            (app.vhost.clone(), servers)
        })
        .collect()
}

/// The server parameters drove-gateway sends with every server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    pub max_fails: i64,
    pub fail_timeout: String,
    pub slow_start: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PlusError {
    #[error("NGINX Plus API {address}: {message}")]
    Call { address: SocketAddr, message: String },
    #[error("NGINX Plus API: {method} {path} answered {status}: {body}")]
    Status { method: &'static str, path: String, status: u16, body: String },
    #[error("NGINX Plus lacks {} upstream(s) the routes need ({}): the config must be reloaded first", .0.len(), .0.iter().take(3).cloned().collect::<Vec<_>>().join(", "))]
    MissingUpstreams(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Listed {
    id: u64,
    server: String,
    #[serde(default)]
    max_fails: i64,
    #[serde(default)]
    fail_timeout: String,
    #[serde(default)]
    slow_start: String,
}

async fn call(
    address: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Bytes), PlusError> {
    let failed = |message: String| PlusError::Call { address, message };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| failed(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(e.to_string()))?;
        tokio::spawn(conn);
        let payload = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", address.to_string())
            .header("content-type", "application/json")
            .body(Full::new(payload))
            .map_err(|e| failed(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes =
            Limited::new(resp.into_body(), MAX_REPLY).collect().await.map_err(|e| failed(e.to_string()))?.to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {CALL_TIMEOUT:?}")))?
}

fn expect(method: &'static str, path: &str, (status, body): (u16, Bytes), ok: u16) -> Result<Bytes, PlusError> {
    if status == ok {
        Ok(body)
    } else {
        Err(PlusError::Status {
            method,
            path: path.to_string(),
            status,
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        })
    }
}

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlusReconciled {
    pub added: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Brings NGINX Plus's upstream servers to `wanted`: only the upstreams that differ from
/// `previous` when given.
pub async fn reconcile_plus(
    address: SocketAddr,
    wanted: &PlusWanted,
    previous: Option<&PlusWanted>,
    params: &ServerParams,
) -> Result<PlusReconciled, PlusError> {
    let mut done = PlusReconciled::default();
    let mut missing = Vec::new();
    let desired = |server: &str| json!({"server": server, "max_fails": params.max_fails, "fail_timeout": params.fail_timeout, "slow_start": params.slow_start});
    for (upstream, servers) in wanted {
        if previous.and_then(|p| p.get(upstream)) == Some(servers) {
            continue;
        }
        let base = format!("/api/{API_VERSION}/http/upstreams/{upstream}/servers");
        let listed = call(address, "GET", &base, None).await?;
        if listed.0 == 404 {
            missing.push(upstream.clone());
            continue;
        }
        let body = expect("GET", &base, listed, 200)?;
        let current: Vec<Listed> = serde_json::from_slice(&body)
            .map_err(|e| PlusError::Call { address, message: format!("GET {base}: {e}") })?;
        let resolved: Vec<&str> = servers.iter().filter_map(|s| s.server.as_deref()).collect();
        for server in &resolved {
            match current.iter().find(|c| c.server == *server) {
                None => {
                    expect("POST", &base, call(address, "POST", &base, Some(desired(server))).await?, 201)?;
                    done.added += 1;
                }
                Some(c)
                    if c.max_fails != params.max_fails
                        || c.fail_timeout != params.fail_timeout
                        || c.slow_start != params.slow_start =>
                {
                    let path = format!("{base}/{}", c.id);
                    expect("PATCH", &path, call(address, "PATCH", &path, Some(desired(server))).await?, 200)?;
                    done.updated += 1;
                }
                Some(_) => {}
            }
        }
        // A host that did not resolve may be any of the current servers: delete nothing.
        if resolved.len() == servers.len() {
            for c in current.iter().filter(|c| !resolved.contains(&c.server.as_str())) {
                let path = format!("{base}/{}", c.id);
                expect("DELETE", &path, call(address, "DELETE", &path, None).await?, 200)?;
                done.deleted += 1;
            }
        }
    }
    if missing.is_empty() {
        Ok(done)
    } else {
        Err(PlusError::MissingUpstreams(missing))
    }
}
