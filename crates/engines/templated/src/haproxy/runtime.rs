//! Membership changes through HAProxy's runtime API, without a reload: one aggregated
//! `show servers state` read, the planned commands pipelined in batches, and removed servers
//! drained until their sessions end (or a timeout passes) before they are deleted.

use std::collections::BTreeSet;
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
    #[error("HAProxy lacks {} backend(s) the routes need ({}{}): the config must be reloaded first", .0.len(), .0.iter().take(3).cloned().collect::<Vec<_>>().join(", "), if .0.len() > 3 { ", ..." } else { "" })]
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

/// Saves `show servers state` (what HAProxy's `server-state-file` holds) to `path`,
/// atomically, for `load-server-state-from-file` and the managed blocks after a restart.
pub async fn save_state(socket: &SocketAddress, path: &std::path::Path) -> Result<(), String> {
    let mut state =
        run(socket, &["show servers state".to_string()], EXCHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut text = state.remove(0);
    parse(&text).map_err(|e| e.to_string())?;
    text.push('\n');
    gatehouse_files::replace(path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every backend and every server HAProxy has, from one `show backend` and one aggregated
/// `show servers state` (a backend without servers is only in the first).
pub async fn servers(socket: &SocketAddress) -> Result<(BTreeSet<String>, Vec<ServerState>), RuntimeError> {
    let answers =
        run(socket, &["show backend".to_string(), "show servers state".to_string()], EXCHANGE_TIMEOUT).await?;
    let backends =
        answers[0].lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    Ok((backends, parse(&answers[1])?))
}

/// The servers of some backends, one `show servers state <backend>` each, pipelined; a
/// backend HAProxy does not know is left out of the returned set.
async fn servers_of(
    socket: &SocketAddress,
    names: &[&String],
) -> Result<(BTreeSet<String>, Vec<ServerState>), RuntimeError> {
    let commands: Vec<String> = names.iter().map(|b| format!("show servers state {b}")).collect();
    let answers = run(socket, &commands, EXCHANGE_TIMEOUT).await?;
    let (mut backends, mut servers) = (BTreeSet::new(), Vec::new());
    for (name, answer) in names.iter().zip(answers) {
        // "Can't find backend." for one HAProxy does not have.
        if answer.trim_start().starts_with('1') {
            backends.insert(name.to_string());
            servers.extend(parse(&answer)?);
        }
    }
    Ok((backends, servers))
}

/// Brings HAProxy's servers to `wanted`. With `previous` (what the last reconcile applied,
/// with nothing else changing HAProxy since), only the backends whose servers differ from it
/// are read and touched: a one-server change costs one small read, not all of them.
/// `attributes` and `ssl` are drove-gateway's `haproxy_add_server_attributes_string` and
/// `haproxy_add_server_ssl_attributes_string`.
pub async fn reconcile(
    socket: &SocketAddress,
    wanted: &Wanted,
    previous: Option<&Wanted>,
    attributes: &str,
    ssl: &str,
) -> Result<Reconciled, RuntimeError> {
    let (scope, (backends, current)) = match previous {
        Some(previous) => {
            let changed: Wanted = wanted
                .iter()
                .filter(|(b, s)| previous.get(*b) != Some(*s))
                .map(|(b, s)| (b.clone(), s.clone()))
                .collect();
            if changed.is_empty() {
                return Ok(Reconciled::default());
            }
            let names: Vec<&String> = changed.keys().collect();
            let read = servers_of(socket, &names).await?;
            (changed, read)
        }
        None => (wanted.clone(), servers(socket).await?),
    };
    let (steps, missing) = plan(&scope, &current, &backends);
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
/// remaining sessions are cut). HAProxy refuses to delete a server while it still holds
/// idle connections, which it purges shortly after the server enters maintenance; the
/// delete is retried until then. Returns the servers deleted.
pub async fn finish_drains(
    socket: &SocketAddress,
    draining: &[(String, String)],
    timeout: Duration,
) -> Result<usize, RuntimeError> {
    let deadline = Instant::now() + timeout;
    let mut deleted = 0;
    for (backend, name) in draining {
        while Instant::now() < deadline && !matches!(sessions(socket, backend, name).await?, Some(0) | None) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop =
            [format!("set server {backend}/{name} state maint"), format!("shutdown sessions server {backend}/{name}")];
        execute(socket, &stop).await?;
        let delete = format!("del server {backend}/{name}");
        let give_up = Instant::now().max(deadline) + Duration::from_secs(10);
        loop {
            let answer = run(socket, std::slice::from_ref(&delete), EXCHANGE_TIMEOUT).await?.remove(0);
            if accepted(&delete, &answer) {
                deleted += 1;
                break;
            }
            if Instant::now() >= give_up {
                return Err(RuntimeError::Refused { sent: 1, failed: 1, command: delete, answer });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(deleted)
}
