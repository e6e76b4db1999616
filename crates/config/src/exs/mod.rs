//! Gatehouse's Elixir config (`config.exs`, as HostKit renders it and people write it),
//! read as data and never evaluated: [`syntax`] reads the subset, [`convert`] maps its
//! directives onto the TOML file's keys, and the TOML reader does the rest. Errors point
//! into the `.exs` file.

mod convert;
mod syntax;

use std::path::Path;

use crate::diagnostic::{ConfigError, Diagnostic};

/// The TOML equivalent of an `.exs` config, and where each of its lines came from.
pub(crate) struct Translated {
    pub toml: String,
    origins: Vec<usize>,
}

/// Reads `.exs` text into TOML text.
pub(crate) fn translate(text: &str, origin: &Path) -> Result<Translated, ConfigError> {
    let located =
        |e: syntax::SyntaxError| ConfigError::Invalid(vec![Diagnostic::at(origin, text, Some(e.span), e.message)]);
    let calls = syntax::parse(text).map_err(located)?;
    let converted = convert::convert(&calls).map_err(located)?;
    Ok(Translated { toml: converted.toml, origins: converted.origins })
}

impl Translated {
    /// Points diagnostics about the TOML text at the `.exs` text they came from.
    pub fn relocate(&self, found: Vec<Diagnostic>, exs: &str, origin: &Path) -> Vec<Diagnostic> {
        found
            .into_iter()
            .map(|d| {
                let at = self.origins.get(d.line.saturating_sub(1)).copied();
                Diagnostic { message: d.message, ..Diagnostic::at(origin, exs, at.map(|a| a..a + 1), "") }
            })
            .collect()
    }
}

/// Whether `path` names an `.exs` file.
pub(crate) fn is_exs(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "exs")
}

#[cfg(test)]
mod tests {
    use crate::drove::Environment;
    use gatehouse_model::{HostPattern, TlsCertificate};
    use std::path::Path;

    fn load(text: &str) -> Result<crate::Config, String> {
        let env =
            Environment { controllers: None, username: None, password: None, cluster_name: None, leader_vhost: None };
        crate::parse_with_environment(text, Path::new("/etc/gatehouse/config.exs"), &env).map_err(|e| e.to_string())
    }

    /// HostKit's rendering, as in research/gatehouse-config.md.
    const HOSTKIT: &str = r#"import Gatehouse.Config
state("/var/lib/gatehouse/state.etf")
http(port: 18080)
service(:shop) do
  host("shop.example.org")
  target(:main, "http://127.0.0.1:4100", active: true)
  balance(:round_robin, [])
  health("/healthz", timeout: 5000)
  drain(30000)
  tls(:auto)
end
service(:edge_web_shop_example_org_0) do
  host("www.shop.example.org")
  target(:main, "http://127.0.0.1:4000", active: true)
end
"#;

    /// The hand-written form from Gatehouse's README.
    const HAND_WRITTEN: &str = r#"import Gatehouse.Config

state "/var/lib/gatehouse/state.etf"
acme email: "ops@example.org",
  directory_url: :lets_encrypt_staging,
  cert_directory: "/var/lib/gatehouse/certs"
http port: 80
https port: 443

service :blog do
  host "Blog.Example.ORG"
  host "www.blog.example.org"

  target :blue, "http://127.0.0.1:4000", active: true
  target :green, "http://127.0.0.1:4001"

  balance :round_robin
  health "/up", timeout: 5_000, interval: 1_000
  drain 30_000
  tls :auto
end
"#;

    #[test]
    fn hostkits_rendering_loads_and_routes() {
        let mut text = HOSTKIT.to_string();
        // tls(:auto) needs an HTTPS listener.
        text.push_str("https(port: 18443)\n");
        let config = load(&text).unwrap();
        assert_eq!(
            config.deploy_state,
            Path::new("/var/lib/gatehouse/state.json"),
            "beside the Elixir state, not over it"
        );
        let addresses: Vec<String> = config.listeners.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addresses, ["0.0.0.0:18080", "0.0.0.0:18443"]);
        let shop = &config.services[0];
        assert_eq!(
            (shop.name.as_str(), &shop.hosts[..]),
            ("shop", &[HostPattern::Exact("shop.example.org".into())][..])
        );
        assert_eq!(shop.targets[0].port, 4100);
        let check = shop.health_check.as_ref().unwrap();
        assert_eq!((check.path.as_str(), check.timeout.as_millis()), ("/healthz", 5000));
        assert_eq!(shop.tls.as_ref().map(|t| &t.certificate), Some(&TlsCertificate::Acme { staging: false }));
        assert_eq!(config.services[1].name, "edge_web_shop_example_org_0");
    }

    #[test]
    fn the_hand_written_form_loads_the_same_way() {
        let config = load(HAND_WRITTEN).unwrap();
        let blog = &config.services[0];
        let hosts: Vec<String> = blog.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["blog.example.org", "www.blog.example.org"], "trimmed and lower-cased");
        assert_eq!(blog.targets.len(), 1, "round robin over the active targets only");
        assert_eq!(blog.targets[0].port, 4000);
        assert_eq!(config.acme.directory, gatehouse_model::acme::LETS_ENCRYPT_STAGING);
        assert_eq!(config.acme.contact, ["mailto:ops@example.org"]);
        assert_eq!(config.acme.storage, Path::new("/var/lib/gatehouse/certs"));
        assert!(config.listeners[1].tls);
    }

    #[test]
    fn directives_come_in_any_order() {
        let text = "acme email: \"a@b.test\"\nadmin port: 0, token: \"t\"\nstate \"/srv/s.etf\"\nhttp port: 8080\n";
        let config = load(text).unwrap();
        assert_eq!(config.admin.address.port(), 0);
        assert!(config.admin.token.is_some());
        assert_eq!(config.deploy_state, Path::new("/srv/s.json"));
        assert_eq!(config.acme.contact, ["mailto:a@b.test"]);
    }

    #[test]
    fn what_is_not_supported_is_named_at_its_place() {
        for (text, says) in [
            ("def run, do: System.cmd(\"rm\", [])\n", "1:1: `def` is not supported"),
            ("service :a do\n  host \"#{System.get_env(\"H\")}\"\nend\n", "2:9: string interpolation"),
            ("import Gatehouse.Config\nproxy :edge do\nend\n", "2:1: `proxy` is not a Gatehouse directive"),
            ("service :a do\n  host \"a.test\"\n  target :main, safe_rpc: [socket: \"/run/x.sock\"], active: true\nend\n", "3:27: SafeRPC targets are not supported"),
            ("service :a do\n  host \"a.test\"\n  target :main, to: endpoint(:svc, :http)\nend\n", "3:21: `to: endpoint(...)`"),
            ("http port: 80, backlog: 5\n", "1:25: `http` has no option `backlog`"),
            ("acme renew_before_days: 30\n", "1:25: `renew_before_days`"),
            ("service :a do\n  host \"a.test\"\n  target :m, \"http://127.0.0.1:1\"\n  service :b do\n  end\nend\n", "4:3: `service` takes no `do` block"),
            ("service :a do\n  host \"a b\"\n  target :m, \"http://127.0.0.1:1\"\nend\n", "2:8: host `a b` has a character"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(&format!("/etc/gatehouse/config.exs:{says}")), "{text:?}:\n{err}");
        }
    }
}
