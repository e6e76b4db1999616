//! The admin API: version, health, effective config, reload, metrics, routes and the
//! deployed services. It binds to loopback unless told otherwise; `POST /v1/reload` needs
//! the bearer token when `admin_token` is set. The deploy endpoints under `/v1/services`
//! change what is served, so on TCP they always need the token; on the admin Unix socket the
//! socket's file permissions are the access control.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use gatehouse_deploy::{DeployError, DeployRequest, RolloutRequest, RolloutSplit, ServiceState, StateChange};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::gateway::Gateway;
use gatehouse_templated::clock::rfc3339;

/// How a request reached the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The TCP address: mutating deploy endpoints need `admin_token`.
    Tcp,
    /// The admin Unix socket: whoever may open it may change services.
    Socket,
}

pub fn router(gateway: Arc<Gateway>, access: Access) -> Router {
    let changes = Router::new()
        .route("/v1/services/{name}/deploy", post(deploy))
        .route("/v1/services/{name}", delete(remove))
        // pause, stop and resume
        .route("/v1/services/{name}/{action}", post(change_state))
        .route("/v1/services/{name}/rollout/{action}", post(rollout))
        .route("/v1/upgrade", post(upgrade))
        .route_layer(middleware::from_fn_with_state(gateway.clone(), guard_changes));
    Router::new()
        .route("/", get(version))
        .route("/v1/health", get(health))
        .route("/v1/config", get(config))
        // drove-gateway answers any method here; scripts written for it use GET.
        .route("/v1/reload", post(reload).get(reload))
        .route("/v1/metrics", get(metrics))
        // kamal-proxy's metrics path, for scrapers set up for it.
        .route("/metrics", get(metrics))
        .route("/v1/routes", get(routes))
        .route("/v1/certificates", get(certificates))
        .route("/v1/services", get(list_services))
        .merge(changes)
        .layer(Extension(access))
        .with_state(gateway)
}

/// Refuses a change of the deployed services unless the caller may make it.
async fn guard_changes(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let access = request.extensions().get::<Access>().copied().unwrap_or(Access::Tcp);
    match may_change_services(&gw, access, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

async fn version() -> &'static str {
    concat!("version: ", env!("CARGO_PKG_VERSION"), "\n")
}

/// 200 when the configuration in force is the last one asked for, 500 when the last reload
/// failed (the previous configuration keeps serving).
async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let (generation, status) = gw.status();
    let certificates: serde_json::Map<String, serde_json::Value> =
        gw.certificate_names().into_iter().map(|(addr, names)| (addr.to_string(), json!(names))).collect();
    let mut healthy = status.healthy;
    let mut body = json!({
        "Config": status,
        "RouteTableGeneration": generation,
        // Which process answers (it changes with a binary upgrade).
        "Pid": std::process::id(),
        "Listeners": gw.proxy_addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "Certificates": certificates,
    });
    if let Some(engine) = gw.templated() {
        // drove-gateway's `Config` is the rendered proxy config; a failed Gatehouse reload
        // still shows first.
        let engine = engine.status();
        healthy &=
            engine.config.healthy && engine.template.healthy && engine.runtime_api.healthy && engine.state_file.healthy;
        if status.healthy {
            body["Config"] = json!(engine.config);
        }
        body["Template"] = json!(engine.template);
        body["UpstreamUpdatesViaAPI"] = json!(engine.runtime_api);
        body["ServerStateFileUpdate"] = json!(engine.state_file);
    }
    if let Some(drove) = gw.drove() {
        healthy &= drove_health(drove, &mut body);
    }
    if let Some(acme) = gw.acme() {
        // A failing order shows here at once, long before the certificate in service expires.
        let failing: Vec<_> = acme
            .status()
            .into_iter()
            .filter(|c| c.failures > 0)
            .map(|c| json!({"Service": c.service, "Failures": c.failures, "LastError": c.last_error}))
            .collect();
        healthy &= failing.is_empty();
        body["Acme"] = json!({"Healthy": failing.is_empty(), "Failing": failing});
    }
    let deploys = gw.deploys();
    healthy &= deploys.restore_problems.is_empty();
    body["Deploys"] = json!({
        "State": deploys.location(),
        "RestoreProblems": deploys.restore_problems,
    });
    body["Healthy"] = json!(healthy);
    let code = if healthy { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    (code, Json(body)).into_response()
}

/// drove-gateway's sections (`NamespaceHealth`, `NamespaceEndpoints`, `DataManagerState`,
/// `DiskIO`) plus `Namespaces` with the leader, last sync and staleness. Returns false, as
/// drove-gateway does, when a namespace has every controller down or the state file
/// cannot be written.
fn drove_health(drove: &gatehouse_drove::DroveSource, body: &mut serde_json::Value) -> bool {
    let mut healthy = true;
    let mut namespace_health = serde_json::Map::new();
    let mut namespace_endpoints = serde_json::Map::new();
    let mut namespaces = serde_json::Map::new();
    let mut stale = Vec::new();
    let mut last_updated = None;
    for ns in drove.namespaces() {
        let name = &ns.settings.name;
        let st = ns.status();
        let up = st.endpoints.iter().filter(|e| e.healthy).count();
        let message = match up {
            0 => "All endpoints are down".to_string(),
            n if n == st.endpoints.len() => "All endpoints are healthy".to_string(),
            n => format!("{n} out of {} endpoints are healthy", st.endpoints.len()),
        };
        healthy &= up > 0;
        namespace_health.insert(name.clone(), json!({"Namespace": name, "Healthy": up > 0, "Message": message}));
        let endpoints: Vec<_> = st
            .endpoints
            .iter()
            .map(|e| json!({"Namespace": name, "Endpoint": e.endpoint, "Healthy": e.healthy, "Message": e.message}))
            .collect();
        namespace_endpoints.insert(name.clone(), json!(endpoints));
        let view = ns.view();
        if !st.synced {
            stale.push(name.clone());
        }
        last_updated = last_updated.max(st.last_sync);
        namespaces.insert(
            name.clone(),
            json!({
                "Leader": view.as_ref().and_then(|v| v.leader.as_ref()).map(|l| l.endpoint.clone()),
                "LastSyncTime": st.last_sync.map(rfc3339),
                "Stale": !st.synced,
                "RestoredFromStateFile": st.restored,
                "Vhosts": view.as_ref().map_or(0, |v| v.apps.len()),
                "LastError": st.last_error,
            }),
        );
    }
    let state_message = if stale.is_empty() {
        "Using fresh Drove state for every namespace".to_string()
    } else {
        format!("No successful sync yet, serving the last known state for namespace(s): {}", stale.join(","))
    };
    let disk = drove.disk_status();
    healthy &= disk.healthy;
    body["NamespaceHealth"] = json!(namespace_health);
    body["NamespaceEndpoints"] = json!(namespace_endpoints);
    body["DataManagerState"] = json!({
        "UsingFreshDroveState": stale.is_empty(),
        "Message": state_message,
        "LastUpdated": last_updated.map(rfc3339),
    });
    body["DiskIO"] = json!({"Healthy": disk.healthy, "Message": disk.message});
    body["Namespaces"] = json!(namespaces);
    healthy
}

async fn list_services(State(gw): State<Arc<Gateway>>) -> Response {
    Json(json!({"services": gw.deploys().list().await})).into_response()
}

async fn deploy(State(gw): State<Arc<Gateway>>, Path(name): Path<String>, body: Bytes) -> Response {
    let request: DeployRequest = match parse(&body, false) {
        Ok(request) => request,
        Err(e) => return invalid(e),
    };
    run(async move { gw.deploys().clone().deploy(&name, request).await }).await
}

async fn remove(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    run(async move { gw.deploys().clone().remove(&name).await.map(|()| json!({"removed": true})) }).await
}

/// Pause, stop and resume: an optional JSON [`StateChange`], then the change.
async fn change_state(
    State(gw): State<Arc<Gateway>>,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let state = match action.as_str() {
        "pause" => |c: &StateChange| ServiceState::Paused { max_pause_ms: c.max_pause_ms },
        "stop" => |c: &StateChange| ServiceState::Stopped { message: c.message.clone() },
        "resume" => |_: &StateChange| ServiceState::Running,
        _ => return error(StatusCode::NOT_FOUND, format!("no action `{action}`: deploy, pause, stop or resume")),
    };
    let change: StateChange = match parse(&body, true) {
        Ok(change) => change,
        Err(e) => return invalid(e),
    };
    let state = state(&change);
    let drain = Duration::from_millis(change.drain_timeout_ms);
    run(async move { gw.deploys().clone().set_state(&name, state, drain).await }).await
}

/// `rollout deploy` ([`RolloutRequest`]), `rollout set` ([`RolloutSplit`]) and `rollout stop`
/// (an optional [`StateChange`] for its drain timeout).
async fn rollout(
    State(gw): State<Arc<Gateway>>,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let deploys = gw.deploys().clone();
    match action.as_str() {
        "deploy" => match parse::<RolloutRequest>(&body, false) {
            Ok(request) => run(async move { deploys.rollout_deploy(&name, request).await }).await,
            Err(e) => invalid(e),
        },
        "set" => match parse::<RolloutSplit>(&body, false) {
            Ok(split) => run(async move { deploys.rollout_set(&name, split.clone()).await.map(|()| split) }).await,
            Err(e) => invalid(e),
        },
        "stop" => match parse::<StateChange>(&body, true) {
            Ok(change) => {
                let drain = Duration::from_millis(change.drain_timeout_ms);
                run(async move { deploys.rollout_stop(&name, drain).await }).await
            }
            Err(e) => invalid(e),
        },
        _ => error(StatusCode::NOT_FOUND, format!("no rollout action `{action}`: deploy, set or stop")),
    }
}

/// The JSON request body (an empty body is the defaults when `optional`), or why not.
fn parse<T: DeserializeOwned + Default>(body: &[u8], optional: bool) -> Result<T, String> {
    if optional && body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("the request body is not valid: {e}"))
}

fn invalid(message: String) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Runs a change of the deployed services to its end even if the caller goes away (a deploy
/// stopped between its save and its switch would leave the saved state ahead of the routes).
async fn run<T: Serialize + Send + 'static>(
    change: impl Future<Output = Result<T, DeployError>> + Send + 'static,
) -> Response {
    match tokio::spawn(change).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => deploy_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the change failed: {e}")),
    }
}

fn deploy_error(e: DeployError) -> Response {
    let status = match &e {
        DeployError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Conflict(_) => StatusCode::CONFLICT,
        DeployError::NotFound(_) | DeployError::NoRollout(_) => StatusCode::NOT_FOUND,
        DeployError::Unhealthy(_) => StatusCode::FAILED_DEPENDENCY,
        DeployError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        DeployError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// Starts the binary at this one's path in its place (crate::upgrade); answers once the new
/// process serves, or with why it did not (this one serves on either way).
async fn upgrade() -> Response {
    match crate::upgrade::request().await {
        Ok(pid) => Json(json!({"pid": pid})).into_response(),
        Err(reason) => error(StatusCode::INTERNAL_SERVER_ERROR, reason),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// `None` when the caller may change services; else the refusal to send.
fn may_change_services(gw: &Gateway, access: Access, headers: &HeaderMap) -> Option<Response> {
    if access == Access::Socket {
        return None;
    }
    if gw.config().admin.token.is_none() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "changing services over TCP needs `admin_token` in the configuration (then send `Authorization: Bearer <token>`); the admin Unix socket (`admin_socket`) needs no token".into(),
        ));
    }
    (!authorized(gw, headers)).then(unauthorized)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "this endpoint needs `Authorization: Bearer <admin_token>`"})),
    )
        .into_response()
}

/// The certificates ACME keeps: names, issuer, expiry, next renewal, last error.
async fn certificates(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(acme) = gw.acme() else {
        return Json(json!({"acme": false, "certificates": []})).into_response();
    };
    let settings = acme.settings();
    let certificates: Vec<_> = acme
        .status()
        .into_iter()
        .map(|c| {
            json!({
                "service": c.service,
                "names": c.names,
                "directory": c.directory,
                "issuer": c.issuer,
                "not_after": c.not_after.map(rfc3339),
                "renew_at": c.renew_at.map(rfc3339),
                "ordering": c.ordering,
                "failures": c.failures,
                "last_error": c.last_error,
            })
        })
        .collect();
    Json(json!({
        "acme": true,
        "directory": settings.directory,
        "challenge": settings.challenge,
        "certificates": certificates,
    }))
    .into_response()
}

async fn config(State(gw): State<Arc<Gateway>>) -> Response {
    Json(gw.config().as_ref()).into_response()
}

async fn reload(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return unauthorized();
    }
    match gw.reload().await {
        Ok(generation) => Json(json!({"reloaded": true, "generation": generation})).into_response(),
        Err(message) => {
            let body = json!({"reloaded": false, "error": message, "generation": gw.status().0});
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    }
}

fn authorized(gw: &Gateway, headers: &HeaderMap) -> bool {
    let config = gw.config();
    let Some(token) = &config.admin.token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
}

/// Compares without an early exit, so response timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], gw.metrics.encode())
        .into_response()
}

async fn routes(State(gw): State<Arc<Gateway>>) -> Response {
    Json(&gw.routes().table).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
