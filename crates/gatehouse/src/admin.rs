//! The admin API: version, health, effective config, reload, metrics and routes.
//! It binds to loopback unless told otherwise; `POST /v1/reload` needs the bearer token
//! when `admin_token` is set.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::gateway::Gateway;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(version))
        .route("/v1/health", get(health))
        .route("/v1/config", get(config))
        .route("/v1/reload", post(reload))
        .route("/v1/metrics", get(metrics))
        .route("/v1/routes", get(routes))
        .with_state(gateway)
}

async fn version() -> &'static str {
    concat!("version: ", env!("CARGO_PKG_VERSION"), "\n")
}

/// 200 when the configuration in force is the last one asked for, 500 when the last reload
/// failed (the previous configuration keeps serving).
async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let (generation, status) = gw.status();
    let code = if status.healthy { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    let certificates: serde_json::Map<String, serde_json::Value> =
        gw.certificate_names().into_iter().map(|(addr, names)| (addr.to_string(), json!(names))).collect();
    let body = json!({
        "Healthy": status.healthy,
        "Config": status,
        "RouteTableGeneration": generation,
        "Listeners": gw.proxy_addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "Certificates": certificates,
    });
    (code, Json(body)).into_response()
}

async fn config(State(gw): State<Arc<Gateway>>) -> Response {
    Json(gw.config().as_ref()).into_response()
}

async fn reload(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !authorized(&gw, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "this endpoint needs `Authorization: Bearer <admin_token>`"})),
        )
            .into_response();
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
