//! Drove discovery timings (issue: Drove discovery, targets in bench/README.md):
//!   1. from an instance turning HEALTHY in drove-sim to the first request routed to it;
//!   2. a full resync of 10,000 vhosts / 50,000 hosts: apply time and the process's RSS;
//!      then single instance changes: apply time.
//!
//! Runs the real gatehouse binary against drove-sim in this process, on loopback only;
//! every loop is bounded in count and time.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use drove_sim::{AppSpec, InstancePort, InstanceState, PortType, Sim, SimConfig, Timings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// The gatehouse binary (release build).
    #[arg(long)]
    gatehouse: String,
    /// Folder for configs and state.
    #[arg(long)]
    dir: String,
    #[arg(long, default_value_t = 100)]
    changes: usize,
    #[arg(long, default_value_t = 10_000)]
    vhosts: usize,
    #[arg(long, default_value_t = 5)]
    hosts_per_vhost: usize,
    /// Run one part only: `latency`, `scale` or `churn`.
    #[arg(long)]
    only: Option<String>,
}

/// One GET over a fresh connection; returns the status and body.
async fn get(addr: &str, host: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

struct Gatehouse {
    child: tokio::process::Child,
    proxy: String,
    admin: String,
}

impl Gatehouse {
    async fn start(
        binary: &str,
        dir: &str,
        name: &str,
        urls: &[String],
        proxy: &str,
        admin: &str,
        poll_interval_sec: f64,
    ) -> anyhow::Result<Self> {
        let drove: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        let config = format!(
            "address = \"127.0.0.1\"\nport = {}\nloglevel = \"warn\"\nevent_refresh_interval_sec = {poll_interval_sec}\n\
             state_path = \"{name}-state.json\"\n[[listeners]]\naddress = \"{proxy}\"\n\
             [[namespaces]]\nname = \"bench\"\ndrove = [{}]\n",
            admin.rsplit(':').next().unwrap_or("0"),
            drove.join(", ")
        );
        let path = format!("{dir}/{name}.toml");
        std::fs::write(&path, config)?;
        let _ = std::fs::remove_file(format!("{dir}/{name}-state.json"));
        let child = tokio::process::Command::new(binary)
            .args(["run", "--config", &path])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(format!("{dir}/{name}.err"))?)
            .kill_on_drop(true)
            .spawn()
            .context("spawn gatehouse")?;
        let gh = Gatehouse { child, proxy: proxy.into(), admin: admin.into() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&gh.admin, "admin").await.is_err() {
            if Instant::now() > deadline {
                bail!("gatehouse did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gh)
    }

    async fn metric(&self, series: &str) -> f64 {
        let mut s = match tokio::net::TcpStream::connect(&self.admin).await {
            Ok(s) => s,
            Err(_) => return 0.0,
        };
        let _ = s.write_all(b"GET /v1/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw).await;
        raw.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
            .unwrap_or(0)
    }
}

/// (count, sum) of the apply-time histogram.
async fn applies(gh: &Gatehouse) -> (f64, f64) {
    (
        gh.metric("gatehouse_drove_apply_seconds_count{namespace=\"bench\"}").await,
        gh.metric("gatehouse_drove_apply_seconds_sum{namespace=\"bench\"}").await,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn time_to_first_route(args: &Args) -> anyhow::Result<()> {
    let sim = Sim::start(SimConfig {
        serve_instances: true,
        timings: Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() },
        ..SimConfig::default()
    })
    .await?;
    let app = sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.bench"), 1))?;
    let gh =
        Gatehouse::start(&args.gatehouse, &args.dir, "latency", &sim.urls(), "127.0.0.1:18181", "127.0.0.1:16161", 1.0)
            .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gh.proxy, "web.bench").await.map(|r| r.0).unwrap_or(0) != 200 {
        if Instant::now() > deadline {
            bail!("web.bench never routed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut samples = Vec::new();
    for i in 0..args.changes {
        // Desynchronise from the poll ticks so the samples cover the whole interval.
        tokio::time::sleep(Duration::from_millis(spread_ms(i))).await;
        let before: Vec<String> = sim.with(|c| c.apps[&app].instances.keys().cloned().collect());
        let started = Instant::now();
        // Only ever up: a stopped instance's port could be reused by a new one and fool the check.
        sim.with(|c| c.scale(&app, i as u32 + 2))?;
        let new: Vec<String> =
            sim.with(|c| c.apps[&app].instances.keys().filter(|k| !before.contains(k)).cloned().collect());
        let Some(target) = new.first() else { bail!("scale did not add an instance") };
        let give_up = started + Duration::from_secs(10);
        loop {
            let (_, body) = get(&gh.proxy, "web.bench").await?;
            if body.contains(target.as_str()) {
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > give_up {
                bail!("instance {target} never received a request");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let n = samples.len();
    let med = median(&mut samples);
    let p90 = samples[n * 9 / 10];
    println!("healthy_to_first_request_ms median={med:.1} p90={p90:.1} max={:.1} changes={n} poll_interval_ms=1000 target_ms<=1020", samples[n - 1]);
    Ok(())
}

fn spread_ms(i: usize) -> u64 {
    // A fixed spread over 0..1000 ms.
    ((i as u64) * 379) % 1000
}

async fn scale(args: &Args) -> anyhow::Result<()> {
    let sim =
        Sim::start(SimConfig { timings: Timings { step_ms: 0, ..Timings::default() }, ..SimConfig::default() }).await?;
    let gh =
        Gatehouse::start(&args.gatehouse, &args.dir, "scale", &sim.urls(), "127.0.0.1:18182", "127.0.0.1:16162", 1.0)
            .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = gh.rss_kib();
    let build = Instant::now();
    let mut first_app = String::new();
    sim.with(|c| -> anyhow::Result<()> {
        for v in 0..args.vhosts {
            let id = c.add_app(AppSpec::web(&format!("app{v}"), "1", &format!("app{v}.bench")), 0)?;
            c.set_app_state(&id, drove_sim::AppState::Running)?;
            for h in 0..args.hosts_per_vhost {
                let port = 20_000 + ((v * args.hosts_per_vhost + h) % 40_000) as u16;
                let ports = [(
                    "main".to_string(),
                    InstancePort { container_port: 8080, host_port: port, port_type: PortType::Http },
                )];
                c.add_instance(
                    &id,
                    "exec-1",
                    &format!("10.{}.{}.{}", h, v / 250, v % 250),
                    ports.into(),
                    InstanceState::Healthy,
                )?;
            }
            if v == 0 {
                first_app = id;
            }
        }
        Ok(())
    })?;
    eprintln!("built {} vhosts in the simulator in {:?}", args.vhosts, build.elapsed());
    let (count0, sum0) = applies(&gh).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count, sum) = applies(&gh).await;
        if count > count0 {
            println!(
                "full_resync vhosts={} hosts={} apply_ms={:.1} target_ms<=100",
                args.vhosts,
                args.vhosts * args.hosts_per_vhost,
                (sum - sum0) * 1000.0 / (count - count0)
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("the full resync was never applied");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("rss_kib idle_empty={idle_rss} with_view={} target_kib<={}", gh.rss_kib(), 64 * 1024);
    let mut one = Vec::new();
    for i in 0..20 {
        let (count0, sum0) = applies(&gh).await;
        sim.with(|c| {
            let id = c.apps[&first_app].instances.keys().nth(i % 3).cloned();
            if let Some(id) = id {
                let _ = c.flap(&first_app, &id);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (count, sum) = applies(&gh).await;
            if count > count0 {
                one.push((sum - sum0) * 1000.0 / (count - count0));
                break;
            }
            if Instant::now() > deadline {
                bail!("an instance change was never applied");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("one_instance_change apply_ms median={:.2} changes={} target_ms<=5", median(&mut one), one.len());
    Ok(())
}

/// Apps whose instance count swings between 1 and 2 during the churn phase.
const CHURN_APPS: usize = 40;
const CHURN_POLL_SEC: f64 = 0.25;

/// Paced keep-alive GETs on one connection until `stop`; returns (phase, latency us) of
/// every 2xx and the number of failures (other statuses, errors).
async fn paced_load(
    addr: std::net::SocketAddr,
    hosts: Vec<String>,
    every: Duration,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<(usize, u64)>, Vec<String>)> {
    let mut sender = gatehouse_bench::connect(addr).await?;
    let (mut samples, mut failures) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next = Instant::now();
    for host in hosts.iter().cycle() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        next += every;
        tokio::time::sleep_until(next.into()).await;
        let began = Instant::now();
        let phase_now = phase.load(Ordering::Relaxed);
        match gatehouse_bench::get(&mut sender, host).await {
            Ok(200..=299) => samples.push((phase_now, began.elapsed().as_micros() as u64)),
            Ok(status) => failures.push(format!("{host}: HTTP {status}")),
            Err(e) => {
                failures.push(format!("{host}: {e}"));
                sender = gatehouse_bench::connect(addr).await?;
            }
        }
    }
    Ok((samples, failures))
}

/// 1,000 instance changes (apps scaled between 1 and 2 instances, new instances walking to
/// HEALTHY, surplus ones STOPPING before their port closes) under paced keep-alive load,
/// with WebSockets open on an untouched Drove vhost; p99 of the untouched vhost's traffic
/// while quiet and during the changes.
async fn churn(args: &Args) -> anyhow::Result<()> {
    let sim = Arc::new(
        Sim::start(SimConfig {
            serve_instances: true,
            timings: Timings { step_ms: 300, ..Timings::default() },
            ..SimConfig::default()
        })
        .await?,
    );
    sim.with(|c| c.add_app(AppSpec::web("steady", "1", "steady.bench"), 2))?;
    let mut churners = Vec::new();
    for i in 0..CHURN_APPS {
        churners.push(sim.with(|c| c.add_app(AppSpec::web(&format!("churn{i}"), "1", &format!("churn{i}.bench")), 1))?);
    }
    let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ws_port = ws_listener.local_addr()?.port();
    let echo = tokio::spawn(gatehouse_bench::ws_echo(ws_listener));
    sim.with(|c| -> anyhow::Result<()> {
        let id = c.add_app(AppSpec::web("ws", "1", "ws.bench"), 0)?;
        c.set_app_state(&id, drove_sim::AppState::Running)?;
        let port = InstancePort { container_port: 8080, host_port: ws_port, port_type: PortType::Http };
        c.add_instance(&id, "exec-1", "127.0.0.1", [("main".to_string(), port)].into(), InstanceState::Healthy)?;
        Ok(())
    })?;
    let gh = Gatehouse::start(
        &args.gatehouse,
        &args.dir,
        "churn",
        &sim.urls(),
        "127.0.0.1:18183",
        "127.0.0.1:16163",
        CHURN_POLL_SEC,
    )
    .await?;
    let churn_hosts: Vec<String> = (0..CHURN_APPS).map(|i| format!("churn{i}.bench")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for host in churn_hosts.iter().chain(["steady.bench".to_string()].iter()) {
        while get(&gh.proxy, host).await.map(|r| r.0).unwrap_or(0) != 200 {
            if Instant::now() > deadline {
                bail!("{host} never routed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let proxy: std::net::SocketAddr = gh.proxy.parse()?;
    let mut sockets = gatehouse_bench::open_websockets(proxy, "ws.bench", 20).await?;
    let (phase, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let every = Duration::from_millis(10);
    let mut steady = Vec::new();
    for _ in 0..4 {
        steady.push(tokio::spawn(paced_load(proxy, vec!["steady.bench".into()], every, phase.clone(), stop.clone())));
    }
    let mut touched = Vec::new();
    for k in 0..8 {
        let mut hosts = churn_hosts.clone();
        hosts.rotate_left(k * 5);
        touched.push(tokio::spawn(paced_load(proxy, hosts, every, phase.clone(), stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let applies_before = applies(&gh).await.0;
    phase.store(1, Ordering::Relaxed);
    let changes = Arc::new(AtomicUsize::new(0));
    let mut scalers = Vec::new();
    for (k, app) in churners.iter().enumerate() {
        let (sim_handle, app, changes) = (sim.clone(), app.clone(), changes.clone());
        scalers.push(tokio::spawn(async move {
            // Spread the apps over the cycle so changes arrive steadily.
            tokio::time::sleep(Duration::from_millis(80 * k as u64)).await;
            let mut required = 2;
            while changes.fetch_add(1, Ordering::Relaxed) < 1_000 {
                sim_handle.with(|c| c.scale(&app, required))?;
                // Up: five 300 ms steps to HEALTHY, then some traffic; down: STOPPING at once.
                let wait = if required == 2 { 2_000 } else { 1_200 };
                required = 3 - required;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            anyhow::Ok(())
        }));
    }
    for s in scalers {
        s.await??;
    }
    // Let the last changes reach the table and the last stopped instances close.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let applies_during = applies(&gh).await.0 - applies_before;
    let (mut quiet, mut busy, mut steady_failures) = (Vec::new(), Vec::new(), Vec::new());
    for t in steady {
        let (samples, failures) = t.await??;
        for (p, us) in samples {
            if p == 0 {
                quiet.push(us)
            } else {
                busy.push(us)
            }
        }
        steady_failures.extend(failures);
    }
    let (mut touched_ok, mut touched_failures) = (0, Vec::new());
    for t in touched {
        let (samples, failures) = t.await??;
        touched_ok += samples.len();
        touched_failures.extend(failures);
    }
    let alive = gatehouse_bench::websockets_alive(&mut sockets).await;
    echo.abort();
    quiet.sort_unstable();
    busy.sort_unstable();
    let (p99_quiet, p99_busy) = (gatehouse_bench::quantile_ms(&quiet, 0.99), gatehouse_bench::quantile_ms(&busy, 0.99));
    println!(
        "churn instance_changes=1000 drove_applies={applies_during:.0} poll_interval_ms={} \
         touched_requests_ok={touched_ok} touched_failed={} untouched_failed={} websockets_alive={alive}/20 target_failed=0",
        CHURN_POLL_SEC * 1000.0,
        touched_failures.len(),
        steady_failures.len()
    );
    println!(
        "churn untouched_p99_ms quiet={p99_quiet:.2} during_changes={p99_busy:.2} ratio={:.2} samples={}/{} target_ratio<=1.2",
        p99_busy / p99_quiet.max(0.001),
        quiet.len(),
        busy.len()
    );
    for f in touched_failures.iter().chain(&steady_failures).take(5) {
        eprintln!("failed: {f}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let part = args.only.as_deref();
    if part.is_none_or(|p| p == "latency") {
        time_to_first_route(&args).await?;
    }
    if part.is_none_or(|p| p == "scale") {
        scale(&args).await?;
    }
    if part.is_none_or(|p| p == "churn") {
        churn(&args).await?;
    }
    Ok(())
}
