//! Which network addresses the outbound client may reach.
//!
//! IdP URLs are typed in by tenant admins, so every outbound request is a
//! potential server-side request forgery. The guard refuses addresses inside
//! our own network (loopback, RFC 1918, link-local, unique-local, CGNAT...)
//! both when a URL names them literally and when a host name resolves to them;
//! the second check runs inside the DNS resolver reqwest connects with, so a
//! name that is re-pointed at a private address between checks (DNS rebinding)
//! still cannot be reached.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a connection was refused: every address of the host is off limits.
/// Carried through reqwest's error chain so the caller can report
/// `outbound.forbidden_address` instead of a generic connect failure.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses outside the public internet")]
pub struct ForbiddenAddress {
    /// The host name or literal that was refused.
    pub host: String,
}

/// True when `ip` must not be reached unless private networks are allowed.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", including 0.0.0.0
        || a == 10 // RFC 1918
        || a == 127 // loopback
        || (a == 100 && (64..=127).contains(&b)) // CGNAT, RFC 6598
        || (a == 169 && b == 254) // link-local (cloud metadata lives here)
        || (a == 172 && (16..=31).contains(&b)) // RFC 1918
        || (a == 192 && b == 168) // RFC 1918
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224 // multicast, reserved and broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = seg;
    let embedded_v4 = |hi: u16, lo: u16| {
        let [h1, h2] = hi.to_be_bytes();
        let [l1, l2] = lo.to_be_bytes();
        Ipv4Addr::new(h1, h2, l1, l2)
    };
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible
    // (::a.b.c.d) forms reach the IPv4 address inside them.
    if s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0 && (s5 == 0xffff || s5 == 0) {
        return is_forbidden_v4(embedded_v4(s6, s7));
    }
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765 SIIT): a translator on the
    // path delivers it to the IPv4 address inside.
    if s0 == 0 && s1 == 0 && s2 == 0 && s3 == 0 && s4 == 0xffff && s5 == 0 {
        return is_forbidden_v4(embedded_v4(s6, s7));
    }
    // NAT64 well-known prefix 64:ff9b::/96 translates to the IPv4 address inside.
    if s0 == 0x64 && s1 == 0xff9b && s2 == 0 && s3 == 0 && s4 == 0 && s5 == 0 {
        return is_forbidden_v4(embedded_v4(s6, s7));
    }
    // The local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215) is the operator's
    // own translator, to whatever IPv4 network it serves: never public.
    if s0 == 0x64 && s1 == 0xff9b && s2 == 1 {
        return true;
    }
    // 6to4 (2002::/16) tunnels to the IPv4 address in the next 32 bits.
    if s0 == 0x2002 {
        return is_forbidden_v4(embedded_v4(s1, s2));
    }
    (s0 & 0xfe00) == 0xfc00 // unique-local fc00::/7
        || (s0 & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s0 & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s0 & 0xff00) == 0xff00 // multicast
        || (s0 == 0x2001 && s1 == 0x0db8) // documentation
        || (s0 == 0x2001 && s1 == 0) // Teredo: the real peer is hidden
        || (s0 == 0x0100 && s1 == 0 && s2 == 0 && s3 == 0) // discard-only 100::/64
}

/// Why a connection was not even tried: the host name did not resolve.
/// Carried through reqwest's error chain like [`ForbiddenAddress`], so the
/// two can be told apart in the log and made to read alike to a tenant
/// admin (`UpstreamError::for_admin`).
#[derive(Debug, thiserror::Error)]
#[error("{host} could not be resolved: {cause}")]
pub struct Unresolved {
    /// The host name that did not resolve.
    pub host: String,
    /// The resolver's answer.
    pub cause: std::io::Error,
}

/// A DNS resolver that drops forbidden addresses from every answer and fails
/// with [`ForbiddenAddress`] when none are left, or [`Unresolved`] when the
/// name does not resolve.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// When true, nothing is filtered (development and tests on loopback).
    pub allow_private_networks: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private_networks;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let looked_up = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(Iterator::collect::<Vec<SocketAddr>>);
            let found = match looked_up {
                Ok(found) => found,
                Err(cause) => return Err(Box::new(Unresolved { host, cause }) as _),
            };
            let kept = filter_addrs(found, allow);
            if kept.is_empty() {
                return Err(Box::new(ForbiddenAddress { host }) as _);
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses that may be connected to.
pub fn filter_addrs(addrs: Vec<SocketAddr>, allow_private_networks: bool) -> Vec<SocketAddr> {
    if allow_private_networks {
        return addrs;
    }
    addrs.into_iter().filter(|a| !is_forbidden(a.ip())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn forbidden_ipv4_ranges() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip} must be forbidden");
        }
    }

    #[test]
    fn public_ipv4_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "223.255.255.255",
            "11.0.0.1",
        ] {
            assert!(!forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn forbidden_ipv6_ranges() {
        for ip in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(forbidden(ip), "{ip} must be forbidden");
        }
    }

    #[test]
    fn public_ipv6_allowed() {
        for ip in ["2606:4700:4700::1111", "2a00:1450:4001::200e", "2002:0808:0808::1"] {
            assert!(!forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn embedded_ipv4_forms_follow_the_ipv4_rules() {
        // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of private addresses.
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:0101::1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:169.254.169.254",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:ffff::808:808",
        ] {
            assert!(forbidden(ip), "{ip} must be forbidden");
        }
        for ip in ["::ffff:8.8.8.8", "::ffff:0:8.8.8.8", "64:ff9b::808:808"] {
            assert!(!forbidden(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn filter_keeps_only_public_addresses_unless_allowed() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:0".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
            "93.184.216.34:0".parse().unwrap(),
        ];
        assert_eq!(
            filter_addrs(addrs.clone(), false),
            vec!["93.184.216.34:0".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(filter_addrs(addrs.clone(), true), addrs);
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_loopback() {
        let guarded = GuardedResolver {
            allow_private_networks: false,
        };
        let err = match guarded.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must not resolve"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<ForbiddenAddress>().is_some(), "{err}");

        let open = GuardedResolver {
            allow_private_networks: true,
        };
        let addrs: Vec<SocketAddr> = match open.resolve("localhost".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
