//! systemd's notify protocol, read from a real datagram socket as systemd would: READY=1
//! with a status once serving, watchdog pings at half WATCHDOG_USEC, RELOADING=1 with
//! MONOTONIC_USEC around a reload, STOPPING=1 on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{backend, client, Gatehouse};

/// The next message (bounded wait), or None.
fn next(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Messages until one contains `needle` (at most 10 s); returns it.
fn until(socket: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(message) = next(socket) {
            seen.push(message.clone());
            if message.contains(needle) {
                return message;
            }
        }
    }
    panic!("no {needle:?} from gatehouse; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reloads_watchdog_and_stop_are_told_to_systemd() {
    let blue = backend::start("blue").await;
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let config = format!(
        "port = 0\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\ntargets = [\"{}\"]\n",
        blue.url()
    );
    let env = [("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let gatehouse = Gatehouse::start_with(&config, tempfile::tempdir().unwrap(), &env);
    let mut seen = Vec::new();
    let ready = until(&systemd, "READY=1", &mut seen);
    assert!(ready.contains("STATUS=serving 1 services on 127.0.0.1:"), "{ready}");
    // Ready means serving.
    assert_eq!(client::get(gatehouse.listener(), "web.test", "/").await.status, 200);
    // Pings at half of 200 ms.
    let started = Instant::now();
    for _ in 0..3 {
        until(&systemd, "WATCHDOG=1", &mut seen);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "pings every 100 ms: {seen:?}");

    gatehouse.signal("HUP");
    let reloading = until(&systemd, "RELOADING=1", &mut seen);
    let usec: u64 = reloading.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
    assert!(usec > 0);
    assert!(until(&systemd, "READY=1", &mut seen).contains("route table 2"));

    gatehouse.signal("TERM");
    assert!(until(&systemd, "STOPPING=1", &mut seen).contains("STATUS=stopping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_comes_from_the_socket_systemd_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let blue = backend::start("blue").await;
    // The socket systemd would have bound; the test keeps it open too, so Gatehouse could
    // not bind the address itself.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "port = 0\n[[listeners]]\naddress = \"{address}\"\n[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\ntargets = [\"{}\"]\n",
        blue.url()
    );
    let path = support::write(dir.path(), "gatehouse.toml", &config);
    // As systemd starts a service: the socket at fd 3, LISTEN_PID naming the service itself.
    let mut command = std::process::Command::new("/bin/sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", support::binary(), "run", "--config", path.to_str().unwrap()])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web");
    let fd = socket.as_raw_fd();
    // SAFETY: dup2 in the child before exec, on a descriptor the parent keeps open.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let gatehouse = Gatehouse::spawn_command(command, dir, path);
    assert!(gatehouse.wait_for_log("listening on the socket systemd passed"), "{}", gatehouse.logs().join("\n"));
    assert_eq!(gatehouse.listener(), address);
    let reply = client::get(address, "web.test", "/").await;
    assert_eq!(reply.status, 200, "{}", gatehouse.logs().join("\n"));
}
