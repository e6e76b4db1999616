//! HAProxy's `show servers state` output (format version 1), read by field position.

/// One server as `show servers state` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state` bits: 0x01/0x02/0x20 maintenance, 0x08/0x10 drain.
    pub admin_state: u8,
}

impl ServerState {
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x23 != 0
    }

    pub fn draining(&self) -> bool {
        self.admin_state & 0x18 != 0
    }

    /// Taking traffic as far as the admin state goes (health is HAProxy's business).
    pub fn ready(&self) -> bool {
        !self.in_maintenance() && !self.draining()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("`show servers state` did not start with format version 1: {0:?}")]
    Version(String),
    #[error("`show servers state` line {line} has {fields} fields, fewer than 19: {text:?}")]
    Short { line: usize, fields: usize, text: String },
    #[error("`show servers state` line {line}: bad {what} {value:?}")]
    Field { line: usize, what: &'static str, value: String },
}

/// Parses the whole output (every backend, or one).
pub fn parse(text: &str) -> Result<Vec<ServerState>, StateError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, first)) if first.trim() == "1" => {}
        Some((_, first)) => return Err(StateError::Version(first.chars().take(80).collect())),
        None => return Err(StateError::Version(String::new())),
    }
    let mut servers = Vec::new();
    for (i, line) in lines {
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 19 {
            return Err(StateError::Short { line: i + 1, fields: f.len(), text: line.chars().take(120).collect() });
        }
        let number = |what: &'static str, value: &str, radix: u32| {
            u32::from_str_radix(value, radix).map_err(|_| StateError::Field { line: i + 1, what, value: value.into() })
        };
        servers.push(ServerState {
            backend: f[1].to_string(),
            name: f[3].to_string(),
            addr: f[4].to_string(),
            op_state: number("srv_op_state", f[5], 10)? as u8,
            admin_state: number("srv_admin_state", f[6], 16)? as u8,
            port: u16::try_from(number("srv_port", f[18], 10)?).map_err(|_| StateError::Field {
                line: i + 1,
                what: "srv_port",
                value: f[18].into(),
            })?,
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6.
    const SAMPLE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 a.test 1 server_127.0.0.1_9001 127.0.0.1 2 0 1 1 4 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n3 a.test 2 server_x 127.0.0.1 2 8 1 1 0 1 0 0 0 0 0 0 - 9002 - 0 0 - - 0\n\n";

    #[test]
    fn reads_haproxy_output() {
        let servers = parse(SAMPLE).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            (servers[0].backend.as_str(), servers[0].name.as_str(), servers[0].port),
            ("a.test", "server_127.0.0.1_9001", 9001)
        );
        assert!(servers[0].ready() && servers[1].draining() && !servers[1].ready());
        assert_eq!(parse("1\n").unwrap(), []);
    }

    #[test]
    fn odd_output_is_an_error() {
        assert!(matches!(parse("Unknown command\n"), Err(StateError::Version(_))));
        assert!(matches!(parse("1\n3 a 1 s 1.2.3.4 2\n"), Err(StateError::Short { line: 2, .. })));
        let bad = SAMPLE.replace(" 2 8 1 1 0", " 2 zz 1 1 0");
        assert!(matches!(parse(&bad), Err(StateError::Field { what: "srv_admin_state", .. })));
    }
}
