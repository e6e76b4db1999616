//! Gatehouse's `.exs` directives mapped onto the TOML file's keys: the same meaning, one
//! reader after this. Each TOML line remembers the `.exs` offset it came from, so errors
//! found later still point into the `.exs` file.

use std::fmt::Write;

use super::syntax::{Call, Node, SyntaxError, Value};

/// TOML text and, for each of its lines, the `.exs` offset it came from.
pub struct Converted {
    pub toml: String,
    pub origins: Vec<usize>,
}

impl Converted {
    fn line(&mut self, at: usize, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            self.toml.push_str(line);
            self.toml.push('\n');
            self.origins.push(at);
        }
    }
}

fn error<T>(at: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError { span: at..at + 1, message: message.into() })
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string(node: &Node, what: &str) -> Result<String, SyntaxError> {
    match &node.value {
        Value::Str(s) => Ok(s.clone()),
        _ => error(node.at, format!("{what} must be a string")),
    }
}

fn integer(node: &Node, what: &str) -> Result<i64, SyntaxError> {
    match &node.value {
        Value::Int(n) => Ok(*n),
        _ => error(node.at, format!("{what} must be a whole number")),
    }
}

fn name(node: &Node, what: &str) -> Result<String, SyntaxError> {
    match &node.value {
        Value::Atom(a) | Value::Str(a) => Ok(a.clone()),
        _ => error(node.at, format!("{what} must be an atom or a string, as `:web`")),
    }
}

fn unknown<T>(call: &Call, key: &str, at: usize, known: &[&str]) -> Result<T, SyntaxError> {
    error(at, format!("`{}` has no option `{key}` that Gatehouse supports (it takes {})", call.name, known.join(", ")))
}

fn positional(call: &Call, max: usize) -> Result<(), SyntaxError> {
    match call.args.get(max) {
        Some(extra) => error(extra.at, format!("`{}` takes at most {max} argument(s) before its options", call.name)),
        None => Ok(()),
    }
}

/// Maps the top-level directives.
pub fn convert(calls: &[Call]) -> Result<Converted, SyntaxError> {
    let mut out = Converted { toml: String::new(), origins: Vec::new() };
    out.line(0, "# Converted from Gatehouse's Elixir config by `gatehouse convert`.");
    // TOML wants the top-level keys before any table: state and admin first, then [acme],
    // the listeners and the services, whatever the order in the file.
    let (mut keys, mut acme_calls, mut listeners, mut services) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for call in calls {
        const TOP: [&str; 7] = ["import", "state", "acme", "admin", "http", "https", "listener"];
        if call.block.is_some() && TOP.contains(&call.name.as_str()) {
            return error(call.at, format!("`{}` takes no `do` block", call.name));
        }
        match call.name.as_str() {
            "import" => match call.args.first().map(|n| &n.value) {
                Some(Value::Alias(module)) if module == "Gatehouse.Config" => {}
                _ => return error(call.at, "only `import Gatehouse.Config` is supported"),
            },
            "state" | "admin" => keys.push(call),
            "acme" => acme_calls.push(call),
            "http" | "https" | "listener" => listeners.push(call),
            "service" => services.push(call),
            other => {
                return error(
                    call.at,
                    format!(
                        "`{other}` is not a Gatehouse directive (state, acme, admin, http, https, listener, service)"
                    ),
                )
            }
        }
    }
    for call in keys {
        match call.name.as_str() {
            "state" => state(&mut out, call)?,
            _ => admin(&mut out, call)?,
        }
    }
    if let Some(second) = acme_calls.get(1) {
        return error(second.at, "`acme` is given twice");
    }
    for call in acme_calls {
        acme(&mut out, call)?;
    }
    for call in listeners {
        listener(&mut out, call)?;
    }
    for call in services {
        service(&mut out, call)?;
    }
    Ok(out)
}

/// `state PATH`: the Elixir release keeps its state there; ours (JSON) goes beside it.
fn state(out: &mut Converted, call: &Call) -> Result<(), SyntaxError> {
    positional(call, 1)?;
    let Some(path) = call.args.first() else { return error(call.at, "`state` takes the state file's path") };
    let path = string(path, "the state path")?;
    let ours = crate::state_beside(std::path::Path::new(&path));
    out.line(call.at, format!("deploy_state = {}", quoted(&ours.to_string_lossy())));
    Ok(())
}

/// `admin port: N, ip: "127.0.0.1", token: "...", socket: "/run/gatehouse.sock"`: this
/// Gatehouse's admin API (the Elixir one has none), written before any table.
fn admin(out: &mut Converted, call: &Call) -> Result<(), SyntaxError> {
    positional(call, 0)?;
    for (key, node) in &call.keywords {
        let line = match key.as_str() {
            "port" => format!("port = {}", integer(node, "`port`")?),
            "ip" => format!("address = {}", quoted(&string(node, "`ip`")?)),
            "token" => format!("admin_token = {}", quoted(&string(node, "`token`")?)),
            "socket" => format!("admin_socket = {}", quoted(&string(node, "`socket`")?)),
            other => return unknown(call, other, node.at, &["port", "ip", "token", "socket"]),
        };
        out.line(node.at, line);
    }
    Ok(())
}

fn acme(out: &mut Converted, call: &Call) -> Result<(), SyntaxError> {
    positional(call, 0)?;
    out.line(call.at, "[acme]");
    const KNOWN: [&str; 6] = ["email", "contact", "directory_url", "cert_directory", "eab_kid", "eab_mac_key"];
    for (key, node) in &call.keywords {
        match key.as_str() {
            "email" | "contact" => {
                let addresses = match &node.value {
                    Value::List(items) => {
                        items.iter().map(|n| string(n, "an e-mail address")).collect::<Result<Vec<_>, _>>()?
                    }
                    _ => vec![string(node, "`email`")?],
                };
                let list: Vec<String> = addresses.iter().map(|a| quoted(a)).collect();
                out.line(node.at, format!("email = [{}]", list.join(", ")));
            }
            "directory_url" => {
                let directory = match &node.value {
                    Value::Atom(a) if a == "lets_encrypt" || a == "production" => "letsencrypt".to_string(),
                    Value::Atom(a) if a == "lets_encrypt_staging" || a == "staging" => {
                        "letsencrypt-staging".to_string()
                    }
                    Value::Str(url) => url.clone(),
                    _ => {
                        return error(
                            node.at,
                            "`directory_url` is :lets_encrypt, :lets_encrypt_staging or a URL string",
                        )
                    }
                };
                out.line(node.at, format!("directory = {}", quoted(&directory)));
            }
            "cert_directory" => out.line(node.at, format!("storage = {}", quoted(&string(node, "`cert_directory`")?))),
            "eab_kid" | "eab_mac_key" => out.line(node.at, format!("{key} = {}", quoted(&string(node, key)?))),
            "renew_before_days" | "poll_attempts" | "poll_interval" => {
                return error(node.at, format!("`{key}`: Gatehouse renews at two thirds of a certificate's lifetime (or when the CA's renewal information says) and polls by itself; remove the option"));
            }
            other => return unknown(call, other, node.at, &KNOWN),
        }
    }
    Ok(())
}

/// `http port: N`, `https port: N, cert: F, key: F`, `listener :http|:https, ...`.
fn listener(out: &mut Converted, call: &Call) -> Result<(), SyntaxError> {
    let tls = match call.name.as_str() {
        "listener" => match call.args.first().map(|n| &n.value) {
            Some(Value::Atom(kind)) if kind == "http" => false,
            Some(Value::Atom(kind)) if kind == "https" => true,
            _ => return error(call.at, "`listener` takes :http or :https first"),
        },
        "https" => true,
        _ => false,
    };
    positional(call, usize::from(call.name == "listener"))?;
    let (mut ip, mut port, mut cert, mut key) = ("0.0.0.0".to_string(), if tls { 443 } else { 80 }, None, None);
    for (option, node) in &call.keywords {
        match option.as_str() {
            "port" => {
                port = integer(node, "`port`")?;
                if !(1..=65535).contains(&port) {
                    return error(node.at, "`port` must be from 1 to 65535");
                }
            }
            "ip" => {
                ip = match &node.value {
                    Value::Str(s) => s.clone(),
                    Value::Tuple(parts) if parts.len() == 4 => {
                        let octets: Vec<String> = parts
                            .iter()
                            .map(|p| integer(p, "an address part").map(|n| n.to_string()))
                            .collect::<Result<_, _>>()?;
                        octets.join(".")
                    }
                    _ => return error(node.at, "`ip` is a string or a tuple as {0, 0, 0, 0}"),
                }
            }
            "cert" => cert = Some(string(node, "`cert`")?),
            "key" => key = Some(string(node, "`key`")?),
            other => return unknown(call, other, node.at, &["ip", "port", "cert", "key"]),
        }
    }
    let address = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
    out.line(call.at, "[[listeners]]");
    out.line(call.at, format!("address = {}", quoted(&address)));
    match (tls, cert, key) {
        (false, None, None) => {}
        (false, _, _) => return error(call.at, "a certificate needs `https`"),
        (true, Some(cert), Some(key)) => {
            out.line(call.at, format!("tls_certificates = [{{ cert = {}, key = {} }}]", quoted(&cert), quoted(&key)));
        }
        (true, None, None) => out.line(call.at, "tls = true"),
        (true, _, _) => return error(call.at, "`cert` and `key` go together"),
    }
    Ok(())
}

/// One target as written: its name, URL and whether it is marked active.
struct Target {
    url: String,
    active: bool,
}

fn service(out: &mut Converted, call: &Call) -> Result<(), SyntaxError> {
    positional(call, 1)?;
    let Some(name_node) = call.args.first() else {
        return error(call.at, "`service` takes a name, as `service :web do`");
    };
    let service_name = name(name_node, "the service name")?;
    let Some(block) = &call.block else { return error(call.at, "`service` needs a `do ... end` block") };
    let (mut hosts, mut targets) = (Vec::new(), Vec::new());
    let mut round_robin = false;
    let mut health = None;
    let mut tls_auto = false;
    for directive in block {
        if directive.block.is_some() {
            return error(directive.at, format!("`{}` takes no `do` block (services do not nest)", directive.name));
        }
        match directive.name.as_str() {
            "host" => {
                positional(directive, 1)?;
                let host = directive.args.first().ok_or(()).or_else(|_| error(directive.at, "`host` takes a name"))?;
                hosts.push((host.at, string(host, "`host`")?.trim().to_ascii_lowercase()));
            }
            "target" => targets.push((directive.at, target(directive)?)),
            "balance" => {
                positional(directive, 2)?;
                round_robin = match directive.args.first().map(|n| &n.value) {
                    Some(Value::Atom(p)) if p == "active" => false,
                    Some(Value::Atom(p)) if p == "round_robin" => true,
                    _ => return error(directive.at, "`balance` is :active or :round_robin"),
                };
                // `health: :required` asks that failing targets leave the rotation, which
                // Gatehouse's checks do.
                if let Some(options) = directive.args.get(1) {
                    match &options.value {
                        Value::List(items) if items.is_empty() => {}
                        Value::Keywords(pairs)
                            if pairs
                                .iter()
                                .all(|(k, v)| k == "health" && v.value == Value::Atom("required".into())) => {}
                        _ => return error(options.at, "`balance` options: [] or [health: :required]"),
                    }
                }
                for (key, node) in &directive.keywords {
                    if key != "health" {
                        return unknown(directive, key, node.at, &["health"]);
                    }
                }
            }
            "health" => health = Some(health_check(directive)?),
            "drain" => {
                // In-flight requests always finish on a target a reload removes; the value is
                // checked, not needed.
                positional(directive, 1)?;
                match directive.args.first().map(|n| &n.value) {
                    Some(Value::Int(ms)) if *ms >= 0 => {}
                    Some(Value::Atom(a)) if a == "infinity" => {}
                    _ => return error(directive.at, "`drain` takes milliseconds or :infinity"),
                }
            }
            "tls" => {
                positional(directive, 1)?;
                tls_auto = match (directive.args.first().map(|n| &n.value), directive.keywords.as_slice()) {
                    (Some(Value::Atom(a)), []) if a == "auto" => true,
                    (Some(Value::Bool(false)), []) => false,
                    (None, [(key, node)]) if key == "mode" && node.value == Value::Atom("auto".into()) => true,
                    _ => return error(directive.at, "`tls` is :auto or false"),
                };
            }
            other => {
                return error(
                    directive.at,
                    format!("`{other}` is not a service directive (host, target, balance, health, drain, tls)"),
                );
            }
        }
    }
    if hosts.is_empty() {
        return error(call.at, format!("service `{service_name}` has no `host`"));
    }
    // `balance :active` serves the targets marked active (the first one when none is);
    // round robin goes over the active ones, or all when none is marked.
    let any_active = targets.iter().any(|(_, t)| t.active);
    let serving: Vec<&(usize, Target)> = match (any_active, round_robin) {
        (true, _) => targets.iter().filter(|(_, t)| t.active).collect(),
        (false, true) => targets.iter().collect(),
        (false, false) => targets.iter().take(1).collect(),
    };
    if serving.is_empty() {
        return error(call.at, format!("service `{service_name}` has no `target`"));
    }
    out.line(call.at, "[[services]]");
    out.line(name_node.at, format!("name = {}", quoted(&service_name)));
    out.line(call.at, "hosts = [");
    for (at, host) in &hosts {
        out.line(*at, format!("  {},", quoted(host)));
    }
    out.line(call.at, "]");
    out.line(call.at, "targets = [");
    for (at, target) in &serving {
        out.line(*at, format!("  {},", quoted(&target.url)));
    }
    out.line(call.at, "]");
    if tls_auto {
        out.line(call.at, "tls = \"auto\"");
    }
    if let Some((at, path, timeout_ms, interval_ms)) = health {
        out.line(at, "[services.health_check]");
        out.line(at, format!("path = {}", quoted(&path)));
        out.line(at, format!("timeout = \"{timeout_ms}ms\""));
        out.line(at, format!("interval = \"{interval_ms}ms\""));
    }
    Ok(())
}

fn target(call: &Call) -> Result<Target, SyntaxError> {
    positional(call, 2)?;
    if call.args.is_empty() {
        return error(call.at, "`target` takes a name and a URL");
    }
    name(&call.args[0], "the target name")?;
    let url = call.args.get(1).map(|n| string(n, "the target URL")).transpose()?;
    let mut active = false;
    for (key, node) in &call.keywords {
        match key.as_str() {
            "active" => match node.value {
                Value::Bool(b) => active = b,
                _ => return error(node.at, "`active` is true or false"),
            },
            "metadata" if matches!(node.value, Value::Map(_) | Value::Keywords(_)) => {}
            "metadata" => return error(node.at, "`metadata` is a map"),
            "to" => {
                return error(
                    node.at,
                    "`to: endpoint(...)` is resolved by HostKit when it plans; give the target's URL",
                );
            }
            "safe_rpc" => return error(node.at, "SafeRPC targets are not supported: give an http:// or https:// URL"),
            other => return unknown(call, other, node.at, &["active", "metadata"]),
        }
    }
    let url = url.ok_or(()).or_else(|_| error(call.at, "`target` needs a URL"))?;
    Ok(Target { url, active })
}

/// `health PATH, timeout: ms, interval: ms` with Gatehouse's defaults (/up, 5000, 1000).
fn health_check(call: &Call) -> Result<(usize, String, i64, i64), SyntaxError> {
    positional(call, 1)?;
    let path = call.args.first().map(|n| string(n, "the health path")).transpose()?.unwrap_or_else(|| "/up".into());
    let (mut timeout, mut interval) = (5000, 1000);
    for (key, node) in &call.keywords {
        let slot = match key.as_str() {
            "timeout" => &mut timeout,
            "interval" => &mut interval,
            other => return unknown(call, other, node.at, &["timeout", "interval"]),
        };
        *slot = integer(node, key)?;
        if *slot <= 0 {
            return error(node.at, format!("`{key}` must be above zero (milliseconds)"));
        }
    }
    Ok((call.at, path, timeout, interval))
}
