//! The nginx engine end to end: the real binary renders `examples/nginx.tmpl` from drove-sim's
//! cluster, a real nginx checks and reloads it, and requests go through nginx to the
//! instances' servers.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drove_sim::{AppSpec, Sim, SimConfig, Timings};
use support::client::{bodies, get};
use support::{eventually, Gatehouse};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name).to_string_lossy().into_owned()
}

/// drove-sim with real instance servers, whose steps happen at once.
async fn cluster() -> Sim {
    Sim::start(SimConfig {
        serve_instances: true,
        timings: Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// [`cluster`] with one app, `web.test`, at one instance.
async fn cluster_with_web() -> (Sim, String) {
    let sim = cluster().await;
    let web = sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.test"), 1)).unwrap();
    (sim, web)
}

/// Successful reloads so far, once the count has held still for longer than the engine's
/// one-second spacing of reloads (it moves just after the proxy has the new config).
async fn recorded_reloads(gh: &Gatehouse) -> f64 {
    let mut last = gh.metric("drove_gateway_reloads_successful_total").await;
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let now = gh.metric("drove_gateway_reloads_successful_total").await;
        if now == last && now > 0.0 {
            return now;
        }
        last = now;
    }
    panic!("the reload count never settled");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real nginx with its own prefix folder, stopped on drop.
struct Nginx {
    dir: tempfile::TempDir,
    /// `nginx_cmd`: its own prefix, error log and config (the check's `-c` comes last and wins).
    command: String,
}

impl Nginx {
    /// Starts nginx on a minimal config that already uses the pid file the template writes.
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let command = format!("nginx -p {d} -e {d}/error.log -c {d}/nginx.conf");
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "pid {d}/nginx.pid;\nevents {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; return 503; }} }}\n"
            ),
        )
        .unwrap();
        let status = Command::new("sh").arg("-c").arg(&command).status().unwrap();
        assert!(status.success(), "nginx did not start");
        Nginx { dir, command }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Gatehouse driving this nginx from `sim` with an example template; `extra` adds
    /// top-level keys.
    fn gatehouse_config(&self, sim: &Sim, template: &str, extra: &str) -> String {
        let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "port = 0\nevent_refresh_interval_sec = 0.1\nstate_persistence_enabled = false\n{extra}\
             nginx_config = \"{}\"\nnginx_template = \"{}\"\nnginx_cmd = \"{}\"\n\
             [[namespaces]]\nname = \"stage\"\ndrove = [{}]\nleader_vhost = \"drove.test\"\n",
            self.path("nginx.conf").display(),
            example(template),
            self.command,
            urls.join(", ")
        )
    }

    /// Starts Gatehouse on `config` with the template's port and pid variables, and waits
    /// until nginx routes `web.test` and the reloads have settled. Returns it, nginx's
    /// listening address and the successful reloads so far.
    async fn gatehouse(&self, config: &str, port: u16) -> (Gatehouse, SocketAddr, f64) {
        let pid = self.path("nginx.pid").to_string_lossy().into_owned();
        let listen = format!("127.0.0.1:{port}");
        let gh = Gatehouse::start_with(
            config,
            tempfile::tempdir().unwrap(),
            &[("GATEHOUSE_NGINX_PORT", listen.as_str()), ("GATEHOUSE_NGINX_PID", pid.as_str())],
        );
        let at: SocketAddr = listen.parse().unwrap();
        // Several in a row: while nginx reloads, its old workers still take some connections.
        eventually("web.test routed through nginx", || async {
            for _ in 0..5 {
                if !get(at, "web.test", "/").await.body.starts_with("app=web-1") {
                    return false;
                }
            }
            true
        })
        .await;
        // An old worker answers from the previous config until it takes the master's quit
        // signal: once the reloads have settled, every answer comes from the rendered one.
        let reloads = recorded_reloads(&gh).await;
        (gh, at, reloads)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg("-c").arg(format!("{} -s quit", self.command)).status();
        // Bounded wait for the master to go, so its folder is not removed under it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.path("nginx.pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_follows_the_cluster_through_the_example_template() {
    let (sim, web) = cluster_with_web().await;
    let port = free_port();
    let nginx = Nginx::start(port);
    let config = nginx.gatehouse_config(&sim, "nginx.tmpl", "xproxy = \"edge-test\"\n");
    let (gh, at, _) = nginx.gatehouse(&config, port).await;
    let reply = get(at, "web.test", "/").await;
    assert_eq!(reply.header("x-proxy"), "edge-test");
    assert_eq!(get(at, "unknown.test", "/").await.status, 503);
    let leader = get(at, "drove.test", "/apis/v1/ping").await;
    assert_eq!(leader.status, 200, "the leader_vhost reaches the leader controller: {}", leader.body);

    // SIGUSR1 (nginx restarting, from drove-gateway's systemd drop-in) holds changes back
    // without stopping Gatehouse; SIGUSR2 lets the scale-up through to nginx.
    gh.signal("USR1");
    assert!(gh.wait_for_log("SIGUSR1"));
    sim.with(|c| c.scale(&web, 2)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bodies(at, "web.test", 8).await.len(), 1, "held back while nginx restarts");
    gh.signal("USR2");
    eventually("two instances behind nginx", || async { bodies(at, "web.test", 8).await.len() == 2 }).await;
    let health = gh.admin_get("/v1/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(gh.metric("drove_gateway_reloads_successful_total").await >= 2.0);

    // A template nginx rejects: the live file stays, traffic flows, health says why.
    let live = std::fs::read_to_string(nginx.path("nginx.conf")).unwrap();
    let broken = gh.dir.path().join("broken.tmpl");
    std::fs::write(&broken, "events {}\nhttp { server { listen 1 bogus_directive; } }\n").unwrap();
    gh.write_config(&config.replace(&example("nginx.tmpl"), &broken.to_string_lossy()));
    assert_eq!(gh.admin_post("/v1/reload", None).await.status, 200);
    eventually("the failed check in /v1/health", || async {
        let health = gh.admin_get("/v1/health").await;
        health.status == 500 && health.body.contains("the nginx check rejected the new config")
    })
    .await;
    assert_eq!(std::fs::read_to_string(nginx.path("nginx.conf")).unwrap(), live);
    assert!(get(at, "web.test", "/").await.body.starts_with("app=web-1"));
    assert!(gh.metric("drove_gateway_reloads_failed_total").await >= 1.0);
    drop(gh);
    drop(nginx);
}

#[test]
fn render_prints_the_config_for_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = support::write(
        dir.path(),
        "state.json",
        r#"{"version":1,"captured_at_ms":0,"namespaces":{"stage":{"Leader":{"Endpoint":"http://10.0.0.9:4000","Host":"10.0.0.9","Port":4000},
            "Apps":{"shop.test":{"Vhost":"shop.test","Hosts":[{"Host":"10.0.0.1","Port":31000,"PortType":"http"}],"Tags":{},"Groups":{}}}}}}"#,
    );
    let config = support::write(
        dir.path(),
        "g.toml",
        &format!(
            "xproxy = \"edge\"\nnginx_config = \"nginx.conf\"\nnginx_template = \"{}\"\nnginx_cmd = \"nginx\"\n\
             [[namespaces]]\nname = \"stage\"\ndrove = [\"http://10.0.0.9:4000\"]\nleader_vhost = \"drove.stage\"\n",
            example("nginx.tmpl")
        ),
    );
    let out = Command::new(support::binary())
        .args(["render", "--config", &config.to_string_lossy(), "--state", &state.to_string_lossy()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "upstream shop.test {",
        "server 10.0.0.1:31000;",
        "server_name drove.stage;",
        "add_header X-Proxy edge always;",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    assert!(!dir.path().join("nginx.conf").exists(), "render applies nothing");
}

/// A real HAProxy in master-worker mode with its own folder, stopped on drop.
struct Haproxy {
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// With `socket`, the starting config already has the admin stats socket the template
    /// will keep.
    fn start(port: u16, socket: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let global = if socket {
            format!("global\n    stats socket {}/admin.sock mode 600 level admin\n", dir.path().display())
        } else {
            String::new()
        };
        std::fs::write(
            &cfg,
            format!("{global}defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n    timeout connect 1s\nfrontend f\n    bind 127.0.0.1:{port}\n    http-request deny deny_status 503\n"),
        )
        .unwrap();
        let pid = dir.path().join("haproxy.pid");
        let status = Command::new("haproxy")
            .args(["-W", "-D", "-p", &pid.to_string_lossy(), "-f", &cfg.to_string_lossy()])
            .status()
            .unwrap();
        assert!(status.success(), "haproxy did not start");
        let haproxy = Haproxy { dir };
        // The daemon writes its pid file a moment after the command returns, and catches
        // SIGUSR2 (reload) a moment later still; before that, SIGUSR2 would kill it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !haproxy.catches_reload() {
            assert!(Instant::now() < deadline, "haproxy's master never got ready for reloads");
            std::thread::sleep(Duration::from_millis(10));
        }
        haproxy
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The worker's pid: a reload replaces it.
    fn worker_pid(&self) -> String {
        let out = Command::new("pgrep").args(["-P", &self.master_pid()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Gatehouse driving this HAProxy from `sim` with the example template; `extra` adds
    /// top-level keys.
    fn gatehouse_config(&self, sim: &Sim, extra: &str) -> String {
        let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "port = 0\nevent_refresh_interval_sec = 0.1\nstate_persistence_enabled = false\n{extra}\
             proxy_platform = \"haproxy\"\nhaproxy_config = \"{}\"\nhaproxy_template = \"{}\"\nhaproxy_cmd = \"haproxy\"\n\
             haproxy_reload_cmd = \"kill -USR2 {}\"\n[[namespaces]]\nname = \"stage\"\ndrove = [{}]\n",
            self.path("haproxy.cfg").display(),
            example("haproxy.tmpl"),
            self.master_pid(),
            urls.join(", ")
        )
    }

    /// Whether the master process has its SIGUSR2 handler (bit 11 of `SigCgt`).
    fn catches_reload(&self) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.master_pid())).unwrap_or_default();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
        u64::from_str_radix(caught, 16).is_ok_and(|mask| mask & (1 << 11) != 0)
    }

    fn master_pid(&self) -> String {
        std::fs::read_to_string(self.path("haproxy.pid")).unwrap_or_default().trim().to_string()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("haproxy.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_the_cluster_through_the_example_template() {
    let (sim, web) = cluster_with_web().await;
    let port = free_port();
    let haproxy = Haproxy::start(port, false);
    let config = haproxy.gatehouse_config(&sim, "xproxy = \"edge-test\"\n");
    let bind = format!("127.0.0.1:{port}");
    let gh = Gatehouse::start_with(&config, tempfile::tempdir().unwrap(), &[("GATEHOUSE_HAPROXY_BIND", bind.as_str())]);
    let at: SocketAddr = bind.parse().unwrap();
    eventually("web.test routed through haproxy", || async {
        get(at, "web.test:80", "/").await.body.starts_with("app=web-1")
    })
    .await;
    assert_eq!(get(at, "web.test", "/").await.header("x-proxy"), "edge-test");
    assert_eq!(get(at, "unknown.test", "/").await.status, 404);
    sim.with(|c| c.scale(&web, 2)).unwrap();
    eventually("two instances behind haproxy", || async { bodies(at, "web.test", 8).await.len() == 2 }).await;
    let cfg = std::fs::read_to_string(haproxy.path("haproxy.cfg")).unwrap();
    assert!(cfg.contains("server server_127.0.0.1_"), "drove-gateway's server names:\n{cfg}");
    let health = gh.admin_get("/v1/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    drop(gh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_membership_changes_go_through_the_runtime_api_without_reloads() {
    let (sim, web) = cluster_with_web().await;
    let port = free_port();
    let haproxy = Haproxy::start(port, true);
    let socket = format!("haproxysocketaddr = \"{}\"\n", haproxy.path("admin.sock").display());
    let config = haproxy.gatehouse_config(&sim, &socket);
    let bind = format!("127.0.0.1:{port}");
    let gh = Gatehouse::start_with(&config, tempfile::tempdir().unwrap(), &[("GATEHOUSE_HAPROXY_BIND", bind.as_str())]);
    let at: SocketAddr = bind.parse().unwrap();
    eventually("web.test routed through haproxy", || async {
        get(at, "web.test", "/").await.body.starts_with("app=web-1")
    })
    .await;
    // The first config (new backend web.test) took a reload; wait for it to settle.
    eventually("one worker after the reload", || async { !haproxy.worker_pid().contains('\n') }).await;
    let worker = haproxy.worker_pid();
    let reloads = recorded_reloads(&gh).await;

    sim.with(|c| c.scale(&web, 3)).unwrap();
    eventually("three instances behind haproxy", || async { bodies(at, "web.test", 12).await.len() == 3 }).await;
    sim.with(|c| c.scale(&web, 1)).unwrap();
    eventually("back to one instance", || async { bodies(at, "web.test", 8).await.len() == 1 }).await;
    assert_eq!(haproxy.worker_pid(), worker, "membership changes did not reload HAProxy");
    assert_eq!(gh.metric("drove_gateway_reloads_successful_total").await, reloads);
    let health = gh.admin_get("/v1/health").await;
    assert!(health.status == 200 && health.body.contains("servers reconciled"), "{}", health.body);
    // The file on disk follows the API changes, so a restart loads the current servers.
    eventually("haproxy.cfg rewritten without a reload", || async {
        let cfg = std::fs::read_to_string(haproxy.path("haproxy.cfg")).unwrap_or_default();
        cfg.matches("    server server_").count() == 1
    })
    .await;
    drop(gh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_plus_membership_changes_go_through_the_api_without_reloads() {
    let (sim, web) = cluster_with_web().await;
    // NGINX Plus cannot run here: nginx OSS checks, reloads and serves the zoned template,
    // and the API fake stands for NGINX Plus's API, with the upstream the config declares.
    let plus = nginx_plus_sim::NginxPlusSim::start(&[("web.test", true)]).await.unwrap();
    let port = free_port();
    let nginx = Nginx::start(port);
    let extra =
        format!("nginxplusapiaddr = \"{}\"\nnginx_max_fails = 2\nnginx_fail_timeout = \"5s\"\n", plus.address());
    let config = nginx.gatehouse_config(&sim, "nginx-plus.tmpl", &extra);
    let (gh, _, reloads) = nginx.gatehouse(&config, port).await;
    assert_eq!(reloads, 1.0, "the first config waited for the first sync: no empty config went live first");
    sim.with(|c| c.scale(&web, 2)).unwrap();
    eventually("both instances in the NGINX Plus upstream", || async { plus.servers("web.test").len() == 2 }).await;
    let upstream = plus.upstream("web.test").unwrap();
    assert!(upstream.servers.iter().all(|s| s.max_fails == 2 && s.fail_timeout == "5s"), "{upstream:?}");
    assert!(upstream.servers.iter().all(|s| s.server.starts_with("127.0.0.1:")));
    sim.with(|c| c.scale(&web, 1)).unwrap();
    eventually("back to one server", || async { plus.servers("web.test").len() == 1 }).await;
    assert_eq!(gh.metric("drove_gateway_reloads_successful_total").await, reloads, "membership changes did not reload");
    eventually("nginx.conf follows for the next restart", || async {
        let conf = std::fs::read_to_string(nginx.path("nginx.conf")).unwrap_or_default();
        let web = conf.split("upstream web.test {").nth(1).and_then(|rest| rest.split('}').next()).unwrap_or("");
        web.contains("zone web.test 64k;") && web.matches("server 127.0.0.1:").count() == 1
    })
    .await;
    let health = gh.admin_get("/v1/health").await;
    assert!(health.status == 200 && health.body.contains("servers reconciled"), "{}", health.body);
    drop(gh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_by_header_through_the_header_routing_example() {
    let sim = cluster().await;
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.test").with_tags(&[("env", "Blue")]), 1)).unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "2", "web.test").with_tags(&[("env", "green")]), 1)).unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "3", "web.test"), 1)).unwrap();
    let port = free_port();
    let haproxy = Haproxy::start(port, false);
    let extra = "haproxy_backend_include_routing_tag_suffix = true\nhaproxy_backend_name_separator = \"__\"\n";
    let config = haproxy
        .gatehouse_config(&sim, extra)
        .replace(&example("haproxy.tmpl"), &example("haproxy-header-routing.tmpl"))
        .replace("drove = [", "routing_tag = \"env\"\ndrove = [");
    let bind = format!("127.0.0.1:{port}");
    let _gh =
        Gatehouse::start_with(&config, tempfile::tempdir().unwrap(), &[("GATEHOUSE_HAPROXY_BIND", bind.as_str())]);
    let at: SocketAddr = bind.parse().unwrap();
    let with_env = |env: &'static str| async move {
        let req = http::Request::get("/")
            .header("host", "web.test")
            .header("x-request-env", env)
            .body(bytes::Bytes::new())
            .unwrap();
        support::client::send(at, req).await
    };
    eventually("green requests reach the green app", || async {
        with_env("GREEN").await.body.starts_with("app=web-2")
    })
    .await;
    assert!(with_env("blue").await.body.starts_with("app=web-1"), "tag values match lowercased");
    assert!(get(at, "web.test", "/").await.body.starts_with("app=web-3"), "no header: the untagged instances");
    assert_eq!(with_env("red").await.status, 404, "an unknown group goes to no-match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_reloads_disabled_changes_servers_only_through_the_api() {
    let (sim, web) = cluster_with_web().await;
    let port = free_port();
    let haproxy = Haproxy::start(port, true);
    let socket = gatehouse_templated::haproxy::SocketAddress::parse(&haproxy.path("admin.sock").to_string_lossy());
    let has_web = || async {
        gatehouse_templated::haproxy::servers(&socket).await.is_ok_and(|(backends, _)| backends.contains("web.test"))
    };
    // The operator's own config already routes web.test to an empty backend.
    let cfg = std::fs::read_to_string(haproxy.path("haproxy.cfg")).unwrap().replace(
        "    http-request deny deny_status 503\n",
        "    use_backend %[req.hdr(host),lower,word(1,:)]\nbackend web.test\n    balance roundrobin\n    \
         #DROVE-SERVERS-BEGIN web.test\n    #DROVE-SERVERS-END\n",
    );
    std::fs::write(haproxy.path("haproxy.cfg"), &cfg).unwrap();
    Command::new("kill").args(["-USR2", &haproxy.master_pid()]).status().unwrap();
    eventually("haproxy reloaded the operator's config", has_web).await;
    let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let config = format!(
        "port = 0\nevent_refresh_interval_sec = 0.1\nstate_persistence_enabled = false\nproxy_platform = \"haproxy\"\n\
         haproxy_reload_disabled = true\nhaproxysocketaddr = \"{}\"\nhaproxy_config = \"{}\"\n\
         haproxy_manage_global_server_state_file = true\nhaproxy_global_server_state_file_path = \"{}\"\n\
         [[namespaces]]\nname = \"stage\"\ndrove = [{}]\n",
        haproxy.path("admin.sock").display(),
        haproxy.path("haproxy.cfg").display(),
        haproxy.path("server-state").display(),
        urls.join(", ")
    );
    let gh = Gatehouse::start(&config);
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    eventually("web.test served through servers added by the API", || async {
        get(at, "web.test", "/").await.body.starts_with("app=web-1")
    })
    .await;
    sim.with(|c| c.scale(&web, 2)).unwrap();
    eventually("two servers", || async { bodies(at, "web.test", 8).await.len() == 2 }).await;
    assert_eq!(std::fs::read_to_string(haproxy.path("haproxy.cfg")).unwrap(), cfg, "nothing rendered");
    assert_eq!(gh.metric("drove_gateway_reloads_successful_total").await, 0.0);
    let health = gh.admin_get("/v1/health").await;
    assert!(health.status == 200 && health.body.contains("reloads are disabled"), "{}", health.body);
    eventually("both servers saved", || async {
        std::fs::read_to_string(haproxy.path("server-state")).unwrap_or_default().matches(" web.test ").count() == 2
    })
    .await;

    // Before a restart, drove-gateway's drop-in fills the managed block from the saved state;
    // the restarted HAProxy then has the servers without Gatehouse.
    let out = Command::new(support::binary())
        .args(["-sync-haproxy-state-config", "-f", &gh.config_path.to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let synced = std::fs::read_to_string(haproxy.path("haproxy.cfg")).unwrap();
    assert_eq!(synced.matches("    server server_127.0.0.1_").count(), 2, "{synced}");
    drop(gh);
    let worker = haproxy.worker_pid();
    Command::new("kill").args(["-USR2", &haproxy.master_pid()]).status().unwrap();
    eventually("a new worker on the synced config", || async {
        let now = haproxy.worker_pid();
        !now.is_empty() && !now.contains('\n') && now != worker
    })
    .await;
    eventually("the restarted config serves both instances", || async { bodies(at, "web.test", 8).await.len() == 2 })
        .await;
}

/// The top-level keys of an admin socket and a deploy state in `state`.
fn deploy_keys(state: &Path) -> String {
    format!(
        "admin_socket = \"{}\"\ndeploy_state = \"{}\"\n",
        state.join("g.sock").display(),
        state.join("deploys.json").display()
    )
}

/// Deploys `app.test` through the admin socket in `state` and checks that the proxy at `at`
/// follows its switch, and that what the templates cannot carry (read targets) is refused.
async fn deploys_go_through(at: SocketAddr, state: &Path) {
    let (blue, green) = tokio::join!(support::backend::start("blue"), support::backend::start("green"));
    let socket = state.join("g.sock");
    let deploy = |target: &support::backend::Backend, extra: &[&str]| {
        let target = target.addr.to_string();
        let mut args =
            vec!["deploy", "app", "--host", "app.test", "--target", &target, "--health-check-interval", "100ms"];
        args.extend_from_slice(extra);
        Command::new(support::binary()).args(&args).arg("--socket").arg(&socket).output().unwrap()
    };
    assert!(deploy(&blue, &[]).status.success());
    eventually("the deployed service is routed", || async {
        get(at, "app.test", "/").await.header("x-backend") == "blue"
    })
    .await;
    assert!(deploy(&green, &[]).status.success());
    eventually("the switch is followed", || async { get(at, "app.test", "/").await.header("x-backend") == "green" })
        .await;
    let blue_addr = blue.addr.to_string();
    let refused = deploy(&green, &["--read-target", &blue_addr]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("need Gatehouse's own proxy"), "{refused:?}");
    assert!(get(at, "web.test", "/").await.body.starts_with("app=web-1"), "Drove's apps still routed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_deployed_services_and_follows_their_switches() {
    let (sim, _) = cluster_with_web().await;
    let port = free_port();
    let nginx = Nginx::start(port);
    let state = tempfile::tempdir().unwrap();
    let config = nginx.gatehouse_config(&sim, "nginx.tmpl", &deploy_keys(state.path()));
    let (_gh, at, _) = nginx.gatehouse(&config, port).await;
    deploys_go_through(at, state.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_serves_deployed_services_and_follows_their_switches() {
    let (sim, _) = cluster_with_web().await;
    let port = free_port();
    let haproxy = Haproxy::start(port, false);
    let state = tempfile::tempdir().unwrap();
    let config = haproxy.gatehouse_config(&sim, &deploy_keys(state.path()));
    let bind = format!("127.0.0.1:{port}");
    let _gh =
        Gatehouse::start_with(&config, tempfile::tempdir().unwrap(), &[("GATEHOUSE_HAPROXY_BIND", bind.as_str())]);
    let at: SocketAddr = bind.parse().unwrap();
    eventually("web.test routed through haproxy", || async {
        get(at, "web.test", "/").await.body.starts_with("app=web-1")
    })
    .await;
    deploys_go_through(at, state.path()).await;
}
