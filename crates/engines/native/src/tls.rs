//! TLS termination: certificates chosen by SNI from their SANs, swapped without touching
//! listeners.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_model::acme::Challenges;
use provider::sign::any_supported_type;

// The crypto behind client connections' TLS: ring by default (no C toolchain beyond cc);
// aws-lc-rs with the `aws-lc-rs` feature, for measuring one against the other (bench/tls.sh).
#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as provider;
#[cfg(not(feature = "aws-lc-rs"))]
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: cannot read certificates: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: cannot read the private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{}: the certificate has no DNS names (subjectAltName) to match SNI against", path.display())]
    NoNames { path: PathBuf },
}

/// The certificates of one listener, indexed for SNI lookup.
#[derive(Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`: matches exactly one label below it.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    names: Vec<String>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").field("names", &self.names).finish()
    }
}

impl Certificates {
    /// Loads PEM `(certificate chain, private key)` pairs. The first pair is the default for
    /// clients that send no SNI or an unknown name; earlier pairs win a name shared by two.
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Self, CertError> {
        let mut out = Certificates::default();
        for (cert_path, key_path) in pairs {
            let (key, names) = load_pair(cert_path, key_path)?;
            out.insert(&key, names, false);
            out.default.get_or_insert(key);
        }
        Ok(out)
    }

    /// Adds a pair whose names take over from the pairs already loaded (a service's own
    /// certificate wins over a listener's for its hosts). The default stays as it is.
    pub fn add_preferred(&mut self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        let (key, names) = load_pair(cert_path, key_path)?;
        self.insert(&key, names, true);
        Ok(())
    }

    /// As [`Certificates::add_preferred`], from PEM text held in memory (ACME's);
    /// `origin` names it in errors.
    pub fn add_preferred_pem(&mut self, chain: &[u8], key: &[u8], origin: &Path) -> Result<(), CertError> {
        let (key, names) = parse_pair(chain, key, origin, origin)?;
        self.insert(&key, names, true);
        Ok(())
    }

    /// Indexes `key` under `names`; a name already indexed keeps its key unless `take_over`.
    fn insert(&mut self, key: &Arc<CertifiedKey>, names: Vec<String>, take_over: bool) {
        for name in names {
            let name = name.to_ascii_lowercase();
            let slot = match name.strip_prefix("*.") {
                Some(base) => self.wildcard.entry(base.to_string()),
                None => self.exact.entry(name.clone()),
            };
            match slot {
                std::collections::hash_map::Entry::Occupied(mut taken) if take_over => {
                    taken.insert(key.clone());
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(key.clone());
                }
            }
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
    }

    /// The DNS names covered, in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|name| self.named(name)).or_else(|| self.default.clone())
    }

    /// The certificate for `name` by its exact name or a wildcard, not the default.
    fn named(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        let (_, base) = name.split_once('.')?;
        self.wildcard.get(base).cloned()
    }

    fn covers(&self, name: &str) -> bool {
        self.named(name).is_some()
    }
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<(Arc<CertifiedKey>, Vec<String>), CertError> {
    let chain = std::fs::read(cert_path)
        .map_err(|e| CertError::Certificate { path: cert_path.to_path_buf(), reason: e.to_string() })?;
    let key =
        std::fs::read(key_path).map_err(|e| CertError::Key { path: key_path.to_path_buf(), reason: e.to_string() })?;
    parse_pair(&chain, &key, cert_path, key_path)
}

fn parse_pair(
    chain: &[u8],
    key: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<CertifiedKey>, Vec<String>), CertError> {
    let cert_err = |reason: String| CertError::Certificate { path: cert_path.to_path_buf(), reason };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain).collect::<Result<_, _>>().map_err(|e| cert_err(e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| cert_err("no PEM certificate in the file".into()))?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| cert_err(format!("not a usable certificate: {e}")))?
        .valid_dns_names()
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(CertError::NoNames { path: cert_path.to_path_buf() });
    }
    let key_err = |reason: String| CertError::Key { path: key_path.to_path_buf(), reason };
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| key_err(e.to_string()))?;
    let signer = any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| key_err(format!("does not belong to {}: {e}", cert_path.display())))?;
    Ok((Arc::new(certified), names))
}

/// A listener's live certificates; [`CertStore::replace`] swaps them for new handshakes.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<Certificates>,
}

impl CertStore {
    pub fn new(certs: Certificates) -> Self {
        CertStore { current: ArcSwap::from_pointee(certs) }
    }

    pub fn replace(&self, certs: Certificates) {
        self.current.store(Arc::new(certs));
    }

    pub fn names(&self) -> Vec<String> {
        self.current.load().names().to_vec()
    }

    /// Whether a certificate covers `name` (not counting the default for unknown names).
    pub fn covers(&self, name: &str) -> bool {
        self.current.load().covers(name)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().find(hello.server_name())
    }
}

/// Makes this build's crypto provider the process default, for the TLS clients that take it
/// from there (the ACME client); a second call changes nothing.
pub fn install_default_provider() {
    let _ = provider::default_provider().install_default();
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Whether a handshake is a CA's TLS-ALPN-01 validation (it offers `acme-tls/1`).
pub(crate) fn validates_acme(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
}

/// A listener's certificates, or a TLS-ALPN-01 answer when a CA validates a name: a
/// handshake offering `acme-tls/1` gets the challenge certificate for its SNI, or nothing.
#[derive(Debug)]
struct Resolver {
    store: Arc<CertStore>,
    challenges: Option<Arc<Challenges>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.challenges {
            if validates_acme(&hello) {
                let answer = challenges.tls_alpn_answer(hello.server_name()?)?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(answer.key.clone()));
                let signer = any_supported_type(&key).ok()?;
                return Some(Arc::new(CertifiedKey::new(
                    vec![CertificateDer::from(answer.certificate.clone())],
                    signer,
                )));
            }
        }
        self.store.resolve(hello)
    }
}

/// The rustls server configuration of a TLS listener (TLS 1.2 and 1.3, safe defaults),
/// offering `alpn` in order: h2 and http/1.1 for the proxy, http/1.1 for the admin API.
/// Sessions kept for TLS 1.2 clients that resume by session id (about 200 bytes each).
const SESSION_CACHE: usize = 20_000;

/// A TLS server configuration choosing certificates from `store`, offering `alpn`. Clients
/// that come back resume their session instead of a full handshake: TLS 1.3 (and 1.2)
/// tickets sealed with keys that rotate every 6 hours, and a bounded session cache for TLS
/// 1.2 clients without tickets. With `challenges`, `acme-tls/1` is offered too and answered
/// from them.
pub fn server_config(
    store: Arc<CertStore>,
    challenges: Option<Arc<Challenges>>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cipher_suites = provider::DEFAULT_CIPHER_SUITES.to_vec();
    cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let crypto = rustls::crypto::CryptoProvider { cipher_suites, ..provider::default_provider() };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(crypto))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store, challenges: challenges.clone() }));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if challenges.is_some() {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.ticketer = provider::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // One ticket per connection (rustls sends two): each costs key derivation and sealing,
    // and a client that resumes needs only one.
    config.send_tls13_tickets = 1;
    // Our order, not the client's: AES-128-GCM with SHA-256 first. OpenSSL clients ask for
    // SHA-384 first, and its key schedule cost about a third of a full handshake's
    // instructions (SHA-512 blocks, no SHA extensions on most CPUs).
    config.ignore_client_order = true;
    Ok(config)
}
