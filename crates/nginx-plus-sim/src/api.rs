//! The request handling: routing, the server objects, validation and the error objects.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::State;

const VERSIONS: std::ops::RangeInclusive<u32> = 1..=9;
const HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";

/// An HTTP upstream server, with the reference's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: u64,
    pub server: String,
    pub weight: u64,
    pub max_conns: u64,
    pub max_fails: u64,
    pub fail_timeout: String,
    pub slow_start: String,
    pub route: String,
    pub backup: bool,
    pub down: bool,
}

impl Server {
    fn new(id: u64, server: String) -> Self {
        Server {
            id,
            server,
            weight: 1,
            max_conns: 0,
            max_fails: 1,
            fail_timeout: "10s".into(),
            slow_start: "0s".into(),
            route: String::new(),
            backup: false,
            down: false,
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn error(status: u16, text: &str, code: &str) -> Reply {
    let request_id = format!(
        "{:032x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    reply(
        status,
        &json!({"error": {"status": status, "text": text, "code": code}, "request_id": request_id, "href": HREF}),
    )
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Reply, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.requests.push(format!("{method} {path}"));
    Ok(route(&method, &path, &body, &mut state))
}

fn route(method: &Method, path: &str, body: &[u8], state: &mut State) -> Reply {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    if parts.first() != Some(&"api") {
        return error(404, "path not found", "PathNotFound");
    }
    if parts.len() == 1 {
        return reply(200, &json!(VERSIONS.collect::<Vec<_>>()));
    }
    match parts[1].parse::<u32>() {
        Ok(v) if VERSIONS.contains(&v) => {}
        _ => return error(404, "unknown version", "UnknownVersion"),
    }
    match &parts[2..] {
        ["http", "upstreams"] if method == Method::GET => {
            let all: Map<String, Value> = state
                .upstreams
                .iter()
                .map(|(name, u)| (name.clone(), json!({"peers": u.servers, "zombies": 0, "zone": name})))
                .collect();
            reply(200, &Value::Object(all))
        }
        ["http", "upstreams", name, rest @ ..] => upstream(method, name, rest, body, state),
        _ => error(404, "path not found", "PathNotFound"),
    }
}

fn upstream(method: &Method, name: &str, rest: &[&str], body: &[u8], state: &mut State) -> Reply {
    let Some(upstream) = state.upstreams.get_mut(name) else {
        return error(404, "upstream not found", "UpstreamNotFound");
    };
    match rest {
        [] if method == Method::GET => reply(200, &json!({"peers": upstream.servers, "zombies": 0, "zone": name})),
        ["servers", ..] if !upstream.zone => error(400, "upstream is static", "UpstreamStatic"),
        ["servers"] if method == Method::GET => reply(200, &json!(upstream.servers)),
        ["servers"] if method == Method::POST => {
            let id = upstream.next_id;
            let mut server = Server::new(id, String::new());
            if let Err((code, text)) = apply(&mut server, body, true) {
                return error(400, &text, code);
            }
            upstream.next_id += 1;
            upstream.servers.push(server.clone());
            reply(201, &json!(server))
        }
        ["servers", id] => {
            let Some(index) = id.parse::<u64>().ok().and_then(|id| upstream.servers.iter().position(|s| s.id == id))
            else {
                return error(404, "server not found", "UpstreamServerNotFound");
            };
            match *method {
                Method::GET => reply(200, &json!(upstream.servers[index])),
                Method::PATCH => {
                    let mut server = upstream.servers[index].clone();
                    if let Err((code, text)) = apply(&mut server, body, false) {
                        return error(400, &text, code);
                    }
                    upstream.servers[index] = server.clone();
                    reply(200, &json!(server))
                }
                Method::DELETE => {
                    upstream.servers.remove(index);
                    reply(200, &json!(upstream.servers))
                }
                _ => error(405, "method not supported", "MethodNotSupported"),
            }
        }
        _ => error(405, "method not supported", "MethodNotSupported"),
    }
}

/// A 400's error code and text.
type Invalid = (&'static str, String);

/// Applies a POST or PATCH body to `server`, validating as the reference lists.
fn apply(server: &mut Server, body: &[u8], creating: bool) -> Result<(), Invalid> {
    let bad = |code: &'static str, text: String| (code, text);
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("UpstreamConfFormatError", "error while parsing".into()));
    };
    if creating && !fields.contains_key("server") {
        return Err(bad("UpstreamConfFormatError", "missing \"server\" argument".into()));
    }
    for (key, value) in &fields {
        if value.is_object() || value.is_array() {
            return Err(bad("UpstreamConfFormatError", "nested object or list".into()));
        }
        let number = |code: &'static str| value.as_u64().ok_or_else(|| bad(code, format!("invalid \"{key}\"")));
        let duration = |code: &'static str| match value.as_str() {
            Some(v) if v.strip_suffix('s').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) => {
                Ok(v.to_string())
            }
            _ => Err(bad(code, format!("invalid \"{key}\""))),
        };
        match key.as_str() {
            "server" => {
                let address = value.as_str().unwrap_or_default();
                if !valid_address(address) {
                    return Err(bad("UpstreamBadAddress", format!("invalid address \"{address}\"")));
                }
                server.server = if address.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                    address.to_string()
                } else {
                    format!("{address}:80")
                };
            }
            "weight" => {
                server.weight = number("UpstreamBadWeight").and_then(|w| {
                    if w == 0 {
                        Err(bad("UpstreamBadWeight", "invalid \"weight\"".into()))
                    } else {
                        Ok(w)
                    }
                })?
            }
            "max_conns" => server.max_conns = number("UpstreamBadMaxConns")?,
            "max_fails" => server.max_fails = number("UpstreamBadMaxFails")?,
            "fail_timeout" => server.fail_timeout = duration("UpstreamBadFailTimeout")?,
            "slow_start" => server.slow_start = duration("UpstreamBadSlowStart")?,
            "route" => server.route = value.as_str().unwrap_or_default().to_string(),
            "backup" if creating => server.backup = value.as_bool().unwrap_or(false),
            "down" => server.down = value.as_bool().unwrap_or(false),
            "id" | "backup" | "service" => {
                return Err(bad("UpstreamConfFormatError", format!("\"{key}\" cannot be changed")));
            }
            _ => return Err(bad("UpstreamConfFormatError", format!("unknown parameter \"{key}\""))),
        }
    }
    Ok(())
}

fn valid_address(address: &str) -> bool {
    let host = match address.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => h,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
}
