//! Gatehouse: one binary that puts HTTP traffic in front of applications.

mod admin;
mod admin_socket;
mod admin_tls;
mod control;
mod demo;
mod gateway;
mod kamal;
mod logging;
mod release;
mod rendering;
mod systemd;
mod templated;
mod unit;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use crate::gateway::{ConfigSource, Gateway};

// jemalloc, with its background thread (below), gives the memory of a burst back to the
// system: bench/ measures memory per idle connection after 2,000 concurrent requests.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread returns freed pages to the
/// system within about a second (the default waits 10 s and only on allocator activity), so
/// memory after a burst of connections falls back to what the open ones hold. Each thread
/// caches at least 64 freed blocks per size (the default is 20 for blocks over about 1 KB):
/// every exchange allocates a few of those, and with more exchanges in flight than the cache
/// holds, each request's blocks went back to the shared arena and came out again (about 3%
/// of the instructions per request, measured with bench/instructions.sh).
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &u8 =
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_nslots_small_min:64\0"[0];

/// How long requests in flight may run on after SIGTERM or Ctrl-C.
const DRAIN: Duration = Duration::from_secs(10);
/// How long an upgraded process waits, after its drain, for admin replies still being written.
const ADMIN_FINISH: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An edge gateway: routes HTTP traffic to applications from a TOML file",
    after_help = "Examples:\n  gatehouse demo                       try it with built-in backends\n  gatehouse check -c gatehouse.toml    validate a file\n  gatehouse run -c gatehouse.toml      serve (also: gatehouse -f nixy.toml)\n\nSignals: SIGHUP reloads the file; SIGTERM and SIGINT stop after a drain; SIGRTMIN+1 upgrades\n(as `gatehouse upgrade`)."
)]
struct Cli {
    /// Configuration file (drove-gateway's -f works too).
    #[arg(short = 'c', long = "config", short_alias = 'f', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    connection: control::Connection,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic as the configuration file says (the default with --config).
    Run,
    /// Validate the configuration file; errors are printed as FILE:LINE:COL: message.
    /// A file named `*.exs` is Gatehouse's Elixir config, read as data (never run).
    Check,
    /// Serve in the foreground as the Elixir release's `bin/gatehouse start` does, for
    /// HostKit's unit: the config from GATEHOUSE_CONFIG, the state beside GATEHOUSE_STATE.
    Start,
    /// Print a hardened systemd unit (Type=notify, watchdog, CAP_NET_BIND_SERVICE, a
    /// read-only system but the state folder) for this binary.
    SystemdUnit {
        /// The configuration file the unit serves.
        #[arg(long, default_value = "/etc/gatehouse/gatehouse.toml")]
        config_file: PathBuf,
        /// The account it runs as.
        #[arg(long, default_value = "gatehouse")]
        user: String,
        /// The binary's path (default: this one's).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Print shell completions for this CLI (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print this CLI's man page (roff).
    Man,
    /// Print the TOML equivalent of a Gatehouse `.exs` config.
    Convert {
        /// The `.exs` file.
        file: std::path::PathBuf,
    },
    /// Run on a built-in configuration with sample backends, until Ctrl-C.
    /// Print the nginx or HAProxy config for the current routes (synced from the Drove
    /// controllers, or read from a state file) without applying it.
    Render {
        /// A Gatehouse state file to render from instead of asking the controllers.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// Fill the `#DROVE-SERVERS-BEGIN <backend>` blocks of `haproxy_config` from the saved
    /// server state, before HAProxy starts or reloads (drove-gateway's
    /// `-sync-haproxy-state-config`, which works too).
    SyncHaproxyStateConfig,
    /// Deploy a service to new targets on a running instance: health-check them, switch
    /// every host and path at once, drain the old targets (kamal-proxy's `deploy`).
    Deploy(Box<control::DeployArgs>),
    /// Remove a deployed service at once, without a drain.
    #[command(alias = "rm")]
    Remove { service: String },
    /// Hold new requests to a deployed service until `resume` (or --max-pause, then 504),
    /// after draining the ones in flight.
    Pause(control::StateArgs),
    /// Answer 503 with --message for a deployed service, after draining the requests in
    /// flight. Without SERVICE: stop the instance `start` runs, as SIGTERM does, and return
    /// once it has exited (the Elixir release's `bin/gatehouse stop`).
    Stop(control::StopArgs),
    /// Serve a paused or stopped service again; held requests go on.
    Resume(control::StateArgs),
    /// List the deployed services.
    #[command(alias = "ls")]
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show the certificates ACME keeps: names, issuer, expiry, next renewal, last error.
    Certs {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Replace the running instance by the binary now at its path, without dropping a
    /// connection: the new process gets the listening sockets and the Drove views, and once
    /// it serves the old one drains and exits (also: SIGRTMIN+1).
    Upgrade,
    /// Canary releases of a deployed service: `rollout deploy`, `set`, `stop`.
    Rollout {
        #[command(subcommand)]
        command: control::RolloutCommand,
    },
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo's admin API listens.
        #[arg(long, default_value = "127.0.0.1:6000")]
        admin: SocketAddr,
        /// Print the demo's configuration file and exit.
        #[arg(long)]
        print_config: bool,
    },
}

fn main() -> ExitCode {
    upgrade::receive();
    let program = std::env::args_os().next().map(std::path::PathBuf::from);
    if program.as_deref().and_then(std::path::Path::file_name).is_some_and(|name| name == "kamal-proxy") {
        return report(kamal::main(std::env::args().collect()));
    }
    // drove-gateway's systemd drop-ins call `nixy -sync-haproxy-state-config -f FILE`.
    let args =
        std::env::args()
            .map(|a| if a == "-sync-haproxy-state-config" { "sync-haproxy-state-config".into() } else { a });
    let cli = Cli::parse_from(args);
    let result = match (cli.command, cli.config) {
        (Some(Command::Demo { listen, admin, print_config }), _) => demo(listen, admin, print_config),
        (Some(Command::Check), Some(path)) => return check(&path),
        (Some(Command::Completions { shell }), _) => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "gatehouse", &mut text);
            return print_bytes(&text);
        }
        (Some(Command::Man), _) => {
            let mut page = Vec::new();
            // Rendering into memory cannot fail; a closed stdout is reported below.
            let _ = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page);
            return print_bytes(&page);
        }
        (Some(Command::SystemdUnit { config_file, user, binary }), _) => {
            let binary = binary.or_else(|| std::env::current_exe().ok()).unwrap_or_else(|| "/usr/bin/gatehouse".into());
            return print_bytes(unit::render(&binary, &config_file, &user).as_bytes());
        }
        (Some(Command::Convert { file }), _) => match gatehouse_config::convert_exs(&file) {
            Ok(toml) => return print_bytes(toml.as_bytes()),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        (Some(Command::Render { state }), Some(path)) => render(&path, state.as_deref()),
        (Some(Command::SyncHaproxyStateConfig), Some(path)) => sync_haproxy_state_config(&path),
        (Some(Command::Run) | None, Some(path)) => run(ConfigSource::File { path, state: None }),
        (Some(Command::Start), _) => release::start(),
        (Some(Command::Stop(args)), _) if args.service.is_none() => release::stop(),
        (Some(Command::Check | Command::Run | Command::Render { .. } | Command::SyncHaproxyStateConfig), None) => {
            eprintln!("gatehouse: --config FILE is required (see gatehouse --help)");
            return ExitCode::from(2);
        }
        (None, None) => {
            eprintln!("gatehouse: nothing to do. Try `gatehouse demo`, or `gatehouse run --config FILE` (see --help).");
            return ExitCode::from(2);
        }
        // The control commands: deploy, remove, list, pause, stop, resume.
        (Some(command), config) => control_command(&command, &cli.connection, config.as_deref()),
    };
    report(result)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            upgrade::fail(&format!("{e:#}"));
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes generated text to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("gatehouse: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Sends a control command to the running instance.
fn control_command(
    command: &Command,
    connection: &control::Connection,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let socket = connection.socket(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            Command::Deploy(args) => control::deploy(&socket, args).await,
            Command::Remove { service } => control::remove(&socket, service).await,
            Command::List { json } => control::list(&socket, *json).await,
            Command::Certs { json } => control::certificates(&socket, *json).await,
            Command::Pause(args) => control::change_state(&socket, "pause", args).await,
            Command::Stop(args) => control::change_state(&socket, "stop", &args.for_service()?).await,
            Command::Resume(args) => control::change_state(&socket, "resume", args).await,
            Command::Rollout { command } => control::rollout(&socket, command).await,
            Command::Upgrade => control::upgrade(&socket).await,
            _ => anyhow::bail!("not a control command"),
        }
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match gatehouse_config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("{warning} (warning)");
            }
            println!(
                "{}: OK ({} services, {} listeners)",
                path.display(),
                config.services.len(),
                config.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn render(path: &std::path::Path, state: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = gatehouse_config::load(path)?;
    let settings = config
        .templated
        .clone()
        .context("`render` needs an nginx or HAProxy engine (`proxy_platform`, `nginx_template`, ...)")?;
    let views: Vec<Option<gatehouse_drove::NamespaceView>> = match state {
        Some(file) => {
            let mut saved = gatehouse_drove::load_state_file(file)?;
            config.drove.namespaces.iter().map(|ns| saved.remove(&ns.name)).collect()
        }
        None => runtime()?.block_on(sync_once(&config))?,
    };
    let namespaces: Vec<_> = config.drove.namespaces.iter().zip(views).collect();
    let data = rendering::rendering_data(&config, &[], &settings, &gateway::xproxy(&config), &namespaces);
    let files = settings.files.as_ref().context("`render` needs a template; reloads are disabled, so there is none")?;
    let template =
        gatehouse_templated::Template::load(&files.template_path, &settings.left_delimiter, &settings.right_delimiter)?;
    print!("{}", template.render(&data, &gatehouse_templated::clock::go_time(std::time::SystemTime::now()))?);
    Ok(())
}

fn sync_haproxy_state_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = gatehouse_config::load(path)?;
    let settings =
        config.templated.as_ref().filter(|_| config.proxy_platform == gatehouse_config::ProxyPlatform::Haproxy);
    let state = settings
        .and_then(|t| t.haproxy_state_file.clone())
        .context("needs proxy_platform = \"haproxy\" and haproxy_manage_global_server_state_file = true")?;
    let target = state.config_path.context("needs `haproxy_config`: the file with the #DROVE-SERVERS-BEGIN blocks")?;
    let text = std::fs::read_to_string(&target).with_context(|| format!("cannot read {}", target.display()))?;
    anyhow::ensure!(!text.contains('\0'), "{} has NUL bytes", target.display());
    let saved = match std::fs::read_to_string(&state.path) {
        Ok(saved) => Some(gatehouse_templated::haproxy::saved_servers(&saved)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("gatehouse: {} does not exist yet; the managed blocks are emptied", state.path.display());
            None
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", state.path.display())),
    };
    let naming = settings.map(|t| &t.haproxy);
    let rewritten = gatehouse_templated::haproxy::rewrite_blocks(
        &text,
        saved.as_ref(),
        naming.map_or("", |h| &h.add_server_attributes),
        naming.map_or("", |h| &h.add_server_ssl_attributes),
    )
    .with_context(|| format!("{}", target.display()))?;
    if rewritten == text {
        println!("{}: servers already current", target.display());
    } else {
        gatehouse_files::replace(&target, rewritten.as_bytes())
            .with_context(|| format!("cannot write {}", target.display()))?;
        let servers = saved.as_ref().map_or(0, |s| s.values().map(Vec::len).sum::<usize>());
        println!("{}: managed blocks rewritten ({servers} saved servers)", target.display());
    }
    Ok(())
}

/// Reads every namespace once from its controllers (no state file), waiting at most the
/// API timeout plus the first probe round.
async fn sync_once(config: &gatehouse_config::Config) -> anyhow::Result<Vec<Option<gatehouse_drove::NamespaceView>>> {
    let mut settings = config.drove.clone();
    settings.state_path = None;
    let wait = settings.api_timeout + Duration::from_secs(2);
    let metrics = gatehouse_metrics::Metrics::new();
    let source = gatehouse_drove::DroveSource::start(settings, Default::default(), &metrics, |_: &[String]| {});
    let deadline = tokio::time::Instant::now() + wait;
    while source.namespaces().iter().any(|ns| !ns.status().synced) {
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = source
                .namespaces()
                .iter()
                .filter(|ns| !ns.status().synced)
                .map(|ns| ns.settings.name.clone())
                .collect();
            anyhow::bail!("no sync from the controllers of {} within {wait:?}", missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(source.namespaces().iter().map(|ns| ns.view()).collect())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // The admin API, signals, reloads, deploys, health checks and Drove polling; the proxy
    // has its own worker threads.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gatehouse-control")
        .on_thread_start(yield_to_the_proxy)
        .enable_all()
        .build()
        .context("cannot start the control runtime")
}

/// How much lower than the proxy's workers the control threads run (nice value).
const CONTROL_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority, so on a busy CPU the proxy's workers preempt the
/// control work (a deploy's save and table build, a health check) instead of queueing
/// requests behind it. The kernel still gives it a share, so control work never starves.
fn yield_to_the_proxy() {
    // SAFETY: plain system calls on the calling thread; no memory is passed.
    let done = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, CONTROL_NICE)
    };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "control thread keeps the normal priority");
    }
}

fn run(source: ConfigSource) -> anyhow::Result<()> {
    run_with(source, || {})
}

/// [`run`], calling `logged` once logging is set up.
fn run_with(source: ConfigSource, logged: impl FnOnce()) -> anyhow::Result<()> {
    let config = source.load()?;
    let log = logging::init(&config.log_level);
    logged();
    runtime()?.block_on(serve(source, config, log, None))
}

fn demo(listen: SocketAddr, admin: SocketAddr, print_config: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let demo = demo::prepare(listen, admin).await?;
        if print_config {
            print!("{}", demo.text);
            return Ok(());
        }
        let config = demo.source.load()?;
        let log = logging::init(&config.log_level);
        let banner = demo::instructions(listen, admin, demo.web1());
        let _changes = demo.start_cluster_changes();
        serve(demo.source, config, log, Some(banner)).await
    })
}

async fn serve(
    source: ConfigSource,
    config: gatehouse_config::Config,
    log: logging::LogHandle,
    banner: Option<String>,
) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let admin_address = config.admin.address;
    let admin = match upgrade::take_tcp(admin_address) {
        Some(socket) => {
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket)?
        }
        None => tokio::net::TcpListener::bind(admin_address).await.with_context(|| {
            format!("cannot listen for the admin API on {admin_address} (set `address` and `port`)")
        })?,
    };
    let admin_tls = match &config.admin.tls {
        Some(paths) => {
            let certs = gatehouse_native::Certificates::load(&[(paths.cert.clone(), paths.key.clone())])
                .context("admin API TLS (port_tls_certfile, port_tls_keyfile)")?;
            let store = Arc::new(gatehouse_native::CertStore::new(certs));
            Some(gatehouse_native::server_config(store, None, &[b"http/1.1"]).context("admin API TLS")?)
        }
        None => None,
    };
    let admin_socket_path = config.admin.socket.clone();
    let socket = match &admin_socket_path {
        Some(path) => admin_socket::bind(path).await?,
        None => None,
    };
    // What a binary upgrade hands over besides the proxy's listeners.
    let mut handed = upgrade::Sockets::default();
    handed.tcp.push((admin_address, std::os::fd::AsFd::as_fd(&admin).try_clone_to_owned()?));
    if let Some((listener, file)) = &socket {
        handed.unix.push((file.0.clone(), std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?));
    }
    gatehouse_native::install_default_provider();
    let gateway = Gateway::start(source, config, log)?;
    // After an upgrade the admin servers stop accepting but finish what they answer: the
    // reply to `gatehouse upgrade` itself is still being written when the new process serves.
    let (stop_admin, admin_stopping) = tokio::sync::watch::channel(false);
    let admin_stop_signal = move || {
        let mut stopping = admin_stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let mut admin_tasks = Vec::new();
    let socket_file = socket.map(|(listener, file)| {
        tracing::info!(socket = %file.0.display(), "admin socket listening");
        let router = admin::router(gateway.clone(), admin::Access::Socket);
        let stopped = admin_stop_signal();
        admin_tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "admin socket stopped");
            }
        }));
        file
    });
    let scheme = if admin_tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %admin.local_addr()?, scheme, "admin API listening");
    let router = admin::router(gateway.clone(), admin::Access::Tcp);
    let stopped = admin_stop_signal();
    admin_tasks.push(tokio::spawn(async move {
        let served = match admin_tls {
            Some(tls) => match admin_tls::TlsListener::new(admin, tls) {
                Ok(listener) => axum::serve(listener, router).with_graceful_shutdown(stopped).await,
                Err(e) => Err(e),
            },
            None => axum::serve(admin, router).with_graceful_shutdown(stopped).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));
    if let Some(banner) = banner {
        println!("{banner}");
    }
    handed.tcp.extend(gateway.listening_sockets()?);
    systemd::ready(&gateway.status_line());
    let upgraded = upgrade::arm(&gateway, handed, admin_socket_path.as_deref());
    systemd::spawn_watchdog(gateway.clone());
    let ending = wait_for_signals(&gateway, upgraded).await?;
    match ending {
        Ending::Stop => {
            systemd::stopping();
            upgrade::stop_accepting(false);
            tracing::info!(drain = ?DRAIN, "stopping: no new connections, letting requests finish");
        }
        Ending::Upgraded(pid) => {
            // The new process serves on the same sockets and is systemd's main process now.
            stop_admin.send_replace(true);
            if let Some(file) = socket_file {
                file.keep();
            }
            upgrade::stop_accepting(true);
            gateway.hand_over();
            tracing::info!(new_process = pid, drain = ?DRAIN, "upgraded: the new process serves; this one stops accepting and lets requests finish");
        }
    }
    let drain = gatehouse_native::Drain { timeout: DRAIN, handover: matches!(ending, Ending::Upgraded(_)) };
    let stopping = gateway.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown(drain)).await?;
    if matches!(ending, Ending::Upgraded(_)) {
        // Bounded: an admin client that keeps its connection busy does not hold this process.
        let finished = async {
            for task in admin_tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(ADMIN_FINISH, finished).await.is_err() {
            tracing::warn!(waited = ?ADMIN_FINISH, "admin requests still open after the upgrade were cut");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Why serving ends.
enum Ending {
    /// SIGTERM or SIGINT.
    Stop,
    /// A binary upgrade: this process id serves now.
    Upgraded(u32),
}

/// SIGHUP reloads; SIGTERM and SIGINT return, and so does a binary upgrade once the new
/// process serves. SIGUSR1 and SIGUSR2 are what drove-gateway's systemd drop-ins send around
/// an nginx or HAProxy restart: hold changes back, then catch up.
async fn wait_for_signals(gateway: &Arc<Gateway>, mut upgraded: upgrade::Upgraded) -> anyhow::Result<Ending> {
    let mut restarting = signal(SignalKind::user_defined1())?;
    let mut restarted = signal(SignalKind::user_defined2())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = gateway.reload().await;
            }
            _ = restarting.recv() => {
                tracing::warn!("SIGUSR1: the proxy is restarting; changes wait for SIGUSR2");
                if let Some(engine) = gateway.templated() {
                    engine.proxy_restarting();
                }
            }
            _ = restarted.recv() => {
                tracing::info!("SIGUSR2: the proxy is back; reconciling");
                if let Some(engine) = gateway.templated() {
                    engine.proxy_restarted();
                }
            }
            _ = terminate.recv() => return Ok(Ending::Stop),
            _ = interrupt.recv() => return Ok(Ending::Stop),
            outcome = &mut upgraded => match outcome {
                Ok(child) => return Ok(Ending::Upgraded(child.id())),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "binary upgrades stopped working; this process serves on");
                    upgraded = Box::pin(std::future::pending());
                }
            },
        }
    }
}
