//! Header rules of a reverse proxy: hop-by-hop removal (RFC 9110 §7.6.1), forwarding
//! headers, request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_PROXY: HeaderName = HeaderName::from_static("x-proxy");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
/// Fields by which a client could claim an address, scheme, host or path it does not have,
/// beyond the three we set ourselves.
const CLIENT_FORWARDING: [HeaderName; 5] =
    [header::FORWARDED, X_REAL_IP, X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_FORWARDED_SERVER];
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP_COUNT: usize = 8;
/// `Connection` comes first: its tokens name more fields to remove.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. `Upgrade` is
/// removed too unless `keep_upgrade`; the caller re-adds `Connection: upgrade` for tunnels.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) names first, noting which are there: most messages carry one
    // of these at most (`Connection: keep-alive`), and a removal costs a hash and a probe.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut upgrade = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(i) => present[i] = true,
            None => upgrade |= !keep_upgrade && name == header::UPGRADE,
        }
    }
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The usual tokens name no header to remove (or one removed below anyway).
            .filter(|t| !["keep-alive", "close", "upgrade"].iter().any(|k| t.eq_ignore_ascii_case(k)))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(name);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// True when the `Connection` header lists `token` (case-insensitively).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True when the `TE` header lists `trailers`.
pub(crate) fn te_has_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// How one request's forwarding headers are written.
pub(crate) struct Forwarding<'a> {
    /// The peer's address as a header value.
    pub client: &'a HeaderValue,
    pub https: bool,
    /// The request's host, in normal form.
    pub host: &'a HeaderValue,
    /// The peer is a proxy we trust (`trusted_proxies`, or a service's `--forward-headers`):
    /// its forwarding values are kept and extended instead of replaced.
    pub trust_client: bool,
    /// Write RFC 7239 `Forwarded` too.
    pub rfc7239: bool,
    /// Keep fields with `_` in their names.
    pub underscores: bool,
}

/// Sets the forwarding headers. Values a client sent are replaced, not appended to: at the
/// edge nothing before us is trusted. From a trusted proxy they are kept: our peer is
/// appended to its X-Forwarded-For (and Forwarded), and its X-Forwarded-Proto and -Host stay.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    strip_client_claims(headers, f.trust_client, f.underscores);
    let proto = if f.https { "https" } else { "http" };
    if f.rfc7239 {
        let ours = forwarded_element(f.client, proto, f.host);
        let value = if f.trust_client { appended(headers, &header::FORWARDED, ours) } else { ours };
        headers.insert(header::FORWARDED, value);
    }
    if !f.trust_client {
        headers.insert(X_FORWARDED_FOR, f.client.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        headers.insert(X_FORWARDED_HOST, f.host.clone());
        return;
    }
    let forwarded_for = appended(headers, &X_FORWARDED_FOR, f.client.clone());
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        headers.insert(X_FORWARDED_HOST, f.host.clone());
    }
}

/// The fields `name` already has, joined with ", ", then `ours`.
fn appended(headers: &HeaderMap, name: &HeaderName, ours: HeaderValue) -> HeaderValue {
    let mut chain: Vec<&[u8]> = headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
    if chain.is_empty() {
        return ours;
    }
    chain.push(ours.as_bytes());
    HeaderValue::from_bytes(&chain.join(&b", "[..])).unwrap_or(ours)
}

/// One RFC 7239 element: `for=192.0.2.1;proto=https;host="a.test"` (an IPv6 node is quoted
/// and bracketed; the host is always quoted, since a port's `:` is not a token character).
fn forwarded_element(client: &HeaderValue, proto: &str, host: &HeaderValue) -> HeaderValue {
    let node = client.as_bytes();
    let mut out = Vec::with_capacity(node.len() + host.len() + 32);
    out.extend_from_slice(b"for=");
    if node.contains(&b':') {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(node);
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(node);
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b";host=\"");
    out.extend_from_slice(host.as_bytes());
    out.push(b'"');
    // Made of a formatted address and a normal-form host: always a valid value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("for=unknown"))
}

/// Removes what a client claims about where it came from: the forwarding fields we do not
/// set (unless `trust_client`), and every field with `_` in its name unless `underscores`:
/// CGI, WSGI and PHP read `X_Forwarded_For` as the same variable as `X-Forwarded-For`
/// (`HTTP_X_FORWARDED_FOR`), and nginx drops them by default. One pass over the names;
/// nothing is allocated unless something is removed.
fn strip_client_claims(headers: &mut HeaderMap, trust_client: bool, underscores: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if (!underscores && name.as_str().contains('_')) || (!trust_client && CLIENT_FORWARDING.contains(name)) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Writes `length` as the one `Content-Length` field, unless the field already says it in
/// plain digits (nearly always: nothing is allocated then).
pub(crate) fn normalize_length(headers: &mut HeaderMap, length: u64) {
    let mut fields = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = match (fields.next(), fields.next()) {
        (Some(v), None) => {
            let b = v.as_bytes();
            b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b.first() != Some(&b'0'))
        }
        _ => false,
    };
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// HTTP/2 may split `Cookie` into several fields; an HTTP/1.1 target must get them as one,
/// joined with "; " (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// A client address as a header value (IPv4-mapped IPv6 shown as IPv4).
pub(crate) fn client_address(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    // An address's text form is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The request's id: the client's if it is a sane token, else a new random one. Either way it
/// is printable ASCII without `"` or `\`, so logs carry it as it is.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        let sane = |c: &u8| c.is_ascii_graphic() && *c != b'"' && *c != b'\\';
        if !b.is_empty() && b.len() <= 128 && b.iter().all(sane) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let mut n = fastrand::u128(..);
    for byte in out.iter_mut() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret, upgrade".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(KEEP_ALIVE, "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let mut tunnel = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-keep"]);
        remove_hop_by_hop(&mut tunnel, true);
        assert!(tunnel.contains_key(header::UPGRADE) && !tunnel.contains_key("x-secret"));
    }

    /// Forwarding for a plain-HTTP request to `a.test` from `client`.
    fn forwarding(client: &HeaderValue, trust_client: bool) -> Forwarding<'_> {
        static HOST: HeaderValue = HeaderValue::from_static("a.test");
        Forwarding { client, https: false, host: &HOST, trust_client, rfc7239: false, underscores: false }
    }

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        let client = client_address("::ffff:127.0.0.2".parse().unwrap());
        set_forwarded(&mut h, &Forwarding { https: true, ..forwarding(&client, false) });
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.2");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "a.test");
    }

    #[test]
    fn client_claims_are_removed_unless_a_proxy_in_front_is_trusted() {
        let claims = ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server"];
        let mut h = HeaderMap::new();
        for name in claims.iter().chain(&["x_forwarded_for", "x-keep"]) {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("6.6.6.6"));
        }
        let (mut trusted, mut underscores) = (h.clone(), h.clone());
        let client = client_address("10.0.0.9".parse().unwrap());
        set_forwarded(&mut h, &forwarding(&client, false));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-keep"]);
        set_forwarded(&mut trusted, &forwarding(&client, true));
        assert!(claims.iter().all(|c| trusted.contains_key(*c)), "a trusted front proxy's fields stay");
        assert!(!trusted.contains_key("x_forwarded_for"), "underscore names do not pass by default");
        set_forwarded(&mut underscores, &Forwarding { underscores: true, ..forwarding(&client, false) });
        assert!(underscores.contains_key("x_forwarded_for"), "unless underscores_in_headers");
    }

    #[test]
    fn forwarded_headers_kept_behind_another_proxy() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "2.2.2.2, 3.3.3.3".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        let client = client_address("10.0.0.9".parse().unwrap());
        set_forwarded(&mut h, &forwarding(&client, true));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "https", "the front proxy's scheme stays");
        assert_eq!(h[X_FORWARDED_HOST], "a.test");
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &forwarding(&client, true));
        assert_eq!(
            (fresh[X_FORWARDED_FOR].to_str().unwrap(), fresh[X_FORWARDED_PROTO].to_str().unwrap()),
            ("10.0.0.9", "http")
        );
    }

    #[test]
    fn rfc7239_forwarded_is_written_and_extended_for_trusted_proxies() {
        let v6 = client_address("2001:db8::7".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, "for=6.6.6.6".parse().unwrap());
        set_forwarded(&mut h, &Forwarding { rfc7239: true, https: true, ..forwarding(&v6, false) });
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::7]\";proto=https;host=\"a.test\"");
        let v4 = client_address("10.0.0.9".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, "for=192.0.2.1;proto=https".parse().unwrap());
        set_forwarded(&mut h, &Forwarding { rfc7239: true, ..forwarding(&v4, true) });
        assert_eq!(h[header::FORWARDED], "for=192.0.2.1;proto=https, for=10.0.0.9;proto=http;host=\"a.test\"");
    }

    #[test]
    fn lengths_are_forwarded_in_plain_digits_and_cookies_joined() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("010"));
        normalize_length(&mut h, 10);
        assert_eq!(h[header::CONTENT_LENGTH], "10");
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        normalize_length(&mut h, 10);
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        normalize_length(&mut h, 0);
        assert_eq!(h[header::CONTENT_LENGTH], "0");

        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert_ne!(made, request_id(&h));
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        for odd in [&b"has space"[..], b"quo\"te", b"back\\slash"] {
            h.insert(X_REQUEST_ID, HeaderValue::from_bytes(odd).unwrap());
            assert_ne!(request_id(&h), odd);
        }
    }

    #[test]
    fn connection_tokens() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "Upgrade".parse().unwrap());
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
    }
}
