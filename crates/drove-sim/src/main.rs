//! `drove-sim`: run a simulated Drove cluster by hand.

use clap::Parser;
use drove_sim::{AppSpec, Auth, Role, Sim, SimConfig, Timings, User};

const AFTER_HELP: &str = "\
Examples:
  drove-sim --app orders=orders.local:2 --app web=www.local:1
  drove-sim --user guest:guest --app orders=orders.local:2

Then point a gateway (or curl) at the printed controller URLs:
  curl -s http://127.0.0.1:PORT/apis/v1/endpoints
and change the cluster through the control API on any node:
  curl -s http://127.0.0.1:PORT/__sim/state
  curl -s -XPOST http://127.0.0.1:PORT/__sim/apps -d '{\"name\":\"api\",\"vhost\":\"api.local\",\"instances\":2}'
  curl -s -XPOST http://127.0.0.1:PORT/__sim/apps/api-1/scale -d '{\"instances\":3}'
  curl -s -XPOST http://127.0.0.1:PORT/__sim/apps/api-1/crash
  curl -s -XDELETE http://127.0.0.1:PORT/__sim/apps/api-1
  curl -s -XPOST http://127.0.0.1:PORT/__sim/failover -d '{\"to\":1,\"recovery_ms\":2000}'
  curl -s -XPOST http://127.0.0.1:PORT/__sim/nodes/0 -d '{\"mode\":\"down\"}'      (up, down, hang, reset, slow+ms)
  curl -s -XPOST http://127.0.0.1:PORT/__sim/maintenance -d '{\"on\":true}'
  curl -s -XPOST http://127.0.0.1:PORT/__sim/executors/exec-1/lose
  curl -s -XPOST http://127.0.0.1:PORT/__sim/faults -d '{\"path_prefix\":\"/apis/v1/endpoints\",\"times\":3,\"action\":{\"type\":\"status\",\"code\":502,\"body\":\"bad gateway\",\"content_type\":\"text/plain\"}}'
  curl -s -XDELETE http://127.0.0.1:PORT/__sim/faults
  curl -s -XPOST http://127.0.0.1:PORT/__sim/stop

Fault types: status, api_failed, delay, hang, connection_reset, malformed_json,
truncated_body, wrong_content_type, empty_endpoints, stale_last_sync_time.
Instances are real HTTP servers on 127.0.0.1 answering `app=... instance=...`.";

#[derive(Parser)]
#[command(name = "drove-sim", version, about = "Simulated Drove controllers on loopback", after_help = AFTER_HELP)]
struct Args {
    /// Number of controller nodes; node 0 starts as the leader.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// An app to create at start: NAME=VHOST[:INSTANCES] (repeatable).
    #[arg(long = "app", value_name = "NAME=VHOST[:N]")]
    apps: Vec<String>,
    /// Require HTTP Basic credentials USER:PASSWORD (read-only role; repeatable).
    #[arg(long = "user", value_name = "USER:PASSWORD")]
    users: Vec<String>,
    /// Require this exact Authorization header value instead.
    #[arg(long, conflicts_with = "users")]
    token: Option<String>,
    /// Milliseconds between the steps of an instance's start or stop.
    #[arg(long, default_value_t = 200)]
    step_ms: i64,
    /// Do not start HTTP servers for instances (made-up host ports instead).
    #[arg(long)]
    no_serve: bool,
}

fn parse_app(text: &str) -> Result<(AppSpec, u32), String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| format!("--app {text}: expected NAME=VHOST[:N]"))?;
    let (vhost, count) = match rest.split_once(':') {
        Some((v, n)) => (v, n.parse().map_err(|_| format!("--app {text}: `{n}` is not a number"))?),
        None => (rest, 1),
    };
    Ok((AppSpec::web(name, "1", vhost), count))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let auth = if let Some(value) = args.token {
        Auth::RawHeader { value, role: Role::ExternalReadOnly }
    } else if !args.users.is_empty() {
        let mut users = Vec::new();
        for u in &args.users {
            let Some((name, password)) = u.split_once(':') else {
                eprintln!("drove-sim: --user {u}: expected USER:PASSWORD");
                std::process::exit(2);
            };
            users.push(User { name: name.into(), password: password.into(), role: Role::ExternalReadOnly });
        }
        Auth::Basic { users }
    } else {
        Auth::None
    };
    let config = SimConfig {
        nodes: args.nodes.max(1),
        auth,
        timings: Timings { step_ms: args.step_ms.max(0), ..Timings::default() },
        serve_instances: !args.no_serve,
        ..SimConfig::default()
    };
    let sim = match Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("drove-sim: cannot start: {e}");
            std::process::exit(1);
        }
    };
    for text in &args.apps {
        let created = parse_app(text).and_then(|(spec, n)| sim.with(|c| c.add_app(spec, n)).map_err(|e| e.to_string()));
        if let Err(e) = created {
            eprintln!("drove-sim: {e}");
            std::process::exit(2);
        }
    }
    for (i, url) in sim.urls().iter().enumerate() {
        println!("controller {i}: {url}{}", if i == 0 { " (leader)" } else { "" });
    }
    println!("state: curl -s {}/__sim/state   (drove-sim --help for the control API)", sim.urls()[0]);
    tokio::select! {
        _ = sim.stopped() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
