//! Automatic certificates: what the ACME source is told (its settings) and the one thing it
//! shares with the engines, the challenges it is answering right now.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

/// Let's Encrypt's production directory: the default, so that a certificate browsers trust
/// is what a first deploy gets (staging is one key away).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the CA is shown that we hold a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A file under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// A self-signed certificate offered to ALPN `acme-tls/1` on port 443.
    TlsAlpn01,
    /// A TXT record under `_acme-challenge.`, set by a hook command (needed for wildcards).
    Dns01,
}

impl ChallengeKind {
    const ALL: [ChallengeKind; 3] = [Self::Http01, Self::TlsAlpn01, Self::Dns01];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The name RFC 8555 and RFC 8737 give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }
}

/// External account binding (ZeroSSL, some private CAs).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExternalAccount {
    pub key_id: String,
    /// base64url HMAC key: a secret, never shown.
    #[serde(skip)]
    pub mac_key: String,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl serde::Serialize for ChallengeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The `[acme]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    /// `mailto:` addresses given to the CA for expiry notices.
    pub contact: Vec<String>,
    pub external_account: Option<ExternalAccount>,
    /// A PEM root that signs the CA's own HTTPS certificate (a private CA, Pebble), trusted
    /// instead of the system's roots for this CA.
    pub ca_root: Option<PathBuf>,
    pub challenge: ChallengeKind,
    /// Run as `HOOK present|cleanup NAME VALUE` for DNS-01.
    pub dns_hook: Option<PathBuf>,
    /// The DNS server asked whether a DNS-01 record is visible yet (the system's resolver
    /// when unset); the CA validates only once it is.
    pub dns_resolver: Option<std::net::SocketAddr>,
    /// Where the account, certificates and keys are kept.
    pub storage: PathBuf,
    /// Certificates obtained during the first handshake for names no service lists.
    pub on_demand: Option<OnDemandSettings>,
}

/// On-demand TLS (as Caddy's): a handshake for an unknown name waits while a certificate is
/// obtained, if the `ask` URL answers 2xx to `GET ask?domain=NAME` and the rate allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OnDemandSettings {
    /// `http://host:port/path` of the platform's own check.
    pub ask: String,
    /// New names ordered per minute, at most.
    pub per_minute: u32,
}

impl OnDemandSettings {
    /// The `ask` URL as the target to connect to and the path to ask.
    pub fn ask_target(&self) -> Result<(crate::TargetSpec, String), String> {
        let url = &self.ask;
        let uri: http::Uri = url.parse().map_err(|_| format!("the ask URL `{url}` is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("the ask URL `{url}` needs http:// or https:// and a host"));
        };
        let target = crate::TargetSpec::parse_url(&format!("{scheme}://{authority}"), false)?;
        Ok((target, uri.path().to_string()))
    }
}

impl AcmeSettings {
    pub fn new(storage: PathBuf) -> Self {
        AcmeSettings {
            directory: LETS_ENCRYPT.to_string(),
            contact: Vec::new(),
            external_account: None,
            ca_root: None,
            challenge: ChallengeKind::Http01,
            dns_hook: None,
            dns_resolver: None,
            storage,
            on_demand: None,
        }
    }
}

/// A TLS-ALPN-01 answer (RFC 8737): a self-signed certificate for one name, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlpnAnswer {
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
}

/// The challenges being validated now. The ACME source adds one when it asks the CA to
/// validate and removes it when the authorization ends; the engines answer only what is
/// here, so a token from an ended order, or for another name, gets nothing.
#[derive(Debug, Default)]
pub struct Challenges {
    /// (lowercase host, token) -> key authorization.
    http: RwLock<HashMap<(String, String), String>>,
    /// Lowercase host -> the certificate that proves it.
    tls_alpn: RwLock<HashMap<String, Arc<AlpnAnswer>>>,
}

impl Challenges {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The body to answer `GET /.well-known/acme-challenge/TOKEN` on `host` with.
    pub fn http_answer(&self, host: &str, token: &str) -> Option<String> {
        let http = self.http.read().unwrap_or_else(|e| e.into_inner());
        if http.is_empty() {
            return None;
        }
        http.get(&(host.to_ascii_lowercase(), token.to_string())).cloned()
    }

    pub fn tls_alpn_answer(&self, host: &str) -> Option<Arc<AlpnAnswer>> {
        self.tls_alpn.read().unwrap_or_else(|e| e.into_inner()).get(&host.to_ascii_lowercase()).cloned()
    }

    pub fn present_http(&self, host: &str, token: &str, key_authorization: &str) {
        let mut http = self.http.write().unwrap_or_else(|e| e.into_inner());
        http.insert((host.to_ascii_lowercase(), token.to_string()), key_authorization.to_string());
    }

    pub fn clear_http(&self, host: &str, token: &str) {
        let mut http = self.http.write().unwrap_or_else(|e| e.into_inner());
        http.remove(&(host.to_ascii_lowercase(), token.to_string()));
    }

    pub fn present_tls_alpn(&self, host: &str, answer: AlpnAnswer) {
        let mut tls = self.tls_alpn.write().unwrap_or_else(|e| e.into_inner());
        tls.insert(host.to_ascii_lowercase(), Arc::new(answer));
    }

    pub fn clear_tls_alpn(&self, host: &str) {
        self.tls_alpn.write().unwrap_or_else(|e| e.into_inner()).remove(&host.to_ascii_lowercase());
    }

    /// How many challenges are pending (both kinds).
    pub fn pending(&self) -> usize {
        let http = self.http.read().unwrap_or_else(|e| e.into_inner()).len();
        http + self.tls_alpn.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A handshake's request for a certificate for a name nothing is configured for.
#[derive(Debug)]
pub struct Demand {
    /// Lowercase.
    pub name: String,
    /// Told whether a certificate for the name is now in service.
    pub answer: oneshot::Sender<bool>,
}

/// The way from the engines' handshakes to the ACME source for on-demand certificates. It
/// is bounded: when full (a flood of unknown names), handshakes are refused, not queued.
#[derive(Debug)]
pub struct OnDemand {
    sender: mpsc::Sender<Demand>,
    receiver: Mutex<Option<mpsc::Receiver<Demand>>>,
}

impl OnDemand {
    pub fn new(capacity: usize) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        Arc::new(OnDemand { sender, receiver: Mutex::new(Some(receiver)) })
    }

    /// Asks for a certificate for `name`; true once one is in service.
    pub async fn ask(&self, name: &str) -> bool {
        let (answer, answered) = oneshot::channel();
        if self.sender.try_send(Demand { name: name.to_ascii_lowercase(), answer }).is_err() {
            return false;
        }
        answered.await.unwrap_or(false)
    }

    /// The demands, for the one source that answers them (`None` after the first call).
    pub fn take(&self) -> Option<mpsc::Receiver<Demand>> {
        self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_tokens_for_their_own_host_are_answered() {
        let challenges = Challenges::new();
        assert_eq!(challenges.http_answer("a.test", "t1"), None);
        challenges.present_http("A.test", "t1", "t1.thumb");
        assert_eq!(challenges.http_answer("a.TEST", "t1").as_deref(), Some("t1.thumb"));
        assert_eq!(challenges.http_answer("b.test", "t1"), None, "another name");
        assert_eq!(challenges.http_answer("a.test", "t2"), None, "another token");
        challenges.clear_http("a.test", "t1");
        assert_eq!(challenges.http_answer("a.test", "t1"), None, "an ended order's token");
        challenges.present_tls_alpn("a.test", AlpnAnswer { certificate: vec![1], key: vec![2] });
        assert!(challenges.tls_alpn_answer("A.test").is_some());
        assert_eq!(challenges.pending(), 1);
        challenges.clear_tls_alpn("a.test");
        assert_eq!(challenges.pending(), 0);
    }

    #[test]
    fn challenge_kinds_go_by_their_rfc_names() {
        for name in ["http-01", "tls-alpn-01", "dns-01"] {
            let kind = ChallengeKind::parse(name).unwrap();
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(ChallengeKind::parse("http01"), None);
    }

    #[tokio::test]
    async fn on_demand_asks_are_answered_by_the_taker_and_refused_when_full() {
        let on_demand = OnDemand::new(1);
        let mut demands = on_demand.take().unwrap();
        assert!(on_demand.take().is_none(), "one taker");
        let ask = |name: &'static str| {
            let on_demand = on_demand.clone();
            tokio::spawn(async move { on_demand.ask(name).await })
        };
        let asking = ask("A.test");
        let demand = demands.recv().await.unwrap();
        assert_eq!(demand.name, "a.test");
        demand.answer.send(true).unwrap();
        assert!(asking.await.unwrap());
        let waiting = ask("b.test");
        tokio::task::yield_now().await;
        while on_demand.sender.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(!on_demand.ask("c.test").await, "the queue is full: refused at once");
        drop(demands);
        assert!(!waiting.await.unwrap(), "a demand nobody answers is a refusal");
    }

    #[test]
    fn the_mac_key_is_never_printed() {
        let mut settings = AcmeSettings::new("/var/lib/gatehouse/acme".into());
        settings.external_account = Some(ExternalAccount { key_id: "kid-1".into(), mac_key: "c2VjcmV0".into() });
        for shown in [format!("{settings:?}"), serde_json::to_string(&settings).unwrap()] {
            assert!(shown.contains("kid-1") && !shown.contains("c2VjcmV0"), "{shown}");
        }
    }
}
