//! A real ACME CA for the tests: Pebble and pebble-challtestsrv from Debian, on loopback
//! ports of their own, with real validation (no PEBBLE_VA_ALWAYS_VALID). challtestsrv is
//! Pebble's DNS: every name resolves to 127.0.0.1, and DNS-01 records are set through its
//! management API. Both stop when the handle drops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::Ca;

pub struct Pebble {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// Trust root of Pebble's own HTTPS (`[acme] ca_root`).
    pub https_root: PathBuf,
    pub management: SocketAddr,
    /// challtestsrv's management API (DNS-01 records).
    pub dns_management: SocketAddr,
    /// challtestsrv's DNS server (Pebble's resolver).
    pub dns: SocketAddr,
}

/// A loopback port free at the time of asking (Pebble must be told where to validate
/// before Gatehouse binds there).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pebble {
    /// Starts the CA validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity` (Pebble's default is 5 years).
    pub fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Self {
        Self::start_with(http_port, tls_port, validity, None)
    }

    /// [`Pebble::start`], requiring external account binding with `(key id, base64url MAC
    /// key)` when given.
    pub fn start_with(http_port: u16, tls_port: u16, validity: Option<Duration>, eab: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let https_root = super::write(dir.path(), "pebble-root.pem", &ca.pem());
        let cert = super::write(dir.path(), "pebble.pem", &leaf.cert_pem);
        let key = super::write(dir.path(), "pebble.key", &leaf.key_pem);
        let (acme, management, dns, dns_management) = (free_port(), free_port(), free_port(), free_port());
        let validity = validity.map_or(String::new(), |v| format!(r#", "certificateValidityPeriod": {}"#, v.as_secs()));
        let binding = match eab {
            Some((kid, key)) => format!(r#"true, "externalAccountMACKeys": {{"{kid}": "{key}"}}"#),
            None => "false".to_string(),
        };
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme}", "managementListenAddress": "127.0.0.1:{management}",
  "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
  "ocspResponderURL": "", "externalAccountBindingRequired": {binding}{validity}}}}}"#,
            cert.display(),
            key.display()
        );
        let config_path = super::write(dir.path(), "pebble.json", &config);
        let mut dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; scripts/test.sh installs it)");
        let dns_management: SocketAddr = format!("127.0.0.1:{dns_management}").parse().unwrap();
        wait_listening(dns_management, &mut dns_server, "pebble-challtestsrv");
        let mut pebble = Command::new("pebble")
            .args(["-config", config_path.to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns}")])
            // Validate at once (Pebble otherwise sleeps up to 15 s), and no random bad nonces.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(dir.path().join("pebble.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble; scripts/test.sh installs it)");
        let acme_addr: SocketAddr = format!("127.0.0.1:{acme}").parse().unwrap();
        wait_listening(acme_addr, &mut pebble, "pebble");
        let management: SocketAddr = format!("127.0.0.1:{management}").parse().unwrap();
        wait_listening(management, &mut pebble, "pebble's management API");
        Pebble {
            children: vec![pebble, dns_server],
            directory: format!("https://127.0.0.1:{acme}/dir"),
            https_root,
            management,
            dns_management,
            dns: format!("127.0.0.1:{dns}").parse().unwrap(),
            dir,
        }
    }

    /// The root that Pebble's issued certificates chain to, written to a file for curl.
    pub fn issuing_root(&self) -> PathBuf {
        let url = format!("https://{}/roots/0", self.management);
        let out = curl(&["--cacert", self.https_root.to_str().unwrap(), &url]);
        assert!(out.status.success(), "cannot fetch Pebble's root: {}", String::from_utf8_lossy(&out.stderr));
        super::write(self.dir.path(), "issuing-root.pem", &String::from_utf8_lossy(&out.stdout))
    }

    /// The `[acme]` table pointing at this CA.
    pub fn acme_table(&self, storage: &Path, challenge: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nstorage = \"{}\"\nchallenge = \"{challenge}\"\nemail = \"ops@example.com\"\n",
            self.directory,
            self.https_root.display(),
            storage.display()
        )
    }

    /// Pebble's log so far (what it validated), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Stops the CA (both processes), as an outage.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// curl, bounded in time.
pub fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl")
}

/// GET https://HOST:PORT/PATH through curl, resolving HOST to 127.0.0.1 and verifying the
/// certificate against `root` only: (exit success, body or error, certificate serial).
pub fn verified_get(host: &str, port: u16, path: &str, root: &Path) -> (bool, String) {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let out = curl(&["--resolve", &resolve, "--cacert", root.to_str().unwrap(), &url]);
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (out.status.success(), String::from_utf8_lossy(&text).into_owned())
}
