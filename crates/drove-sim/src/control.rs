//! The HTTP control API under `/__sim/`, outside `/apis` so it cannot collide with Drove's
//! paths: for demos and for people writing templates against a cluster by hand.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use crate::cluster::{AppSpec, ClusterState, ExposedPort, Exposure, SimError};
use crate::model::{InstanceState, PortType};
use crate::wire::{Request, Response};
use crate::{lock, FaultRule, NodeMode, Shared};

#[derive(Deserialize)]
struct NewApp {
    name: String,
    #[serde(default = "one")]
    version: String,
    vhost: String,
    #[serde(default)]
    instances: u32,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default = "http")]
    port_type: PortType,
}

fn one() -> String {
    "1".into()
}

fn http() -> PortType {
    PortType::Http
}

#[derive(Deserialize)]
struct Scale {
    instances: u32,
}

#[derive(Deserialize)]
struct Failover {
    to: Option<usize>,
    #[serde(default)]
    recovery_ms: i64,
}

#[derive(Deserialize)]
struct Maintenance {
    on: bool,
}

#[derive(Deserialize, Default)]
struct Target {
    #[serde(default)]
    instance: Option<String>,
}

fn error(status: u16, message: impl std::fmt::Display) -> Response {
    Response::json(status, &json!({"error": message.to_string()}))
}

fn body<'a, T: Deserialize<'a>>(request: &'a Request) -> Result<T, Response> {
    let bytes: &[u8] = if request.body.is_empty() { b"{}" } else { &request.body };
    serde_json::from_slice(bytes).map_err(|e| error(400, format!("bad JSON body: {e}")))
}

pub fn respond(shared: &Shared, request: &Request) -> Response {
    match handle(shared, request) {
        Ok(response) | Err(response) => response,
    }
}

fn sim_error(e: SimError) -> Response {
    error(404, e)
}

fn first_healthy(cluster: &ClusterState, app_id: &str) -> Result<String, SimError> {
    let app = cluster.apps.get(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
    app.instances
        .values()
        .find(|i| i.state == InstanceState::Healthy)
        .map(|i| i.id.clone())
        .ok_or_else(|| SimError::NoInstance(app_id.into(), "(any healthy)".into()))
}

fn handle(shared: &Shared, request: &Request) -> Result<Response, Response> {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.trim_start_matches("/__sim/").split('/').collect();
    let ok = || Response::json(200, &json!({"ok": true}));
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["state"]) => Ok(state(shared)),
        ("POST", ["apps"]) => {
            let new: NewApp = body(request)?;
            let spec = AppSpec {
                name: new.name,
                version: new.version,
                exposed_ports: vec![ExposedPort { name: "main".into(), port: 8080, port_type: new.port_type }],
                exposure: Some(Exposure { vhost: new.vhost, port_name: "main".into() }),
                tags: new.tags,
            };
            let app_id = shared.with(|c| c.add_app(spec, new.instances)).map_err(|e| error(409, e))?;
            Ok(Response::json(200, &json!({"appId": app_id})))
        }
        ("POST", ["apps", app_id, "scale"]) => {
            let scale: Scale = body(request)?;
            shared.with(|c| c.scale(app_id, scale.instances)).map_err(sim_error)?;
            Ok(ok())
        }
        ("POST", ["apps", app_id, action @ ("crash" | "flap")]) => {
            let target: Target = body(request)?;
            shared
                .with(|c| {
                    let instance = match target.instance {
                        Some(i) => i,
                        None => first_healthy(c, app_id)?,
                    };
                    if *action == "crash" {
                        c.crash(app_id, &instance)
                    } else {
                        c.flap(app_id, &instance)
                    }
                })
                .map_err(sim_error)?;
            Ok(ok())
        }
        ("DELETE", ["apps", app_id]) => {
            shared.with(|c| c.remove_app(app_id)).map_err(sim_error)?;
            Ok(ok())
        }
        ("POST", ["failover"]) => {
            let f: Failover = body(request)?;
            shared.with(|c| c.failover(f.to, f.recovery_ms)).map_err(|e| error(400, e))?;
            Ok(ok())
        }
        ("POST", ["nodes", node]) => {
            let mode: NodeMode = body(request)?;
            let node: usize = node.parse().map_err(|_| error(400, "node must be a number"))?;
            shared.set_mode(node, mode).map_err(|e| error(404, e))?;
            Ok(ok())
        }
        ("POST", ["maintenance"]) => {
            let m: Maintenance = body(request)?;
            shared.with(|c| c.set_maintenance(m.on));
            Ok(ok())
        }
        ("POST", ["executors", id, "lose"]) => {
            shared.with(|c| c.lose_executor(id)).map_err(sim_error)?;
            Ok(ok())
        }
        ("POST", ["faults"]) => {
            let rule: FaultRule = body(request)?;
            lock(&shared.faults).push(rule);
            Ok(ok())
        }
        ("DELETE", ["faults"]) => {
            lock(&shared.faults).clear();
            Ok(ok())
        }
        ("POST", ["stop"]) => {
            shared.stopping.send_replace(true);
            Ok(ok())
        }
        _ => Err(error(404, format!("no control endpoint {} {}", request.method, request.path))),
    }
}

fn state(shared: &Shared) -> Response {
    let modes = shared.modes.borrow().clone();
    let cluster = shared.cluster();
    let nodes: Vec<_> = shared
        .addresses
        .iter()
        .zip(modes)
        .enumerate()
        .map(|(i, (a, m))| json!({"node": i, "url": format!("http://{a}"), "mode": m, "leader": cluster.leader == Some(i)}))
        .collect();
    let apps: Vec<_> = cluster
        .apps
        .iter()
        .map(|(id, app)| {
            let instances: Vec<_> = app
                .instances
                .values()
                .map(|i| json!({"id": i.id, "state": i.state, "host": i.hostname, "ports": i.ports}))
                .collect();
            json!({
                "appId": id,
                "state": cluster.effective_state(app),
                "vhost": app.spec.exposure.as_ref().map(|e| e.vhost.clone()),
                "required": app.required,
                "instances": instances,
            })
        })
        .collect();
    Response::json(200, &json!({"nodes": nodes, "apps": apps}))
}
