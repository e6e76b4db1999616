//! The HTTP client the ACME account talks to its CA through: instant-acme's own (hyper and
//! rustls; the CA's root from `ca_root`, else the system's), which also remembers the
//! `Retry-After` a CA sends with a rate-limit (429) or unavailable (503) answer, so that the
//! next order waits at least that long.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

type Hyper = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<bytes::Bytes>>;

/// When the CA last asked to be left alone until, if it did.
pub(crate) type CaAsked = Arc<Mutex<Option<SystemTime>>>;

pub(crate) struct CaClient {
    hyper: Hyper,
    asked: CaAsked,
}

impl CaClient {
    /// A client trusting `root` (a PEM file) only, or the system's roots.
    pub(crate) fn new(root: Option<&Path>, asked: CaAsked) -> Result<Self, String> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match root {
            Some(path) => {
                let der = CertificateDer::from_pem_file(path)
                    .map_err(|e| format!("cannot read the CA root {}: {e}", path.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                roots.add(der).map_err(|e| format!("the CA root {}: {e}", path.display()))?;
                builder.with_tls_config(
                    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
                )
            }
            None => builder.try_with_platform_verifier().map_err(|e| format!("the system's CA roots: {e}"))?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(CaClient { hyper: Client::builder(TokioExecutor::new()).build(connector), asked })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = HttpClient::request(&self.hyper, req);
        let asked = self.asked.clone();
        Box::pin(async move {
            let response = sent.await?;
            let status = response.parts.status;
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                let header = response.parts.headers.get(http::header::RETRY_AFTER);
                if let Some(until) =
                    header.and_then(|v| v.to_str().ok()).and_then(|v| retry_after(v, SystemTime::now()))
                {
                    tracing::warn!(status = status.as_u16(), retry_after = ?until.duration_since(SystemTime::now()).unwrap_or_default(), "the CA asks to wait before the next request");
                    *asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
                }
            }
            Ok(response)
        })
    }
}

/// The moment a `Retry-After` value (seconds, or an HTTP date) names, at most a day away.
pub(crate) fn retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    const LONGEST: Duration = Duration::from_secs(86_400);
    let value = value.trim();
    let until = match value.parse::<u64>() {
        Ok(seconds) => now + Duration::from_secs(seconds).min(LONGEST),
        Err(_) => httpdate::parse_http_date(value).ok()?,
    };
    Some(until.min(now + LONGEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_within_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(" 120 ", now), Some(now + Duration::from_secs(120)));
        assert_eq!(retry_after("9999999", now), Some(now + Duration::from_secs(86_400)), "capped at a day");
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        assert_eq!(retry_after(&date, now), Some(now + Duration::from_secs(3600)));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
