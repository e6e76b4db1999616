//! Whose word about a request's origin is taken: the forwarding-header policy.

use std::net::IpAddr;

use serde::Serialize;

/// What the proxy writes and keeps of the headers by which a request says where it came
/// from (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForwardingPolicy {
    /// Peers whose forwarding headers are kept and extended (a load balancer in front), as
    /// nginx's `set_real_ip_from`; from anyone else they are replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// Also write RFC 7239 `Forwarded: for=..;proto=..;host=..`.
    pub write_forwarded: bool,
    /// Keep header fields with `_` in their name (nginx's `underscores_in_headers`).
    pub underscores_in_headers: bool,
}

impl ForwardingPolicy {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address block like 10.0.0.0/8 or 2001:db8::/32")]
pub struct CidrError(String);

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(text.to_string());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().map_err(|_| bad())?,
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { network: canonical(network), prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    (a ^ b).checked_shr(shift).is_none_or(|d| d == 0)
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, how a dual-stack socket shows IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.0.1")) && !ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped peers are IPv4");
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_blocks_are_refused() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "a.test/8", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_trusts_listed_peers() {
        let policy = ForwardingPolicy {
            trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            ..ForwardingPolicy::default()
        };
        assert!(policy.trusts(ip("127.0.0.2")) && !policy.trusts(ip("10.0.0.1")));
        assert!(!ForwardingPolicy::default().trusts(ip("127.0.0.1")), "nobody by default");
    }
}
