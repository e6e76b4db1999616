//! Drove's states and the JSON shapes of its replies (drove-api.md §1, §4).
//!
//! The controller's mapper omits null fields, prints enums in upper case and dates as epoch
//! milliseconds; the `skip_serializing_if` attributes below are what reproduces that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    Init,
    Monitoring,
    Running,
    OutageDetected,
    ScalingRequested,
    StopInstancesRequested,
    ReplaceInstancesRequested,
    DestroyRequested,
    Destroyed,
    Failed,
}

impl AppState {
    /// `ApplicationState.ACTIVE_APP_STATES`: only apps in these are listed by `/endpoints`.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AppState::Running
                | AppState::OutageDetected
                | AppState::ScalingRequested
                | AppState::StopInstancesRequested
                | AppState::ReplaceInstancesRequested
                | AppState::DestroyRequested
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Pending,
    Provisioning,
    ProvisioningFailed,
    Starting,
    StartFailed,
    Unready,
    Ready,
    ReadinessCheckFailed,
    Healthy,
    Unhealthy,
    Stopping,
    Deprovisioning,
    Stopped,
    Lost,
    Unknown,
}

impl InstanceState {
    /// `InstanceState.ACTIVE_STATES`: the default filter of the instances read.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Provisioning
                | InstanceState::Starting
                | InstanceState::Unready
                | InstanceState::Ready
                | InstanceState::Healthy
                | InstanceState::Unhealthy
                | InstanceState::Deprovisioning
                | InstanceState::Stopping
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortType {
    Http,
    Https,
    Tcp,
    Udp,
}

impl PortType {
    pub fn lower(self) -> &'static str {
        match self {
            PortType::Http => "http",
            PortType::Https => "https",
            PortType::Tcp => "tcp",
            PortType::Udp => "udp",
        }
    }
}

/// `{"status": ..., "data": ..., "message": ...}`; `data` is left out when there is none.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    pub message: String,
}

impl<T: Serialize> Envelope<T> {
    pub fn success(data: T) -> Self {
        Envelope { status: "SUCCESS", data: Some(data), message: "success".into() }
    }
}

impl Envelope<()> {
    pub fn failed(message: impl Into<String>) -> Self {
        Envelope { status: "FAILED", data: None, message: message.into() }
    }
}

/// One entry of `/apis/v1/endpoints`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposedAppInfo {
    pub app_name: String,
    pub app_id: String,
    pub vhost: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub hosts: Vec<ExposedHost>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposedHost {
    pub host: String,
    pub port: u16,
    pub port_type: PortType,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsSummary {
    pub events_count: BTreeMap<String, u64>,
    pub last_sync_time: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsList {
    pub events: Vec<Event>,
    pub last_sync_time: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub time: i64,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePort {
    pub container_port: u16,
    pub host_port: u16,
    pub port_type: PortType,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalInfo {
    pub hostname: String,
    pub ports: BTreeMap<String, InstancePort>,
}

/// `InstanceInfo` as the instance reads return it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub app_id: String,
    pub app_name: String,
    pub instance_id: String,
    pub executor_id: String,
    pub local_info: LocalInfo,
    pub resources: Vec<serde_json::Value>,
    pub state: InstanceState,
    pub metadata: BTreeMap<String, String>,
    pub error_message: String,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub required_instances: u32,
    pub healthy_instances: u32,
    #[serde(rename = "totalCPUs")]
    pub total_cpus: u32,
    pub total_memory: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub state: AppState,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    pub leader: String,
    pub state: &'static str,
    pub num_executors: usize,
    pub num_applications: usize,
    pub num_active_applications: usize,
    pub num_active_tasks: usize,
    pub num_local_services: usize,
    pub num_active_local_services: usize,
    pub free_cores: u32,
    pub used_cores: u32,
    pub total_cores: u32,
    pub free_memory: u64,
    pub used_memory: u64,
    pub total_memory: u64,
}
