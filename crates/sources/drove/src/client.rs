//! HTTP calls to controllers: one connection per call, credentials on every call, redirects
//! never followed, TLS verified, and the whole call bounded by `api_timeout`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use gatehouse_config::{ControllerUrl, Credentials};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::CallError;

/// Replies larger than this are refused (10,000 apps of a few hosts is about 5 MB).
const MAX_REPLY: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct Client {
    authorization: Option<http::HeaderValue>,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    Arc::new(config.unwrap_or_else(|_| unreachable_config()))
}

/// The ring provider supports the default versions; this only satisfies the type.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
}

impl Client {
    pub fn new(credentials: &Credentials, timeout: Duration) -> Self {
        let authorization = match credentials {
            Credentials::None => None,
            Credentials::Basic { user, password } => {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
                http::HeaderValue::from_str(&format!("Basic {token}")).ok()
            }
            Credentials::Header(value) => http::HeaderValue::from_str(value.expose()).ok(),
        }
        .map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Client { authorization, timeout, tls: tls_config() }
    }

    /// GETs `path_and_query` from `controller`; returns the status and the body.
    pub async fn get(&self, controller: &ControllerUrl, path_and_query: &str) -> Result<(u16, Bytes), CallError> {
        tokio::time::timeout(self.timeout, self.get_unbounded(controller, path_and_query))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?
    }

    async fn get_unbounded(&self, controller: &ControllerUrl, path_and_query: &str) -> Result<(u16, Bytes), CallError> {
        let authority = controller.authority();
        let tcp = TcpStream::connect((controller.host.as_str(), controller.port))
            .await
            .map_err(|e| CallError::Connect(format!("{authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut request = http::Request::get(format!("{}{path_and_query}", controller.base_path))
            .header(http::header::HOST, &authority)
            .header(http::header::ACCEPT, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, auth.clone());
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| CallError::Connect(e.to_string()))?;
        let response = if controller.https {
            let name = rustls::pki_types::ServerName::try_from(controller.host.clone())
                .map_err(|e| CallError::Connect(format!("{authority}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| CallError::Connect(format!("{authority}: TLS: {e}")))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| CallError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

async fn send<IO>(
    io: IO,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, CallError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| CallError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(|e| CallError::Body(e.to_string()))
}
