//! HAProxy's stats socket (`haproxysocketaddr`): a Unix path, `ipv4@host:port`,
//! `ipv6@host:port` or `host:port`. Commands are pipelined on one connection in prompt
//! mode, and each answer is cut at the prompt that follows it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    Unix(PathBuf),
    Tcp(String),
}

impl SocketAddress {
    /// drove-gateway's rules: a prefix `ipv4@`/`ipv6@`, or a `:`, means TCP.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        match text.strip_prefix("ipv4@").or_else(|| text.strip_prefix("ipv6@")) {
            Some(rest) => SocketAddress::Tcp(rest.to_string()),
            None if text.contains(':') => SocketAddress::Tcp(text.to_string()),
            None => SocketAddress::Unix(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Unix(path) => write!(f, "{}", path.display()),
            SocketAddress::Tcp(addr) => f.write_str(addr),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot reach HAProxy's stats socket {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("HAProxy's stats socket {address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("HAProxy's stats socket {address} did not answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("HAProxy's stats socket {address} answered {got} of {sent} commands")]
    Short { address: String, sent: usize, got: usize },
}

/// Sends `commands` (one per line, none containing a newline) and returns one answer each.
pub async fn run(address: &SocketAddress, commands: &[String], timeout: Duration) -> Result<Vec<String>, SocketError> {
    let name = address.to_string();
    let exchange = async {
        match address {
            SocketAddress::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| SocketError::Connect { address: name.clone(), source })?;
                exchange(stream, commands, &name).await
            }
            SocketAddress::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|source| SocketError::Connect { address: name.clone(), source })?;
                exchange(stream, commands, &name).await
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SocketError::Timeout { address: name.clone(), timeout })?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    commands: &[String],
    name: &str,
) -> Result<Vec<String>, SocketError> {
    let io = |source| SocketError::Io { address: name.to_string(), source };
    let mut script = String::from("prompt\n");
    for command in commands {
        script.push_str(command);
        script.push('\n');
    }
    script.push_str("quit\n");
    // Written and read at once: a long script would otherwise fill both socket buffers.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        writer.write_all(script.as_bytes()).await?;
        writer.flush().await
    };
    let mut output = Vec::new();
    let (written, read) = tokio::join!(write, reader.read_to_end(&mut output));
    written.map_err(io)?;
    read.map_err(io)?;
    let text = String::from_utf8_lossy(&output);
    // The answer to `prompt` comes first, then one answer per command, each followed by a
    // "> " prompt at the start of a line.
    let mut answers: Vec<String> =
        text.split("\n> ").skip(1).map(|a| a.trim_start_matches("> ").trim_end().to_string()).collect();
    answers.truncate(commands.len());
    if answers.len() < commands.len() {
        return Err(SocketError::Short { address: name.to_string(), sent: commands.len(), got: answers.len() });
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_drove_gateway() {
        assert_eq!(
            SocketAddress::parse("/run/haproxy/admin.sock"),
            SocketAddress::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(SocketAddress::parse("ipv4@127.0.0.1:9999"), SocketAddress::Tcp("127.0.0.1:9999".into()));
        assert_eq!(SocketAddress::parse("127.0.0.1:9999"), SocketAddress::Tcp("127.0.0.1:9999".into()));
    }

    #[tokio::test]
    async fn answers_are_cut_at_prompts() {
        // HAProxy 2.6's bytes for: prompt, add, set, add (exists), del (missing), set, del.
        let reply = "\n> New server registered.\n\n> \n> Already exists a server with the same name in backend.\n\n> No such server.\n> \n> Server deleted.\n> ";
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut seen = vec![0u8; 4096];
            let _ = server.read(&mut seen).await;
            let _ = server.write_all(reply.as_bytes()).await;
        });
        let commands: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        let answers = exchange(client, &commands, "test").await.unwrap();
        assert_eq!(
            answers,
            [
                "New server registered.",
                "",
                "Already exists a server with the same name in backend.",
                "No such server.",
                "",
                "Server deleted."
            ]
        );
    }
}
