//! Membership changes through HAProxy's runtime API, without a reload: one aggregated
//! `show servers state` read, the planned commands pipelined in batches, and removed servers
//! drained until their sessions end (or a timeout passes) before they are deleted.

use std::time::{Duration, Instant};

use super::plan::{commands, plan, Step, Wanted};
use super::socket::{run, SocketAddress, SocketError};
use super::state::{parse, ServerState, StateError};

/// Commands per connection.
const BATCH: usize = 500;
/// One socket exchange may take this long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("HAProxy has no backend {0:?} yet: the config must be reloaded first")]
    MissingBackends(Vec<String>),
    #[error("HAProxy refused {failed} of {sent} runtime commands; first: `{command}`: {answer}")]
    Refused { sent: usize, failed: usize, command: String, answer: String },
}

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub added: usize,
    pub moved: usize,
    pub readied: usize,
    /// Servers set to drain; [`finish_drains`] deletes them.
    pub draining: Vec<(String, String)>,
}

/// Every server HAProxy has, from one `show servers state`.
pub async fn servers(socket: &SocketAddress) -> Result<Vec<ServerState>, RuntimeError> {
    let state = run(socket, &["show servers state".to_string()], EXCHANGE_TIMEOUT).await?;
    Ok(parse(state.first().map_or("", String::as_str))?)
}

/// Brings HAProxy's servers to `wanted`. `attributes` and `ssl` are drove-gateway's
/// `haproxy_add_server_attributes_string` and `haproxy_add_server_ssl_attributes_string`.
pub async fn reconcile(
    socket: &SocketAddress,
    wanted: &Wanted,
    attributes: &str,
    ssl: &str,
) -> Result<Reconciled, RuntimeError> {
    let current = servers(socket).await?;
    let (steps, missing) = plan(wanted, &current);
    if !missing.is_empty() {
        return Err(RuntimeError::MissingBackends(missing));
    }
    let mut done = Reconciled::default();
    let mut script = Vec::new();
    for step in &steps {
        match step {
            Step::Add { .. } => done.added += 1,
            Step::Move { .. } => done.moved += 1,
            Step::Ready { .. } => done.readied += 1,
            Step::Drain { backend, name } => done.draining.push((backend.clone(), name.clone())),
        }
        script.extend(commands(step, attributes, ssl));
    }
    execute(socket, &script).await?;
    Ok(done)
}

/// Runs `script` in batches and checks every answer.
async fn execute(socket: &SocketAddress, script: &[String]) -> Result<(), RuntimeError> {
    let mut failures = Vec::new();
    for batch in script.chunks(BATCH) {
        let answers = run(socket, batch, EXCHANGE_TIMEOUT).await?;
        for (command, answer) in batch.iter().zip(answers) {
            if !accepted(command, &answer) {
                failures.push((command.clone(), answer));
            }
        }
    }
    match failures.first() {
        None => Ok(()),
        Some((command, answer)) => Err(RuntimeError::Refused {
            sent: script.len(),
            failed: failures.len(),
            command: command.clone(),
            answer: answer.clone(),
        }),
    }
}

/// HAProxy answers `set` and `enable` with nothing, and `add`/`del` with a fixed sentence.
fn accepted(command: &str, answer: &str) -> bool {
    if command.starts_with("add server ") {
        answer.contains("New server registered")
    } else if command.starts_with("del server ") {
        answer.contains("Server deleted")
    } else {
        answer.trim().is_empty()
    }
}

/// Current sessions of one server, from `show stat` (`scur`, the fifth column).
async fn sessions(socket: &SocketAddress, backend: &str, name: &str) -> Result<Option<u64>, RuntimeError> {
    let answers = run(socket, &[format!("show stat {backend} 4 -1")], EXCHANGE_TIMEOUT).await?;
    let text = answers.first().map_or("", String::as_str);
    Ok(text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(',').collect();
        (f.len() > 4 && f[0] == backend && f[1] == name).then(|| f[4].parse().unwrap_or(0))
    }))
}

/// Deletes drained servers once their sessions end, or when `timeout` passes (then their
/// remaining sessions are cut). Returns the servers deleted.
pub async fn finish_drains(
    socket: &SocketAddress,
    draining: &[(String, String)],
    timeout: Duration,
) -> Result<usize, RuntimeError> {
    let deadline = Instant::now() + timeout;
    let mut left: Vec<&(String, String)> = draining.iter().collect();
    let mut deleted = 0;
    while !left.is_empty() {
        let mut still = Vec::new();
        for server in left {
            let (backend, name) = server;
            let idle = matches!(sessions(socket, backend, name).await?, Some(0) | None);
            if idle || Instant::now() >= deadline {
                let script = [
                    format!("set server {backend}/{name} state maint"),
                    format!("shutdown sessions server {backend}/{name}"),
                    format!("del server {backend}/{name}"),
                ];
                execute(socket, &script).await?;
                deleted += 1;
            } else {
                still.push(server);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(deleted)
}
