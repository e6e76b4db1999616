//! What the runtime API must do to turn the servers HAProxy has into the ones the routes
//! want: pure, so every case is a unit test.

use std::collections::{BTreeMap, BTreeSet};

use super::state::ServerState;

/// A server a backend should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedServer {
    pub name: String,
    /// The resolved IP; `None` when its host name cannot be resolved now, so a server of
    /// that name keeps its address and none is added.
    pub addr: Option<String>,
    pub port: u16,
    pub https: bool,
}

/// Backend name -> its servers.
pub type Wanted = BTreeMap<String, Vec<WantedServer>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new server: added in maintenance, checks enabled when configured, then ready.
    Add { backend: String, server: WantedServer },
    /// The same host at a new address.
    Move { backend: String, name: String, addr: String, port: u16 },
    /// Wanted but held in maintenance or drain.
    Ready { backend: String, name: String },
    /// Not wanted: drain, and delete once its sessions end.
    Drain { backend: String, name: String },
}

/// The steps, adds first so a replacement takes traffic before the old server drains, and
/// the wanted backends HAProxy does not have (`backends` are those it has; they need a
/// config reload).
pub fn plan(wanted: &Wanted, current: &[ServerState], backends: &BTreeSet<String>) -> (Vec<Step>, Vec<String>) {
    let mut by_backend: BTreeMap<&str, BTreeMap<&str, &ServerState>> =
        backends.iter().map(|b| (b.as_str(), BTreeMap::new())).collect();
    for s in current {
        by_backend.entry(&s.backend).or_default().insert(&s.name, s);
    }
    let (mut adds, mut others, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for (backend, servers) in wanted {
        let Some(have) = by_backend.get(backend.as_str()) else {
            missing.push(backend.clone());
            continue;
        };
        let names: BTreeSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        for server in servers {
            match (have.get(server.name.as_str()), &server.addr) {
                (None, None) => {}
                (None, Some(_)) => adds.push(Step::Add { backend: backend.clone(), server: server.clone() }),
                (Some(s), addr) => {
                    let addr = addr.as_deref().unwrap_or(&s.addr);
                    if s.addr != addr || s.port != server.port {
                        others.push(Step::Move {
                            backend: backend.clone(),
                            name: server.name.clone(),
                            addr: addr.to_string(),
                            port: server.port,
                        });
                    }
                    if !s.ready() {
                        others.push(Step::Ready { backend: backend.clone(), name: server.name.clone() });
                    }
                }
            }
        }
        for (name, s) in have {
            if !names.contains(name) && !s.draining() && !s.in_maintenance() {
                others.push(Step::Drain { backend: backend.clone(), name: name.to_string() });
            }
        }
    }
    adds.extend(others);
    (adds, missing)
}

/// The runtime API commands of one step. `attributes` is `haproxy_add_server_attributes_string`;
/// `ssl` is appended for https servers.
pub fn commands(step: &Step, attributes: &str, ssl: &str) -> Vec<String> {
    match step {
        Step::Add { backend, server } => {
            let at = gatehouse_model::host_port(server.addr.as_deref().unwrap_or_default(), server.port);
            let mut add = format!("add server {backend}/{} {at}", server.name);
            for extra in [attributes, if server.https { ssl } else { "" }] {
                if !extra.trim().is_empty() {
                    add.push(' ');
                    add.push_str(extra.trim());
                }
            }
            let mut out = vec![add];
            // Dynamic servers start with checks off; HAProxy's own checks decide health.
            if attributes.split_whitespace().any(|w| w == "check") {
                out.push(format!("enable health {backend}/{}", server.name));
            }
            out.push(format!("set server {backend}/{} state ready", server.name));
            out
        }
        Step::Move { backend, name, addr, port } => {
            vec![format!("set server {backend}/{name} addr {addr} port {port}")]
        }
        Step::Ready { backend, name } => vec![format!("set server {backend}/{name} state ready")],
        Step::Drain { backend, name } => vec![format!("set server {backend}/{name} state drain")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(backend: &str, name: &str, addr: &str, port: u16, admin_state: u8) -> ServerState {
        ServerState { backend: backend.into(), name: name.into(), addr: addr.into(), port, op_state: 2, admin_state }
    }

    fn want(name: &str, addr: &str, port: u16) -> WantedServer {
        WantedServer { name: name.into(), addr: Some(addr.into()), port, https: false }
    }

    #[test]
    fn adds_first_then_moves_readies_and_drains() {
        let wanted = Wanted::from([
            (
                "a".to_string(),
                vec![
                    want("s1", "10.0.0.1", 1),
                    want("s2", "10.0.0.9", 2),
                    want("s3", "10.0.0.3", 3),
                    want("s5", "10.0.0.5", 5),
                ],
            ),
            ("gone-from-haproxy".to_string(), vec![want("x", "10.0.0.7", 7)]),
        ]);
        let current = [
            have("a", "s1", "10.0.0.1", 1, 0),
            have("a", "s2", "10.0.0.2", 2, 0),
            have("a", "s3", "10.0.0.3", 3, 0x01),
            have("a", "s4", "10.0.0.4", 4, 0),
            have("a", "old", "10.0.0.6", 6, 0x08),
            have("untouched", "z", "10.0.0.8", 8, 0),
        ];
        let backends = BTreeSet::from(["a".to_string(), "untouched".to_string(), "empty".to_string()]);
        let (steps, missing) = plan(&wanted, &current, &backends);
        assert_eq!(missing, ["gone-from-haproxy"], "a backend HAProxy lacks needs a reload");
        assert_eq!(
            steps,
            [
                Step::Add { backend: "a".into(), server: want("s5", "10.0.0.5", 5) },
                Step::Move { backend: "a".into(), name: "s2".into(), addr: "10.0.0.9".into(), port: 2 },
                Step::Ready { backend: "a".into(), name: "s3".into() },
                Step::Drain { backend: "a".into(), name: "s4".into() },
            ],
            "s1 is as wanted; `old` is draining already; other backends are left alone"
        );
        let (steps, _) = plan(&wanted, &[have("a", "s1", "10.0.0.1", 1, 0)], &backends);
        assert_eq!(steps.len(), 3);
        let empty = Wanted::from([("empty".to_string(), vec![want("n", "10.0.0.2", 2)])]);
        let (steps, missing) = plan(&empty, &[], &backends);
        assert!(missing.is_empty() && steps.len() == 1, "a backend without servers is still there");
        let unresolved = Wanted::from([(
            "a".to_string(),
            vec![WantedServer { addr: None, ..want("s1", "", 1) }, WantedServer { addr: None, ..want("s9", "", 9) }],
        )]);
        let (steps, _) = plan(&unresolved, &[have("a", "s1", "10.0.0.1", 1, 0)], &backends);
        assert!(steps.is_empty(), "a DNS failure neither moves nor removes a live server, nor adds one: {steps:?}");
    }

    #[test]
    fn commands_carry_the_configured_attributes() {
        let add = Step::Add { backend: "b".into(), server: WantedServer { https: true, ..want("s", "10.0.0.1", 443) } };
        assert_eq!(
            commands(&add, "check inter 2s", "ssl verify none"),
            [
                "add server b/s 10.0.0.1:443 check inter 2s ssl verify none",
                "enable health b/s",
                "set server b/s state ready"
            ]
        );
        let plain = Step::Add { backend: "b".into(), server: want("s", "::1", 80) };
        assert_eq!(commands(&plain, "", "ssl verify none"), ["add server b/s [::1]:80", "set server b/s state ready"]);
        let drain = Step::Drain { backend: "b".into(), name: "s".into() };
        assert_eq!(commands(&drain, "", ""), ["set server b/s state drain"]);
    }
}
