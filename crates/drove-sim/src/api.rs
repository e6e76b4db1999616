//! The controller's `/apis/v1` surface: filters in Drove's order (auth, role, leadership),
//! then the read endpoints and the few writes a gateway test needs.

use serde::Deserialize;
use serde_json::json;

use crate::auth::Need;
use crate::cluster::{ClusterState, SimError};
use crate::faults::FaultAction;
use crate::model::{Envelope, EventsList, InstanceState};
use crate::wire::{Request, Response};
use crate::Shared;

const NOT_LEADER: &str = "This node is not the leader controller";

fn failed_200(message: impl Into<String>) -> Response {
    Response::json(200, &Envelope::failed(message))
}

fn validation_failure(message: &str, errors: &[String]) -> Response {
    Response::json(400, &json!({"status": "FAILED", "data": {"validationErrors": errors}, "message": message}))
}

fn not_found() -> Response {
    Response::new(404, "text/plain", "HTTP 404 Not Found")
}

/// Answers one `/apis/...` request on controller `node`, with `fault` applied if one matched.
pub fn respond(shared: &Shared, node: usize, request: &Request, fault: Option<&FaultAction>) -> Response {
    match fault {
        Some(FaultAction::Status { code, body, content_type }) => {
            return Response::new(*code, content_type, body.clone());
        }
        Some(FaultAction::ApiFailed { message }) => return failed_200(message.clone()),
        Some(FaultAction::MalformedJson) => {
            return Response::new(200, "application/json", "{\"status\":\"SUCCESS\",\"data\":[{\"appId\":");
        }
        _ => {}
    }
    let need = match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", _) => Need::Read,
        (_, p) if p.contains("/maintenance/") || p.contains("blacklist") => Need::Maintenance,
        _ => Need::Write,
    };
    let auth = shared.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(denied) = auth.check(request, need) {
        return denied;
    }
    let mut cluster = shared.cluster();
    cluster.run_due();
    if cluster.leader != Some(node) {
        if let (Some(leader), Some(rest)) = (cluster.leader, request.path.strip_prefix("/apis/ui")) {
            let location = format!("http://{}{}", shared.addresses[leader], rest);
            return Response::empty(303).header("Location", location);
        }
        return Response::json(400, &Envelope::failed(NOT_LEADER));
    }
    let stale_sync_time = match fault {
        Some(FaultAction::StaleLastSyncTime { value }) => Some(*value),
        _ => None,
    };
    let mut response = match request.method.as_str() {
        "GET" => read(shared, &mut cluster, request, stale_sync_time),
        "POST" => write(&mut cluster, request),
        _ => Response::new(405, "text/plain", "HTTP 405 Method Not Allowed"),
    };
    drop(cluster);
    match fault {
        Some(FaultAction::TruncatedBody) => response.truncate = true,
        Some(FaultAction::WrongContentType) => {
            response.headers.retain(|(n, _)| *n != "Content-Type");
            response.headers.push(("Content-Type", "text/html".into()));
        }
        Some(FaultAction::EmptyEndpoints) if request.path.starts_with("/apis/v1/endpoints") => {
            response = Response::json(200, &Envelope::success(Vec::<()>::new()));
        }
        _ => {}
    }
    response
}

enum SyncTime {
    Valid(i64),
    Invalid(Response),
}

fn last_sync_time(request: &Request) -> SyncTime {
    match request.query_one("lastSyncTime") {
        None | Some("") => SyncTime::Valid(0),
        Some(text) => match text.parse::<i64>() {
            Err(_) => SyncTime::Invalid(not_found()),
            Ok(v) if v < 0 => SyncTime::Invalid(validation_failure(
                "Command validation failure",
                &["query param lastSyncTime must be greater than or equal to 0".into()],
            )),
            Ok(v) => SyncTime::Valid(v),
        },
    }
}

fn read(shared: &Shared, cluster: &mut ClusterState, request: &Request, stale_sync_time: Option<i64>) -> Response {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.trim_start_matches("/apis/v1/").split('/').collect();
    match segments.as_slice() {
        ["ping"] => Response::json(200, &Envelope::success("pong")),
        ["endpoints"] => {
            let names: Vec<String> = request.query_all("app").filter(|n| !n.is_empty()).map(String::from).collect();
            Response::json(200, &Envelope::success(cluster.endpoints(&names)))
        }
        ["endpoints", "app", name] => Response::json(200, &Envelope::success(cluster.endpoints(&[name.to_string()]))),
        ["cluster", "events", rest @ ..] => {
            let since = match last_sync_time(request) {
                SyncTime::Valid(v) => v,
                SyncTime::Invalid(response) => return response,
            };
            let size = match request.query_one("size").map(str::parse::<usize>) {
                None => 1024,
                Some(Ok(n)) => n,
                Some(Err(_)) => return not_found(),
            };
            match rest {
                ["summary"] => {
                    let mut summary = cluster.events_summary(since);
                    if let Some(v) = stale_sync_time {
                        summary.last_sync_time = v;
                    }
                    Response::json(200, &Envelope::success(summary))
                }
                ["latest"] => {
                    let mut list: EventsList = cluster.events_latest(since, size);
                    if let Some(v) = stale_sync_time {
                        list.last_sync_time = v;
                    }
                    Response::json(200, &Envelope::success(list))
                }
                [] => Response::json(200, &Envelope::success(cluster.events_latest(since, size).events)),
                _ => not_found(),
            }
        }
        ["cluster"] => {
            let leader = match cluster.leader {
                Some(n) => shared.addresses[n].to_string(),
                None => "Leader election underway".into(),
            };
            Response::json(200, &Envelope::success(cluster.cluster_summary(leader)))
        }
        ["cluster", "executors"] => {
            let list: Vec<_> = cluster
                .executors
                .values()
                .map(|e| json!({"executorId": e.id, "hostname": e.hostname, "port": e.port, "state": e.state}))
                .collect();
            Response::json(200, &Envelope::success(list))
        }
        ["applications"] => {
            let map: serde_json::Map<String, serde_json::Value> = cluster
                .apps
                .iter()
                .map(|(id, app)| (id.clone(), serde_json::to_value(cluster.app_summary(app)).unwrap_or_default()))
                .collect();
            Response::json(200, &Envelope::success(map))
        }
        ["applications", app_id, rest @ ..] => {
            let Some(app) = cluster.apps.get(*app_id) else {
                return failed_200(SimError::NoApp(app_id.to_string()).to_string());
            };
            match rest {
                [] => Response::json(200, &Envelope::success(cluster.app_summary(app))),
                ["spec"] => {
                    let spec = &app.spec;
                    let ports: Vec<_> = spec
                        .exposed_ports
                        .iter()
                        .map(|p| json!({"name": p.name, "port": p.port, "type": p.port_type}))
                        .collect();
                    let mut value = json!({"name": spec.name, "version": spec.version, "exposedPorts": ports});
                    if let Some(e) = &spec.exposure {
                        value["exposureSpec"] = json!({"vhost": e.vhost, "portName": e.port_name, "mode": "ALL"});
                    }
                    if let Some(tags) = &spec.tags {
                        value["tags"] = json!(tags);
                    }
                    Response::json(200, &Envelope::success(value))
                }
                ["instances"] => {
                    let wanted: Vec<InstanceState> = request
                        .query_all("state")
                        .filter_map(|s| serde_json::from_value(json!(s.to_ascii_uppercase())).ok())
                        .collect();
                    let now = cluster.now();
                    let list: Vec<_> = app
                        .instances
                        .values()
                        .filter(|i| if wanted.is_empty() { i.state.is_active() } else { wanted.contains(&i.state) })
                        .filter(|i| now - cluster.instance_updated(i) <= crate::cluster::STALE_AFTER_MS)
                        .map(|i| cluster.instance_info(app, i))
                        .collect();
                    Response::json(200, &Envelope::success(list))
                }
                ["instances", instance_id] => match app.instances.get(*instance_id) {
                    Some(i) => Response::json(200, &Envelope::success(cluster.instance_info(app, i))),
                    None => failed_200(SimError::NoInstance(app_id.to_string(), instance_id.to_string()).to_string()),
                },
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum Operation {
    Scale {
        #[serde(rename = "appId")]
        app_id: String,
        #[serde(rename = "requiredInstances")]
        required_instances: u32,
    },
    StartInstances {
        #[serde(rename = "appId")]
        app_id: String,
        instances: u32,
    },
    Suspend {
        #[serde(rename = "appId")]
        app_id: String,
    },
    Destroy {
        #[serde(rename = "appId")]
        app_id: String,
    },
}

fn write(cluster: &mut ClusterState, request: &Request) -> Response {
    match request.path.trim_end_matches('/') {
        "/apis/v1/applications/operations" | "/apis/v1/operations" => {
            let op: Operation = match serde_json::from_slice(&request.body) {
                Ok(op) => op,
                Err(e) => return validation_failure("JSON validation failure", &[e.to_string()]),
            };
            operate(cluster, op)
        }
        "/apis/v1/cluster/maintenance/set" | "/apis/v1/cluster/maintenance/unset" => {
            let on = request.path.ends_with("/set");
            cluster.set_maintenance(on);
            let state = if on { "MAINTENANCE" } else { "NORMAL" };
            Response::json(200, &Envelope::success(json!({"state": state, "updated": cluster.now()})))
        }
        _ => not_found(),
    }
}

fn operate(cluster: &mut ClusterState, op: Operation) -> Response {
    use crate::model::AppState;
    let app_id = match &op {
        Operation::Scale { app_id, .. }
        | Operation::StartInstances { app_id, .. }
        | Operation::Suspend { app_id }
        | Operation::Destroy { app_id } => app_id.clone(),
    };
    let Some(app) = cluster.apps.get(&app_id) else {
        return validation_failure("Command validation failure", &[format!("No app found with id: {app_id}")]);
    };
    let state = cluster.effective_state(app);
    let allowed = matches!(
        (&op, state),
        (Operation::Scale { .. } | Operation::StartInstances { .. }, AppState::Monitoring | AppState::Running)
            | (Operation::Scale { .. }, AppState::ScalingRequested)
            | (Operation::Suspend { .. }, AppState::Running)
            | (Operation::Destroy { .. }, AppState::Monitoring)
    );
    if !allowed {
        let state = serde_json::to_value(state).unwrap_or_default();
        let state = state.as_str().unwrap_or_default();
        return validation_failure(
            "Command validation failure",
            &[format!("No operations allowed for {app_id} as it is in {state} state")],
        );
    }
    let healthy = app.instances.values().filter(|i| i.state == InstanceState::Healthy).count() as u32;
    let result = match op {
        Operation::Scale { required_instances, .. } => cluster.scale(&app_id, required_instances),
        Operation::StartInstances { instances, .. } => cluster.scale(&app_id, healthy + instances),
        Operation::Suspend { .. } => cluster.scale(&app_id, 0),
        Operation::Destroy { .. } => cluster.remove_app(&app_id),
    };
    match result {
        Ok(()) => Response::json(200, &Envelope::success(json!({"appId": app_id}))),
        Err(e) => validation_failure("Command validation failure", &[e.to_string()]),
    }
}
