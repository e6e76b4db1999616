//! Host names to addresses for the runtime APIs. Answers are cached; when a lookup fails the
//! last answer is used, so a DNS outage never takes a live server away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<String, IpAddr>>,
}

/// What a lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Fresh(IpAddr),
    /// The lookup failed; this is the last address it gave.
    Stale(IpAddr, String),
    /// The lookup failed and there is no earlier answer.
    Unknown(String),
}

impl Resolved {
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Resolved::Fresh(ip) | Resolved::Stale(ip, _) => Some(*ip),
            Resolved::Unknown(_) => None,
        }
    }
}

impl Resolver {
    /// An IP literal as is; a name through the system resolver, bounded by `timeout`.
    pub async fn resolve(&self, host: &str, timeout: Duration) -> Resolved {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Resolved::Fresh(ip);
        }
        let looked_up = tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await;
        let error = match looked_up {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(addr) => {
                    self.lock().insert(host.to_string(), addr.ip());
                    return Resolved::Fresh(addr.ip());
                }
                None => "no address".to_string(),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        match self.lock().get(host) {
            Some(ip) => Resolved::Stale(*ip, error),
            None => Resolved::Unknown(error),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, IpAddr>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_names_and_failures() {
        let r = Resolver::default();
        let t = Duration::from_secs(2);
        assert_eq!(r.resolve("10.0.0.1", t).await, Resolved::Fresh("10.0.0.1".parse().unwrap()));
        assert_eq!(r.resolve("::1", t).await.address(), Some("::1".parse().unwrap()));
        assert!(matches!(r.resolve("localhost", t).await, Resolved::Fresh(ip) if ip.is_loopback()));
        assert!(matches!(r.resolve("no-such-host.invalid", t).await, Resolved::Unknown(_)));
        // A name that resolved once keeps its address when lookups fail.
        r.lock().insert("gone.invalid".into(), "10.0.0.7".parse().unwrap());
        assert!(matches!(r.resolve("gone.invalid", t).await, Resolved::Stale(ip, _) if ip.to_string() == "10.0.0.7"));
    }
}
