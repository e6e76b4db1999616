//! The interface of the Elixir Gatehouse's release, which HostKit's unit calls:
//! `gatehouse start` serves in the foreground with the config from `GATEHOUSE_CONFIG` and the
//! state from `GATEHOUSE_STATE`; `gatehouse stop` stops that instance as SIGTERM does and
//! returns once it has exited. The two meet through a pid file in the runtime folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::gateway::ConfigSource;

/// How long `stop` waits beyond the drain for the process to be gone.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn start() -> anyhow::Result<()> {
    let path = std::env::var_os("GATEHOUSE_CONFIG")
        .map(PathBuf::from)
        .context("GATEHOUSE_CONFIG is not set: it names the config file (HostKit writes it to /etc/gatehouse/env)")?;
    let state = std::env::var_os("GATEHOUSE_STATE").map(|s| gatehouse_config::state_beside(Path::new(&s)));
    // The Elixir release's own variables: nothing here uses them; names only, never values
    // (the cookie is a secret).
    let mut ignored: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("RELEASE_") || name == "GATEHOUSE_COOKIE")
        .collect();
    ignored.sort();
    let pid_file = PidFile::claim(gatehouse_config::default_pid_file())?;
    let result = crate::run_with(ConfigSource::File { path, state }, || {
        if !ignored.is_empty() {
            tracing::info!(variables = %ignored.join(","), "the Elixir release's variables are accepted and ignored");
        }
    });
    drop(pid_file);
    result
}

pub fn stop() -> anyhow::Result<()> {
    let path = gatehouse_config::default_pid_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("gatehouse is not running (no {})", path.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let pid: i32 = text.trim().parse().with_context(|| format!("{}: not a process id", path.display()))?;
    if !is_running_gatehouse(pid) {
        eprintln!("gatehouse is not running (stale {})", path.display());
        return Ok(());
    }
    // SAFETY: a plain system call; `pid` is a live gatehouse process, checked above.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot signal process {pid}"));
    }
    let deadline = Instant::now() + crate::DRAIN + STOP_GRACE;
    while is_running_gatehouse(pid) {
        if Instant::now() > deadline {
            anyhow::bail!("process {pid} did not stop within {:?}", crate::DRAIN + STOP_GRACE);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether `pid` is a running (not exited) process of this program.
fn is_running_gatehouse(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows the last `)`.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let ours = std::env::current_exe().ok();
    state.is_some_and(|s| s != 'Z' && s != 'X') && exe.is_some() && exe == ours
}

/// The pid file of a running `start`, removed when it ends.
struct PidFile(PathBuf);

impl PidFile {
    fn claim(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(other) = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()) {
            // A binary upgrade's new process takes the file over from the old one.
            if is_running_gatehouse(other) && crate::upgrade::replaces() != Some(other as u32) {
                anyhow::bail!("gatehouse is already running (process {other}, {})", path.display());
            }
        }
        let pid = std::process::id().to_string();
        gatehouse_files::replace(&path, pid.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    /// Removes the file unless a binary upgrade's new process wrote its own id there.
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
