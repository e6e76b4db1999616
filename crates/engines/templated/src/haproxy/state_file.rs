//! drove-gateway's HAProxy server-state-file support, for setups where the operator owns
//! `haproxy.cfg` and reloads are disabled: after each reconcile the servers are saved as
//! `show servers state` output, and before HAProxy (re)starts the blocks between
//! `#DROVE-SERVERS-BEGIN <backend>` and `#DROVE-SERVERS-END` are rewritten from that file, so
//! the servers added through the API survive a restart.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlocksError {
    #[error("line {0}: #DROVE-SERVERS-BEGIN names no backend")]
    NoBackend(usize),
    #[error("line {0}: #DROVE-SERVERS-BEGIN has no matching #DROVE-SERVERS-END")]
    Unclosed(usize),
    #[error("line {0}: #DROVE-SERVERS-BEGIN inside another block (opened at line {1})")]
    Nested(usize, usize),
    #[error("server-state-file management is enabled but the config has no #DROVE-SERVERS-BEGIN blocks")]
    NoBlocks,
}

const BEGIN: &str = "#DROVE-SERVERS-BEGIN";
const END: &str = "#DROVE-SERVERS-END";

/// A saved server: where it is and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedServer {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub ssl: bool,
}

/// Servers by backend from a saved `show servers state`. Columns are found by the header's
/// names; rows without an address or with a bad port are skipped.
pub fn saved_servers(state: &str) -> BTreeMap<String, Vec<SavedServer>> {
    let mut lines = state.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim) != Some("1") {
        return BTreeMap::new();
    }
    let (mut be, mut name, mut addr, mut port, mut ssl) = (1, 3, 4, 18, 20);
    let mut servers: BTreeMap<String, Vec<SavedServer>> = BTreeMap::new();
    let mut header_seen = false;
    for line in lines {
        if let Some(header) = line.strip_prefix('#') {
            if !header_seen {
                header_seen = true;
                for (i, column) in header.split_whitespace().enumerate() {
                    match column {
                        "be_name" => be = i,
                        "srv_name" => name = i,
                        "srv_addr" => addr = i,
                        "srv_port" => port = i,
                        "srv_use_ssl" => ssl = i,
                        _ => {}
                    }
                }
            }
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let Ok(p @ 1..=65535) = field(port).parse::<u32>() else { continue };
        if field(addr).is_empty() || field(addr) == "-" || field(be).is_empty() || field(name).is_empty() {
            continue;
        }
        servers.entry(field(be).to_string()).or_default().push(SavedServer {
            name: field(name).to_string(),
            addr: field(addr).to_string(),
            port: p as u16,
            ssl: field(ssl) == "1",
        });
    }
    servers
}

/// `config` with every managed block holding the saved servers of its backend (with
/// `attributes`, and `ssl` for TLS servers, which drove-gateway left off). `None` in
/// `servers` (no state file) empties the blocks.
pub fn rewrite_blocks(
    config: &str,
    servers: Option<&BTreeMap<String, Vec<SavedServer>>>,
    attributes: &str,
    ssl: &str,
) -> Result<String, BlocksError> {
    let mut out = String::with_capacity(config.len());
    let mut open: Option<usize> = None;
    let mut blocks = 0;
    for (i, line) in config.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(BEGIN) {
            if let Some(first) = open {
                return Err(BlocksError::Nested(number, first));
            }
            let backend = rest.trim();
            if backend.is_empty() {
                return Err(BlocksError::NoBackend(number));
            }
            open = Some(number);
            blocks += 1;
            out.push_str(line);
            let indent = &line[..line.len() - line.trim_start().len()];
            for s in servers.and_then(|all| all.get(backend)).into_iter().flatten() {
                let at = gatehouse_model::host_port(&s.addr, s.port);
                let mut server = format!("{indent}server {} {at}", s.name);
                for extra in [attributes, if s.ssl { ssl } else { "" }] {
                    if !extra.trim().is_empty() {
                        server.push(' ');
                        server.push_str(extra.trim());
                    }
                }
                out.push_str(&server);
                out.push('\n');
            }
        } else if trimmed.starts_with(END) && open.is_some() {
            open = None;
            out.push_str(line);
        } else if open.is_none() {
            out.push_str(line);
        }
    }
    if let Some(first) = open {
        return Err(BlocksError::Unclosed(first));
    }
    if blocks == 0 {
        return Err(BlocksError::NoBlocks);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web.test 1 server_a_1 10.0.0.1 2 0 1 1 4 1 0 2 0 0 0 0 - 31000 - 0 0 - - 0\n3 web.test 2 server_b_2 fd00::2 2 0 1 1 4 1 0 2 0 0 0 0 - 31001 - 1 0 - - 0\n3 web.test 3 broken - 2 0 1 1 4 1 0 2 0 0 0 0 - 31002 - 0 0 - - 0\n4 api.test 1 s 10.0.0.9 2 0 1 1 4 1 0 2 0 0 0 0 - 0 - 0 0 - - 0\n";

    const CONFIG: &str = "backend web.test\n    load-server-state-from-file global\n    #DROVE-SERVERS-BEGIN web.test\n    server old 10.9.9.9:1\n    #DROVE-SERVERS-END\n    option httpchk\n";

    #[test]
    fn blocks_take_the_saved_servers() {
        let saved = saved_servers(STATE);
        assert_eq!(saved["web.test"].len(), 2, "rows without an address or with port 0 are skipped");
        assert!(!saved.contains_key("api.test"));
        let out = rewrite_blocks(CONFIG, Some(&saved), "check", "ssl verify none").unwrap();
        assert_eq!(
            out,
            "backend web.test\n    load-server-state-from-file global\n    #DROVE-SERVERS-BEGIN web.test\n    server server_a_1 10.0.0.1:31000 check\n    server server_b_2 [fd00::2]:31001 check ssl verify none\n    #DROVE-SERVERS-END\n    option httpchk\n"
        );
        assert_eq!(rewrite_blocks(&out, Some(&saved), "check", "ssl verify none").unwrap(), out, "idempotent");
        let emptied = rewrite_blocks(CONFIG, None, "", "").unwrap();
        assert!(!emptied.contains("server "), "no state file: the blocks are emptied");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert_eq!(
            rewrite_blocks("#DROVE-SERVERS-BEGIN\n#DROVE-SERVERS-END\n", None, "", ""),
            Err(BlocksError::NoBackend(1))
        );
        assert_eq!(rewrite_blocks("a\n#DROVE-SERVERS-BEGIN x\n", None, "", ""), Err(BlocksError::Unclosed(2)));
        assert_eq!(
            rewrite_blocks("#DROVE-SERVERS-BEGIN x\n#DROVE-SERVERS-BEGIN y\n", None, "", ""),
            Err(BlocksError::Nested(2, 1))
        );
        assert_eq!(rewrite_blocks("backend x\n", None, "", ""), Err(BlocksError::NoBlocks));
        assert!(saved_servers("garbage").is_empty());
    }
}
