//! An issued certificate: its PEM, what it covers and when, and its stored form.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Version of the stored form.
const VERSION: u32 = 1;

/// A certificate and key the CA issued for a service's names.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub names: Vec<String>,
    /// PEM: the leaf first, then the intermediates.
    pub chain: String,
    /// PEM private key.
    pub key: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, for people.
    pub issuer: String,
    /// The directory of the CA that issued it.
    pub directory: String,
    /// The leaf in DER, for the CA's renewal information.
    pub leaf: Vec<u8>,
}

// The key is a secret: never printed.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    directory: String,
    names: Vec<String>,
    certificate: String,
    key: String,
}

impl Issued {
    /// Reads the leaf of `chain` for its validity and issuer.
    pub fn new(names: Vec<String>, chain: String, key: String, directory: String) -> Result<Self, String> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(chain.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?;
        let leaf = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let validity = leaf.validity();
        let time = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let (not_before, not_after) = (time(validity.not_before.timestamp()), time(validity.not_after.timestamp()));
        let issuer = leaf.issuer().to_string();
        Ok(Issued { names, not_before, not_after, issuer, directory, leaf: pem.contents.clone(), chain, key })
    }

    /// Whether this certificate can serve `names` for the CA at `directory` (a change of CA,
    /// staging to production say, gets a new one).
    pub fn covers(&self, names: &[String], directory: &str) -> bool {
        self.directory == directory && names.iter().all(|n| self.names.contains(n))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            version: VERSION,
            directory: self.directory.clone(),
            names: self.names.clone(),
            certificate: self.chain.clone(),
            key: self.key.clone(),
        };
        serde_json::to_vec_pretty(&stored).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| format!("unreadable: {e}"))?;
        if stored.version != VERSION {
            return Err(format!("stored in version {}, this build reads {VERSION}", stored.version));
        }
        Issued::new(stored.names, stored.certificate, stored.key, stored.directory)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid 90 days from now.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn stored_form_round_trips_and_checks_what_it_covers() {
        let (chain, key) = self_signed(&["a.test", "b.test"]);
        let names = vec!["a.test".to_string(), "b.test".to_string()];
        let issued = Issued::new(names.clone(), chain, key, "https://ca.test/dir".into()).unwrap();
        assert!(issued.not_after > issued.not_before);
        let back = Issued::from_bytes(&issued.to_bytes()).unwrap();
        assert_eq!(back, issued);
        assert!(issued.covers(&names[..1], "https://ca.test/dir"));
        assert!(!issued.covers(&["c.test".to_string()], "https://ca.test/dir"), "a new name");
        assert!(!issued.covers(&names, "https://other.test/dir"), "another CA");
        assert!(!format!("{issued:?}").contains("PRIVATE"), "the key is never printed");
        assert!(Issued::from_bytes(b"{\"version\": 2}").is_err());
        assert!(Issued::from_bytes(b"garbage").unwrap_err().contains("unreadable"));
    }
}
