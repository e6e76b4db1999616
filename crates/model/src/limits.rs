//! What one client may cost the edge: how long it may take to send, how much it may hold
//! open. The defaults are as strict as HAProxy's where HAProxy has one.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeLimits {
    /// A whole request head must arrive within this, counted from its first byte (or from
    /// the connection's start): else 408 (HAProxy's `timeout http-request`). For HTTP/2, the
    /// time a new connection has to open its first stream.
    pub head_timeout: Duration,
    /// An idle keep-alive connection (HTTP/1 between requests, HTTP/2 with no open stream)
    /// is closed after this.
    pub keepalive_timeout: Duration,
    /// A request body that stops arriving for this long ends the request with 408.
    pub body_timeout: Duration,
    /// A response that makes no progress for this long is cut: the client reads nothing,
    /// or the target sends nothing (nginx's `send_timeout` and `proxy_read_timeout`).
    pub send_timeout: Duration,
    /// A WebSocket or other tunnel with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// HTTP/2 PINGs go out this often on a connection; one unanswered for as long closes it.
    pub http2_ping_interval: Duration,
    /// Open client connections, in all and from one address (0: no limit).
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    /// Requests in progress, in all and from one address (0: no limit).
    pub max_requests: u32,
    pub max_requests_per_client: u32,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            http2_ping_interval: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_requests: 10_000,
            max_requests_per_client: 1_000,
        }
    }
}
