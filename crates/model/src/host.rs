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

/// A request's authority (Host header, `:authority`, or the authority of an absolute-form
/// target) after strict validation: RFC 3986 `uri-host [":" port]` where the host is a DNS-style
/// name, an IPv4 address or a bracketed IPv6 address. Values such as `a.test:@evil.test`,
/// `a.test:80, evil.test`, `evil.test/.a.test` or `[a.test]` are refused instead of being cut
/// down to a routable prefix, so that what is routed is exactly what is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    /// The routing key: lower case, no trailing dot, an IPv6 address without brackets
    /// (borrowed when the value already is, the common case).
    pub host: Cow<'a, str>,
    pub port: Option<u16>,
    /// The value as written is already in normal form, so it can be forwarded as it is.
    pub normal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the host is empty")]
    Empty,
    #[error("the host has a character that is not allowed in a host name")]
    BadCharacter,
    #[error("the host has an empty label")]
    EmptyLabel,
    #[error("the host is longer than 255 bytes")]
    TooLong,
    #[error("the bracketed host is not an IPv6 address")]
    BadIpv6,
    #[error("the port is not a number from 0 to 65535")]
    BadPort,
}

impl<'a> Authority<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, AuthorityError> {
        let (host, port_text, v6) = match raw.strip_prefix('[') {
            Some(rest) => {
                let (inside, after) = rest.split_once(']').ok_or(AuthorityError::BadIpv6)?;
                inside.parse::<std::net::Ipv6Addr>().map_err(|_| AuthorityError::BadIpv6)?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or(AuthorityError::BadPort)?),
                };
                (inside, port, true)
            }
            None => match raw.split_once(':') {
                Some((host, port)) => (host, Some(port), false),
                None => (raw, None, false),
            },
        };
        let port = match port_text {
            // RFC 3986 allows an empty port; it means the scheme's default.
            None | Some("") => None,
            Some(text) if text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()) => {
                Some(text.parse::<u16>().map_err(|_| AuthorityError::BadPort)?)
            }
            Some(_) => return Err(AuthorityError::BadPort),
        };
        if !v6 {
            check_name(host)?;
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        let normal = name.len() == host.len()
            // Digits already checked: the port is written plainly unless empty or zero-led.
            && port_text.is_none_or(|t| !t.is_empty() && (t == "0" || !t.starts_with('0')));
        let host = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        let normal = normal && matches!(host, Cow::Borrowed(_));
        Ok(Authority { host, port, normal })
    }

    /// The normal form to forward: `host[:port]`, an IPv6 address in brackets.
    pub fn to_text(&self) -> String {
        let host: &str = &self.host;
        match (self.port, host.contains(':')) {
            (Some(port), _) => host_port(host, port),
            (None, true) => format!("[{host}]"),
            (None, false) => host.to_string(),
        }
    }
}

/// A reg-name limited to what DNS names and IPv4 addresses use: letters, digits, `-`, `_`,
/// `.`, no empty label (a single trailing dot is the root and allowed).
fn check_name(host: &str) -> Result<(), AuthorityError> {
    if host.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if host.len() > 255 {
        return Err(AuthorityError::TooLong);
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return Err(AuthorityError::BadCharacter);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err(AuthorityError::EmptyLabel);
    }
    Ok(())
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
    fn authorities_in_normal_form_are_borrowed() {
        let a = Authority::parse("app.test:8080").unwrap();
        assert_eq!((a.host.as_ref(), a.port, a.normal), ("app.test", Some(8080), true));
        assert!(matches!(a.host, Cow::Borrowed(_)));
        let a = Authority::parse("[::1]:80").unwrap();
        assert_eq!((a.host.as_ref(), a.port, a.normal, a.to_text()), ("::1", Some(80), true, "[::1]:80".into()));
        assert_eq!(Authority::parse("10.0.0.1").unwrap().to_text(), "10.0.0.1");
    }

    #[test]
    fn authorities_are_normalised() {
        for (raw, route, text) in [
            ("Example.COM:8080", "example.com", "example.com:8080"),
            ("example.com.", "example.com", "example.com"),
            ("example.com:", "example.com", "example.com"),
            ("example.com:080", "example.com", "example.com:80"),
        ] {
            let a = Authority::parse(raw).unwrap();
            assert_eq!((a.host.as_ref(), a.normal, a.to_text().as_str()), (route, false, text), "{raw}");
        }
    }

    #[test]
    fn authorities_that_hide_another_host_are_refused() {
        use AuthorityError::*;
        for (raw, error) in [
            ("", Empty),
            ("a.test:@evil.test", BadPort),
            ("a.test:80, evil.test", BadPort),
            ("a.test, evil.test", BadCharacter),
            ("evil.test/.a.test", BadCharacter),
            ("user@a.test", BadCharacter),
            ("[a.test]", BadIpv6),
            ("[::1]x", BadPort),
            ("[::1", BadIpv6),
            ("a.test:65536", BadPort),
            ("a.test:+80", BadPort),
            ("a..test", EmptyLabel),
            (".", EmptyLabel),
            ("a.test:1:2", BadPort),
            ("a\u{e9}.test", BadCharacter),
        ] {
            assert_eq!(Authority::parse(raw), Err(error), "{raw}");
        }
        assert_eq!(Authority::parse(&"a".repeat(256)), Err(TooLong));
    }
}
