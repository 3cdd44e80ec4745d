//! `[throttle]`: request rate limits per route class, per client address
//! and per tenant, and the proxies whose `X-Forwarded-For` is believed.

use serde::Deserialize;
use std::net::IpAddr;

/// `[throttle]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleSettings {
    /// Turns rate limiting on (default) or off entirely
    /// (`PORTCULLIS_THROTTLE_ENABLED`). Request size limits and the request
    /// id stay on either way.
    pub enabled: bool,
    /// Proxies (CIDR blocks or single addresses) whose `X-Forwarded-For` and
    /// `X-Request-Id` are believed (`PORTCULLIS_TRUSTED_PROXIES`, comma
    /// separated). Empty (default): the client address is the socket's and
    /// forwarded headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// `/authorize`.
    pub authorize: RouteLimit,
    /// The IdP callbacks: SAML ACS (its same-site continuation is not
    /// counted again), OIDC callback.
    pub callback: RouteLimit,
    /// `/token`, `/revoke`, `/introspect`, `/userinfo`.
    pub token: RouteLimit,
    /// Setup links and the setup portal.
    pub portal: RouteLimit,
    /// The admin API.
    pub admin: RouteLimit,
}

/// The limits of one route class: requests per `window_secs`, per client
/// address and per tenant (a burst of the limit, then spread evenly). `0`
/// turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimit {
    /// Requests per window from one client address (an IPv6 client counts
    /// by its /64).
    pub per_ip: u64,
    /// Requests per window for one tenant, from everywhere. On the
    /// callbacks, the tenant's own budget: spent only by requests shown to
    /// be its own sign-ins, once its anonymous bucket is spent.
    pub per_tenant: u64,
    /// The callbacks only: requests per window in the tenant's anonymous
    /// bucket, which every callback naming the tenant counts in first (one
    /// store round trip with the address's count). When it is spent, only
    /// a request shown to be the tenant's own sign-in goes on, counted in
    /// `per_tenant`; anyone else gets 429. Unset: as `per_tenant`. `0`
    /// turns it off (and with it the tenant's limit on the callbacks).
    pub per_tenant_anonymous: Option<u64>,
    /// The window, seconds (1 to 3600).
    pub window_secs: u64,
}

impl Default for RouteLimit {
    fn default() -> Self {
        Self {
            per_ip: 300,
            per_tenant: 6000,
            per_tenant_anonymous: None,
            window_secs: 60,
        }
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        // Far above what people do (a sign-in is one /authorize, one
        // callback, one or two /token calls), far below what a script does.
        // Per address allows a whole office behind one NAT signing in at
        // nine o'clock; app back-ends calling /token for all their users
        // from one address get a larger budget.
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
            authorize: RouteLimit {
                per_ip: 300,
                per_tenant: 6000,
                per_tenant_anonymous: None,
                window_secs: 60,
            },
            callback: RouteLimit {
                per_ip: 300,
                per_tenant: 6000,
                per_tenant_anonymous: None,
                window_secs: 60,
            },
            token: RouteLimit {
                per_ip: 3000,
                per_tenant: 30000,
                per_tenant_anonymous: None,
                window_secs: 60,
            },
            portal: RouteLimit {
                per_ip: 120,
                per_tenant: 1200,
                per_tenant_anonymous: None,
                window_secs: 60,
            },
            admin: RouteLimit {
                per_ip: 1200,
                per_tenant: 1200,
                per_tenant_anonymous: None,
                window_secs: 60,
            },
        }
    }
}

/// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), u128::from(u32::from(ip)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(net: u128, ip: u128, bits: u32, prefix: u8) -> bool {
    let shift = bits.saturating_sub(u32::from(prefix));
    if shift >= bits {
        return true;
    }
    (net >> shift) == (ip >> shift)
}

impl ThrottleSettings {
    /// The trusted proxy blocks, parsed (invalid entries are reported by
    /// [`ThrottleSettings::problems`] and never trusted).
    pub fn proxies(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| Cidr::parse(p).ok())
            .collect()
    }

    /// Every problem in the section, as (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if let Err(m) = Cidr::parse(p) {
                out.push((format!("throttle.trusted_proxies[{i}]"), m));
            }
        }
        for (name, limit) in self.classes() {
            if !(1..=3600).contains(&limit.window_secs) {
                out.push((
                    format!("throttle.{name}.window_secs"),
                    format!("{} is outside 1..=3600", limit.window_secs),
                ));
            }
            if name != "callback" && limit.per_tenant_anonymous.is_some() {
                out.push((
                    format!("throttle.{name}.per_tenant_anonymous"),
                    "only the callbacks have an anonymous bucket ([throttle.callback])".into(),
                ));
            }
            for (field, value) in [
                ("per_ip", limit.per_ip),
                ("per_tenant", limit.per_tenant),
                ("per_tenant_anonymous", limit.per_tenant_anonymous.unwrap_or(0)),
            ] {
                if value > 1_000_000 {
                    out.push((
                        format!("throttle.{name}.{field}"),
                        format!("{value} is above 1000000 (0 turns the limit off)"),
                    ));
                }
            }
        }
        out
    }

    fn classes(&self) -> [(&'static str, RouteLimit); 5] {
        [
            ("authorize", self.authorize),
            ("callback", self.callback),
            ("token", self.token),
            ("portal", self.portal),
            ("admin", self.admin),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("proxy.example").is_err());
    }

    #[test]
    fn the_shipped_file_documents_the_defaults() {
        let text = include_str!("../../config/portcullis.toml");
        let s = crate::config::Settings::parse(text, "portcullis.toml").unwrap();
        assert_eq!(
            format!("{:?}", s.throttle),
            format!("{:?}", ThrottleSettings::default())
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let mut s = ThrottleSettings::default();
        assert!(s.problems().is_empty());
        s.trusted_proxies = vec!["10.0.0.0/8".into(), "nope".into()];
        s.token.window_secs = 0;
        // Only the callbacks have an anonymous bucket.
        s.callback.per_tenant_anonymous = Some(100);
        s.token.per_tenant_anonymous = Some(100);
        let fields: Vec<String> = s.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "throttle.trusted_proxies[1]",
                "throttle.token.window_secs",
                "throttle.token.per_tenant_anonymous"
            ]
        );
    }
}
