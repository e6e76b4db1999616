//! The controller's replies, read leniently: unknown fields ignored, `data` optional, and
//! `status` checked as well as the HTTP code (drove-api.md §0.1).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    pub status: String,
    #[serde(default = "none")]
    pub data: Option<T>,
    #[serde(default)]
    pub message: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposedApp {
    #[serde(default)]
    pub app_id: String,
    pub vhost: String,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub hosts: Vec<ExposedHost>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposedHost {
    pub host: String,
    pub port: u16,
    pub port_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsSummary {
    #[serde(default)]
    pub events_count: BTreeMap<String, serde_json::Value>,
    pub last_sync_time: i64,
}

/// Event types after which the endpoints are read again.
pub fn is_relevant(event_type: &str) -> bool {
    matches!(
        event_type,
        "APP_STATE_CHANGE"
            | "INSTANCE_STATE_CHANGE"
            | "EXECUTOR_REMOVED"
            | "EXECUTOR_BLACKLISTED"
            | "LEADERSHIP_ACQUIRED"
            | "LEADERSHIP_LOST"
            | "MAINTENANCE_MODE_SET"
            | "MAINTENANCE_MODE_REMOVED"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("HTTP {status}: {snippet}")]
    Status { status: u16, snippet: String },
    #[error("reply cut short: {0}")]
    Body(String),
    #[error("reply is not the expected JSON: {0}")]
    Json(String),
    #[error("controller answered FAILED: {0}")]
    Failed(String),
}

impl CallError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Connect(_) => "connect",
            CallError::Timeout(_) => "timeout",
            CallError::Status { .. } => "status",
            CallError::Body(_) => "body",
            CallError::Json(_) => "json",
            CallError::Failed(_) => "failed",
        }
    }
}

/// Checks the HTTP status, decodes the envelope and requires `"status":"SUCCESS"` with data.
pub fn decode<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CallError> {
    if status != 200 {
        let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return Err(CallError::Status { status, snippet });
    }
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(|e| CallError::Json(e.to_string()))?;
    if envelope.status != "SUCCESS" {
        return Err(CallError::Failed(envelope.message.unwrap_or_else(|| envelope.status.clone())));
    }
    envelope.data.ok_or_else(|| CallError::Json("SUCCESS without data".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_checked() {
        let ok: Vec<ExposedApp> = decode(
            200,
            br#"{"status":"SUCCESS","data":[{"appId":"a-1","vhost":"a","hosts":[{"host":"h","port":1,"portType":"HTTP"}],"extra":1}],"message":"success"}"#,
        )
        .unwrap();
        assert_eq!(ok[0].hosts[0].port, 1);
        let failed = decode::<Vec<ExposedApp>>(200, br#"{"status":"FAILED","message":"boom"}"#).unwrap_err();
        assert_eq!(failed.to_string(), "controller answered FAILED: boom");
        assert_eq!(decode::<Vec<ExposedApp>>(200, b"{\"status\":\"SUC").unwrap_err().kind(), "json");
        let e = decode::<Vec<ExposedApp>>(
            400,
            br#"{"status":"FAILED","message":"This node is not the leader controller"}"#,
        );
        assert!(e.unwrap_err().to_string().starts_with("HTTP 400: {\"status\""));
        let s: EventsSummary =
            decode(200, br#"{"status":"SUCCESS","data":{"eventsCount":{},"lastSyncTime":5}}"#).unwrap();
        assert_eq!(s.last_sync_time, 5);
    }
}
