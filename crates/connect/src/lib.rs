//! Connections to targets, shared by the proxy and the health checks: TCP, Unix sockets,
//! and TLS with the system's trust store (or, for targets that opt out, any certificate).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use gatehouse_model::{Scheme, TargetSpec};
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

/// A connection to a target, plain or TLS.
pub type BoxedIo = Box<dyn Io>;
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {
    /// Makes the close a reset, for an exchange given up half way: the target learns at
    /// once that its request is void, and no TIME_WAIT stays behind here (a client that
    /// makes the proxy give up exchanges quickly cannot use up its ports to a target).
    fn reset_on_close(&self);
}

impl Io for TcpStream {
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// A Unix socket leaves nothing behind when it closes.
impl Io for UnixStream {
    fn reset_on_close(&self) {}
}

/// Connects to `target`: TCP, then TLS for `https://` targets (their certificate checked
/// against the system's trust store when `verify`; ALPN `h2` when `http2`, else `http/1.1`).
/// No timeout: the caller bounds it.
pub async fn open(target: &TargetSpec, verify: bool, http2: bool) -> std::io::Result<BoxedIo> {
    if target.scheme == Scheme::Unix {
        return Ok(Box::new(UnixStream::connect(&target.host).await?));
    }
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    match target.scheme {
        Scheme::Http | Scheme::Unix => Ok(Box::new(tcp)),
        Scheme::Https => {
            let server_name = match target.host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(target.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            };
            let tls = TlsConnector::from(client_config(verify, http2)).connect(server_name, tcp).await?;
            Ok(Box::new(tls))
        }
    }
}

/// One rustls client configuration per (verify, ALPN) pair, built once.
fn client_config(verify: bool, http2: bool) -> Arc<rustls::ClientConfig> {
    static CONFIGS: OnceLock<[Arc<rustls::ClientConfig>; 4]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let build = |verify: bool, http2: bool| {
            let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
            if !verify {
                return Arc::new(unverified_client(alpn));
            }
            let mut config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(native_roots())
                    .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        [build(true, false), build(true, true), build(false, false), build(false, true)]
    });
    configs[usize::from(!verify) * 2 + usize::from(http2)].clone()
}

/// A client configuration offering `alpn` that accepts any certificate (the handshake's
/// signatures are still checked): for targets with `tls_verify = false`, and for the bench
/// tools, which only talk to proxies on this machine.
pub fn unverified_client(alpn: &[u8]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
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
