//! Host names as routes see them: lower case, no port, no trailing dot.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

/// A host a service answers for: an exact name, a `*.suffix` wildcard, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// Stored with its leading dot: `*.example.com` is `.example.com`. Matches any
    /// name below the suffix (`a.example.com`, `a.b.example.com`), not the suffix itself.
    Wildcard(String),
    /// `*`: any host no exact name or wildcard routes (kamal-proxy's service without hosts).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("host is empty")]
    Empty,
    #[error("host `{0}` has a character that is not allowed in a DNS name")]
    BadCharacter(String),
    #[error("host `{0}`: a wildcard must be a whole first label, as in `*.example.com`")]
    BadWildcard(String),
    #[error("host `{0}` has an empty label")]
    EmptyLabel(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, HostPatternError> {
        let lower = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(HostPatternError::Empty);
        }
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.contains('*') {
            return Err(HostPatternError::BadWildcard(raw.to_string()));
        }
        if name.split('.').any(str::is_empty) {
            return Err(HostPatternError::EmptyLabel(raw.to_string()));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            return Err(HostPatternError::BadCharacter(raw.to_string()));
        }
        Ok(if wildcard { HostPattern::Wildcard(format!(".{name}")) } else { HostPattern::Exact(name.to_string()) })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `host:port`, with brackets around an IPv6 literal (Go's `net.JoinHostPort`): the form of
/// a Host header, an upstream address, a `server` line.
pub fn host_port(host: &str, port: impl fmt::Display) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The routing key of a Host header or `:authority`: the port and a trailing dot removed,
/// lower-cased (borrowed when it already is, which is the common case).
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        match authority.rfind(':') {
            Some(i) => &authority[..i],
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_wildcard() {
        assert_eq!(HostPattern::parse("App.Example.com.").unwrap(), HostPattern::Exact("app.example.com".into()));
        assert_eq!(HostPattern::parse("*.Example.com").unwrap(), HostPattern::Wildcard(".example.com".into()));
        assert_eq!(HostPattern::parse("*.example.com").unwrap().to_string(), "*.example.com");
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
    }

    #[test]
    fn rejects_bad_hosts() {
        assert!(matches!(HostPattern::parse(""), Err(HostPatternError::Empty)));
        assert!(matches!(HostPattern::parse("a.*.com"), Err(HostPatternError::BadWildcard(_))));
        assert!(matches!(HostPattern::parse("a..com"), Err(HostPatternError::EmptyLabel(_))));
        assert!(matches!(HostPattern::parse("a b.com"), Err(HostPatternError::BadCharacter(_))));
        assert!(matches!(HostPattern::parse("http://a.com"), Err(HostPatternError::BadCharacter(_))));
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert!(matches!(normalize_host("plain.com"), Cow::Borrowed(_)));
    }
}
