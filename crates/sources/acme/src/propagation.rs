//! DNS-01's propagation check: the TXT record the hook set is looked for until a resolver
//! returns it, so the CA is not asked to validate before DNS can show it.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::time::Instant;

/// How long a record may take to appear, and how often to look.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// A resolver asking `server` (an authoritative server or a resolver), or the system's.
pub(crate) fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut name_server.connections {
                connection.port = addr.port();
            }
            let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => Resolver::builder_tokio().map_err(|e| format!("cannot read the system's DNS settings: {e}"))?,
    };
    // Every look is a fresh question: a cached "no such record" would hide the new one.
    builder.options_mut().cache_size = 0;
    builder.build().map_err(|e| format!("cannot make a DNS resolver: {e}"))
}

/// Waits until `name` has a TXT record holding `value`.
pub(crate) async fn wait_for_txt(resolver: &TokioResolver, name: &str, value: &str) -> Result<(), String> {
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    loop {
        if let Ok(lookup) = resolver.txt_lookup(fqdn.as_str()).await {
            let holds = |data: &RData| match data {
                RData::TXT(txt) => txt.txt_data.iter().any(|part| &part[..] == value.as_bytes()),
                _ => false,
            };
            if lookup.answers().iter().any(|record| holds(&record.data)) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{name}: the TXT record did not appear within {}s", PROPAGATION_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}
