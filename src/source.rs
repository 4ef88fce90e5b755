//! Optional allowlist of where webhooks may come from (`RELAY_ALLOWED_SOURCES`),
//! with `X-Forwarded-For` believed only from `RELAY_TRUSTED_PROXIES`. Off by
//! default: the signature is what proves a webhook genuine; this only narrows
//! who can make the relay do that work.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Debug)]
pub struct SourcePolicy {
    allowed: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl SourcePolicy {
    pub fn new(allowed: Vec<IpNet>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            allowed,
            trusted_proxies,
        }
    }

    /// The address the request really came from: the peer, or, when the peer is
    /// a trusted proxy, the nearest untrusted address in `X-Forwarded-For`
    /// (read right to left, as each proxy appends the address it saw).
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // An unreadable hop ends what can be believed.
                Err(_) => break,
            }
        }
        client
    }

    /// For `check-config`.
    pub fn describe(&self) -> String {
        let list = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{} (X-Forwarded-For trusted from: {})",
            list(&self.allowed),
            if self.trusted_proxies.is_empty() {
                "nobody".to_owned()
            } else {
                list(&self.trusted_proxies)
            }
        )
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        self.allowed
            .iter()
            .any(|net| net.contains(&canonical(client)))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&canonical(ip)))
    }
}

/// `::ffff:1.2.3.4` is 1.2.3.4 (a dual-stack listener reports IPv4 peers so).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `10.0.0.0/8, 203.0.113.7` (a bare address is a /32 or /128).
pub fn parse_networks(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not an address or CIDR (e.g. 203.0.113.0/24)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &str, trusted: &str) -> SourcePolicy {
        SourcePolicy::new(
            parse_networks(allowed).expect("allowed"),
            parse_networks(trusted).expect("trusted"),
        )
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p = policy("203.0.113.0/24", "10.0.0.0/8");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            p.client(ip("10.1.1.1"), Some("203.0.113.9")),
            ip("203.0.113.9")
        );
        assert_eq!(
            p.client(ip("10.1.1.1"), Some("203.0.113.9, 10.2.2.2")),
            ip("203.0.113.9")
        );
        // A client cannot put an allowed address in front of its own.
        assert_eq!(
            p.client(ip("10.1.1.1"), Some("203.0.113.9, 198.51.100.1")),
            ip("198.51.100.1")
        );
        assert_eq!(
            p.client(ip("198.51.100.1"), Some("203.0.113.9")),
            ip("198.51.100.1")
        );
        assert!(p.allows(ip("::ffff:203.0.113.4")));
        assert!(!p.allows(ip("198.51.100.1")));
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert_eq!(parse_networks("1.2.3.4").expect("ip").len(), 1);
    }
}
