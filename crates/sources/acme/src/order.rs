//! One ACME order: authorizations answered with the chosen challenge, the order finalized
//! with a fresh key, the chain downloaded. Every challenge presented is withdrawn when the
//! order ends, whatever the outcome.

use std::path::Path;
use std::time::Duration;

use gatehouse_model::acme::{AlpnAnswer, ChallengeKind, Challenges};
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};

/// Polling of the order while the CA validates: quick at first (Pebble and Let's Encrypt
/// usually validate within a second), bounded overall.
const POLL: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(100)).backoff(1.5).timeout(Duration::from_secs(90));
/// A DNS hook that does not return within this is killed and the order fails.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// How challenges are put where the CA looks.
pub(crate) struct Presenter<'a> {
    pub kind: ChallengeKind,
    pub challenges: &'a Challenges,
    pub dns_hook: Option<&'a Path>,
    /// Where DNS-01 records are looked for before validation (the system's resolver if unset).
    pub dns_resolver: Option<std::net::SocketAddr>,
}

/// A challenge put in place, to withdraw.
enum Presented {
    Http { host: String, token: String },
    TlsAlpn { host: String },
    Dns { name: String, value: String },
}

/// Obtains a certificate for `names` (`*.` names need DNS-01). Returns the PEM chain and the
/// PEM key generated for it.
pub(crate) async fn obtain(
    account: &Account,
    names: &[String],
    how: &Presenter<'_>,
) -> Result<(String, String), String> {
    if how.kind != ChallengeKind::Dns01 {
        if let Some(wildcard) = names.iter().find(|n| n.starts_with("*.")) {
            return Err(format!("{wildcard}: wildcard names can only be validated with dns-01 (set [acme] challenge = \"dns-01\" and dns_hook)"));
        }
    }
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| format!("new order: {e}"))?;
    tracing::info!(names = ?names, order = order.url(), "ACME order created");
    let mut presented = Vec::new();
    let validated = validate(&mut order, how, &mut presented).await;
    for done in presented {
        how.withdraw(done).await;
    }
    validated?;
    let key = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
    let chain = order.poll_certificate(&POLL).await.map_err(|e| format!("certificate: {e}"))?;
    tracing::info!(names = ?names, "ACME certificate issued");
    Ok((chain, key))
}

/// Answers every pending authorization and waits until the order is ready.
async fn validate(
    order: &mut instant_acme::Order,
    how: &Presenter<'_>,
    presented: &mut Vec<Presented>,
) -> Result<(), String> {
    let wanted = match how.kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
        let identifier = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("{identifier}: the authorization is {other:?}")),
        }
        let mut challenge = authorization
            .challenge(wanted.clone())
            .ok_or_else(|| format!("{identifier}: the CA does not offer {:?}", how.kind))?;
        let key_authorization = challenge.key_authorization();
        let host = identifier.trim_start_matches("*.").to_string();
        let done = match how.kind {
            ChallengeKind::Http01 => {
                how.challenges.present_http(&host, &challenge.token, key_authorization.as_str());
                Presented::Http { host, token: challenge.token.clone() }
            }
            ChallengeKind::TlsAlpn01 => {
                how.challenges.present_tls_alpn(&host, alpn_answer(&host, key_authorization.digest().as_ref())?);
                Presented::TlsAlpn { host }
            }
            ChallengeKind::Dns01 => {
                let name = format!("_acme-challenge.{host}");
                let value = key_authorization.dns_value();
                how.run_hook("present", &name, &value).await?;
                presented.push(Presented::Dns { name: name.clone(), value: value.clone() });
                let resolver = crate::propagation::resolver(how.dns_resolver)?;
                crate::propagation::wait_for_txt(&resolver, &name, &value).await?;
                tracing::info!(name, "DNS-01 record visible");
                challenge.set_ready().await.map_err(|e| format!("{identifier}: {e}"))?;
                continue;
            }
        };
        presented.push(done);
        tracing::info!(identifier, kind = ?how.kind, "ACME challenge presented");
        challenge.set_ready().await.map_err(|e| format!("{identifier}: {e}"))?;
    }
    match order.poll_ready(&POLL).await.map_err(|e| format!("validation: {e}"))? {
        OrderStatus::Ready => Ok(()),
        status => Err(why_invalid(order, status).await),
    }
}

/// What the CA said about the failed authorizations.
async fn why_invalid(order: &mut instant_acme::Order, status: OrderStatus) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(error) = &challenge.error {
                reasons.push(format!("{}: {error}", authorization.identifier()));
            }
        }
    }
    if reasons.is_empty() {
        format!("the order is {status:?}")
    } else {
        format!("validation failed: {}", reasons.join("; "))
    }
}

/// The RFC 8737 certificate: self-signed for `host`, with the key authorization's digest in
/// the critical acmeIdentifier extension.
fn alpn_answer(host: &str, digest: &[u8]) -> Result<AlpnAnswer, String> {
    let fail = |e: rcgen::Error| format!("{host}: cannot make the TLS-ALPN-01 certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let certificate = params.self_signed(&key).map_err(fail)?;
    Ok(AlpnAnswer { certificate: certificate.der().to_vec(), key: key.serialize_der() })
}

impl Presenter<'_> {
    async fn withdraw(&self, done: Presented) {
        match done {
            Presented::Http { host, token } => self.challenges.clear_http(&host, &token),
            Presented::TlsAlpn { host } => self.challenges.clear_tls_alpn(&host),
            Presented::Dns { name, value } => {
                if let Err(e) = self.run_hook("cleanup", &name, &value).await {
                    tracing::warn!(name, error = %e, "the DNS hook could not remove the challenge record");
                }
            }
        }
    }

    /// `HOOK present|cleanup NAME VALUE`; the hook's exit status decides.
    async fn run_hook(&self, action: &str, name: &str, value: &str) -> Result<(), String> {
        let hook = self.dns_hook.ok_or("dns-01 needs [acme] dns_hook, a command that sets TXT records")?;
        let mut command = tokio::process::Command::new(hook);
        command.args([action, name, value]).kill_on_drop(true).stdin(std::process::Stdio::null());
        let run = tokio::time::timeout(HOOK_TIMEOUT, command.output()).await;
        let output = run
            .map_err(|_| format!("{}: did not finish within {}s", hook.display(), HOOK_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{}: cannot run: {e}", hook.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            let said = String::from_utf8_lossy(&output.stderr);
            Err(format!("{} {action} {name}: {}: {}", hook.display(), output.status, said.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let answer = alpn_answer("a.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&answer.certificate).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31
        let ext = cert.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").unwrap();
        assert!(ext.critical);
        assert!(ext.value.ends_with(&digest), "an OCTET STRING holding the digest");
        let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(names, 1);
    }

    #[tokio::test]
    async fn a_failing_hook_says_what_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, "#!/bin/sh\necho \"no zone for $2\" >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let challenges = Challenges::default();
        let how = Presenter {
            kind: ChallengeKind::Dns01,
            challenges: &challenges,
            dns_hook: Some(&hook),
            dns_resolver: None,
        };
        let err = how.run_hook("present", "_acme-challenge.a.test", "v").await.unwrap_err();
        assert!(err.contains("no zone for _acme-challenge.a.test") && err.contains("exit status: 3"), "{err}");
        let none =
            Presenter { kind: ChallengeKind::Dns01, challenges: &challenges, dns_hook: None, dns_resolver: None };
        assert!(none.run_hook("present", "n", "v").await.unwrap_err().contains("dns_hook"));
    }
}
