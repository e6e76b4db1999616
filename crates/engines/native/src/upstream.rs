//! Connections to targets. Each worker thread keeps its own pools (no locks on the request
//! path): idle HTTP/1 connections per target, and one shared HTTP/2 connection per target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gatehouse_model::{Scheme, TargetSpec};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::RequestBody;
use crate::h1;

/// Idle connections kept per target and worker; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 256;

struct Idle {
    conn: h1::Connection,
    since: Instant,
}

thread_local! {
    static IDLE_H1: RefCell<HashMap<Arc<str>, Vec<Idle>>> = RefCell::new(HashMap::new());
    static SHARED_H2: RefCell<HashMap<Arc<str>, http2::SendRequest<RequestBody>>> = RefCell::new(HashMap::new());
}

/// The most recently used idle HTTP/1 connection to `key` that the target has not closed
/// and that is younger than `max_idle`.
pub(crate) fn check_out(key: &str, max_idle: Duration) -> Option<h1::Connection> {
    IDLE_H1.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(key)?;
        while let Some(mut idle) = idle.pop() {
            if idle.since.elapsed() < max_idle && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to its end.
pub(crate) fn check_in(key: Arc<str>, conn: h1::Connection) {
    IDLE_H1.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(Idle { conn, since: Instant::now() });
        }
    });
}

/// Drops idle connections older than `max_idle`, and those the target closed, from this
/// thread's pool.
pub(crate) fn sweep(max_idle: Duration) {
    IDLE_H1.with(|pool| {
        pool.borrow_mut().retain(|_, idle| {
            idle.retain_mut(|c| c.since.elapsed() < max_idle && c.conn.is_usable());
            !idle.is_empty()
        })
    });
    SHARED_H2.with(|pool| pool.borrow_mut().retain(|_, s| !s.is_closed()));
}

pub(crate) fn shared_h2(key: &str) -> Option<http2::SendRequest<RequestBody>> {
    SHARED_H2.with(|pool| pool.borrow().get(key).filter(|s| !s.is_closed()).cloned())
}

pub(crate) fn share_h2(key: Arc<str>, sender: http2::SendRequest<RequestBody>) {
    SHARED_H2.with(|pool| pool.borrow_mut().insert(key, sender));
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {target}: timed out")]
    Timeout { target: String },
    #[error("connecting to {target}: {source}")]
    Io { target: String, source: std::io::Error },
    #[error("HTTP handshake with {target}: {source}")]
    Handshake { target: String, source: hyper::Error },
}

pub(crate) struct ConnectOptions {
    pub timeout: Duration,
    pub http2: bool,
    pub verify: bool,
}

/// Opens an HTTP/1 connection to `target` (TLS included) within the connect timeout.
pub(crate) async fn connect_h1(target: &TargetSpec, opts: &ConnectOptions) -> Result<h1::Connection, ConnectError> {
    Ok(h1::Connection::new(open_within(target, opts).await?))
}

/// Opens an HTTP/2 connection to `target` (TLS included) within the connect timeout.
pub(crate) async fn connect_h2(
    target: &TargetSpec,
    opts: &ConnectOptions,
) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
    let io = open_within(target, opts).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { target: target.url(), source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

async fn open_within(target: &TargetSpec, opts: &ConnectOptions) -> Result<BoxedIo, ConnectError> {
    match tokio::time::timeout(opts.timeout, open(target, opts)).await {
        Err(_) => Err(ConnectError::Timeout { target: target.url() }),
        Ok(Err(source)) => Err(ConnectError::Io { target: target.url(), source }),
        Ok(Ok(io)) => Ok(io),
    }
}

/// A connection to a target, plain or TLS.
pub(crate) type BoxedIo = Box<dyn Io>;
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn open(target: &TargetSpec, opts: &ConnectOptions) -> std::io::Result<BoxedIo> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    match target.scheme {
        Scheme::Http => Ok(Box::new(tcp)),
        Scheme::Https => {
            let server_name = match target.host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(target.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            };
            let tls = TlsConnector::from(client_config(opts.verify, opts.http2)).connect(server_name, tcp).await?;
            Ok(Box::new(tls))
        }
    }
}

/// One rustls client configuration per (verify, ALPN) pair, built once.
fn client_config(verify: bool, http2: bool) -> Arc<rustls::ClientConfig> {
    static CONFIGS: OnceLock<[Arc<rustls::ClientConfig>; 4]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let build = |verify: bool, http2: bool| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions");
            let mut config = if verify {
                builder.with_root_certificates(native_roots()).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                    .with_no_client_auth()
            };
            config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            Arc::new(config)
        };
        [build(true, false), build(true, true), build(false, false), build(false, true)]
    });
    configs[usize::from(!verify) * 2 + usize::from(http2)].clone()
}

/// The system's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not load part of the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "loaded trust anchors for https targets");
    roots
}

/// For services with `tls_verify = false`: the handshake still checks signatures, but any
/// certificate is accepted.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
