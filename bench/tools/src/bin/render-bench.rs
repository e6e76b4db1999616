//! nginx/HAProxy engine timings (issue: nginx and HAProxy engines): render, compare and
//! write 10,000 vhosts through `examples/*.tmpl`, then the proxy's own check, timed apart.
//! Loopback only: nothing listens; bounded by its arguments.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use gatehouse_templated::{AppData, CommandLine, Deployment, GroupData, HostData, Platform, RenderingData, Template};

#[derive(Parser)]
struct Args {
    /// The template to render (examples/nginx.tmpl or examples/haproxy.tmpl).
    #[arg(long)]
    template: PathBuf,
    #[arg(long, default_value = "nginx")]
    platform: String,
    /// Folder for the rendered file.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    vhosts: usize,
    #[arg(long, default_value_t = 5)]
    hosts_per_vhost: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn data(vhosts: usize, hosts_per_vhost: usize, round: usize) -> RenderingData {
    let mut data = RenderingData {
        xproxy: "bench".into(),
        haproxy_server_name_prefix: "server".into(),
        haproxy_server_name_host_port_separator: "_".into(),
        haproxy_add_server_ssl_attributes_string: "ssl verify none".into(),
        ..Default::default()
    };
    for v in 0..vhosts {
        let vhost = format!("app{v}.bench");
        // One host moves each round, so every round has something to write.
        let hosts: Vec<HostData> = (0..hosts_per_vhost)
            .map(|h| HostData {
                host: format!("10.{}.{}.{}", h, v / 250, v % 250),
                port: 20_000 + ((v * hosts_per_vhost + h + usize::from(v == 0) * round) % 40_000) as i64,
                port_type: "http".into(),
            })
            .collect();
        data.add_app(AppData {
            id: vhost.clone(),
            vhost: vhost.clone(),
            groups: [(vhost.clone(), GroupData { hosts: hosts.clone(), ..Default::default() })].into(),
            hosts,
            ..Default::default()
        });
    }
    data
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let platform = if args.platform == "haproxy" { Platform::Haproxy } else { Platform::Nginx };
    let target = args.dir.join(format!("{}.conf", args.platform));
    let (mut data_ms, mut render_ms, mut write_ms, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..args.rounds {
        let started = Instant::now();
        let data = data(args.vhosts, args.hosts_per_vhost, round);
        data_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let text = Template::load(&args.template, "{{", "}}")?.render(&data, "now")?;
        render_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = text.len();
        let started = Instant::now();
        let deployment = Deployment {
            platform,
            config_path: target.clone(),
            check: None,
            reload: None,
            command_timeout: Duration::from_secs(60),
        };
        gatehouse_templated::apply(&text, &deployment)?;
        write_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let check = match platform {
        Platform::Nginx => {
            format!("nginx -t -q -p {} -e {}/error.log -c {}", args.dir.display(), args.dir.display(), target.display())
        }
        Platform::Haproxy => format!("haproxy -c -q -f {}", target.display()),
    };
    let started = Instant::now();
    let checked =
        CommandLine::parse(&check).map(|c| gatehouse_templated::run(&c.words(), Duration::from_secs(120))).transpose();
    let check_ms = started.elapsed().as_secs_f64() * 1000.0;
    let total: Vec<f64> = data_ms.iter().zip(&render_ms).zip(&write_ms).map(|((d, r), w)| d + r + w).collect();
    println!(
        "render_write platform={} vhosts={} hosts={} bytes={bytes} build_data_ms={:.1} render_ms={:.1} compare_write_ms={:.1} total_ms={:.1} target_ms<=300 (medians of {})",
        args.platform,
        args.vhosts,
        args.vhosts * args.hosts_per_vhost,
        median(data_ms),
        median(render_ms),
        median(write_ms),
        median(total),
        args.rounds
    );
    println!("proxy_check platform={} ms={check_ms:.0} ok={}", args.platform, checked.is_ok());
    Ok(())
}
