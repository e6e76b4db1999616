//! HAProxy-style thresholds (pure) and one HTTP check against a target (I/O).

use std::time::Duration;

use bytes::Bytes;
use gatehouse_model::{HealthCheck, TargetSpec};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// A target's health as consecutive results move it: `rise` passes in a row make it up,
/// `fall` failures in a row take it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    up: bool,
    streak: u32,
}

impl Counter {
    /// A target not yet checked: down until it passes (new deploys start here).
    pub fn down() -> Self {
        Counter { up: false, streak: 0 }
    }

    /// A target assumed healthy (restored from the state file, or just through the gate).
    pub fn up() -> Self {
        Counter { up: true, streak: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Counts one result; returns the new state when it flipped.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed.max(1) {
            self.up = passed;
            self.streak = 0;
            return Some(self.up);
        }
        None
    }
}

/// How to check one target.
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    pub port: Option<u16>,
    pub timeout: Duration,
    /// The Host header; the target's address when unset.
    pub host: Option<String>,
    /// Check `https://` targets' certificates against the system's trust store.
    pub verify: bool,
}

impl From<&HealthCheck> for Probe {
    fn from(check: &HealthCheck) -> Self {
        Probe {
            path: check.path.clone(),
            port: check.port,
            timeout: check.timeout,
            host: check.host.clone(),
            verify: true,
        }
    }
}

/// One GET of the health path: `Ok` for a 2xx within the timeout (redirects are not
/// followed: a 3xx is a failure, as kamal-proxy's users learnt from redirect loops).
pub async fn check(target: &TargetSpec, probe: &Probe) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, check_unbounded(target, probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
    }
}

async fn check_unbounded(target: &TargetSpec, probe: &Probe) -> Result<(), String> {
    let port = probe.port.unwrap_or(target.port);
    let checked = TargetSpec { port, ..target.clone() };
    let io = gatehouse_connect::open(&checked, probe.verify, false).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(probe.path.as_str())
        .header(
            http::header::HOST,
            probe.host.clone().unwrap_or_else(|| gatehouse_model::host_port(&target.host, port)),
        )
        .header(http::header::USER_AGENT, "gatehouse-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = sender.send_request(request).await.map_err(|e| e.to_string());
    connection.abort();
    let status = result?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut c = Counter::down();
        assert_eq!(c.observe(true, 2, 3), None);
        assert_eq!(c.observe(false, 2, 3), None, "a failure resets the rise streak");
        assert_eq!(c.observe(true, 2, 3), None);
        assert_eq!(c.observe(true, 2, 3), Some(true));
        assert!(c.is_up());
        assert_eq!(c.observe(false, 2, 3), None);
        assert_eq!(c.observe(false, 2, 3), None);
        assert_eq!(c.observe(true, 2, 3), None, "a pass resets the fall streak");
        for _ in 0..2 {
            assert_eq!(c.observe(false, 2, 3), None);
        }
        assert_eq!(c.observe(false, 2, 3), Some(false));
        assert_eq!(Counter::down().observe(true, 1, 1), Some(true), "rise 1: one pass is enough");
    }

    #[tokio::test]
    async fn refused_connection_fails_with_the_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = TargetSpec::parse_url(&format!("127.0.0.1:{port}"), true).unwrap();
        let probe = Probe { path: "/up".into(), port: None, timeout: Duration::from_secs(2), host: None, verify: true };
        let err = check(&target, &probe).await.unwrap_err();
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
