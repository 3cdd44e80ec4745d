//! Reading `PORTCULLIS_REDIS_URL`: which Redis topology, which nodes, which
//! credentials.
//!
//! * `redis://[user:password@]host:port[/db]` and `rediss://…` (TLS): one
//!   server (a managed primary with its own failover behind one name counts
//!   as one server).
//! * `redis+sentinel://[user:password@]host:port[,host:port…]/MASTER_NAME`
//!   (`rediss+sentinel://` for TLS): the Sentinels to ask for the primary of
//!   `MASTER_NAME`. The user and password are those of the Redis nodes; the
//!   Sentinels' own, when they have one, go in the query
//!   (`?sentinel_username=…&sentinel_password=…`).
//! * `redis+cluster://[user:password@]host:port[,host:port…]`
//!   (`rediss+cluster://` for TLS): seed nodes of a Redis Cluster; the user
//!   and password are those of every node.
//!
//! Userinfo and query values are percent-decoded. Nothing here ever puts
//! the URL or a password into an error message: the URL is a secret.

use redis::ConnectionAddr;

/// Where the store's data lives, as the URL says.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://`, `rediss://`); the URL as given.
    Single {
        /// The URL, handed to the `redis` crate as is.
        url: String,
        /// `rediss://`.
        tls: bool,
    },
    /// A primary found through Sentinels.
    Sentinel {
        /// The Sentinels (at least one).
        sentinels: Vec<(String, u16)>,
        /// The name the Sentinels monitor the primary under.
        master: String,
        /// Credentials of the Redis nodes.
        auth: Auth,
        /// Credentials of the Sentinels themselves.
        sentinel_auth: Auth,
        /// `rediss+sentinel://`: TLS to Sentinels and nodes.
        tls: bool,
    },
    /// A Redis Cluster, reached through its seed nodes.
    Cluster {
        /// Seed nodes (at least one).
        nodes: Vec<(String, u16)>,
        /// Credentials of every node.
        auth: Auth,
        /// `rediss+cluster://`: TLS to every node.
        tls: bool,
    },
}

impl std::fmt::Debug for Topology {
    // Credentials stay out of logs and test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// A user name (ACL) and password; both optional.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// The ACL user (`default` when only a password is given).
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
}

impl Topology {
    /// Reads a Redis URL. The error says what is wrong without repeating
    /// the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Topology, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            "is not a URL (expected redis://, rediss://, redis+sentinel:// or redis+cluster://)".to_owned()
        })?;
        match scheme {
            "redis" | "rediss" => {
                let tls = scheme == "rediss";
                // The redis crate reads these; checking here reports a bad
                // URL at `check-config` rather than at connect time.
                redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(|_| format!("is not a valid {scheme}:// URL"))?;
                Ok(Topology::Single {
                    url: url.to_owned(),
                    tls,
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme == "rediss+sentinel";
                let (auth, hosts, path, query) = split(rest)?;
                let master = decode(path.trim_matches('/'))?;
                if master.is_empty() || master.contains('/') {
                    return Err(
                        "needs the master name as its path: redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME"
                            .to_owned(),
                    );
                }
                let mut sentinel_auth = Auth::default();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    match k {
                        "sentinel_username" => sentinel_auth.username = Some(decode(v)?),
                        "sentinel_password" => sentinel_auth.password = Some(decode(v)?),
                        _ => {
                            return Err(format!(
                                "has an unknown parameter {k:?} (known: sentinel_username, sentinel_password)"
                            ))
                        }
                    }
                }
                Ok(Topology::Sentinel {
                    sentinels: hosts,
                    master,
                    auth,
                    sentinel_auth,
                    tls,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme == "rediss+cluster";
                let (auth, nodes, path, query) = split(rest)?;
                if !path.trim_matches('/').is_empty() || !query.is_empty() {
                    return Err("takes no path or parameters: redis+cluster://HOST:PORT[,HOST:PORT…]".to_owned());
                }
                Ok(Topology::Cluster { nodes, auth, tls })
            }
            _ => Err("must start with redis://, rediss://, redis+sentinel:// or redis+cluster://".to_owned()),
        }
    }

    /// `single`, `sentinel` or `cluster` (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Single { .. } => "single",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        match self {
            Topology::Single { tls, .. } | Topology::Sentinel { tls, .. } | Topology::Cluster { tls, .. } => *tls,
        }
    }
}

/// The address of `host:port` in the form the `redis` crate wants.
pub fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

type Parts<'a> = (Auth, Vec<(String, u16)>, &'a str, &'a str);

/// `[user:password@]host:port[,host:port…][/path][?query]`.
fn split(rest: &str) -> Result<Parts<'_>, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let auth = match userinfo {
        None => Auth::default(),
        Some(u) => {
            let (user, password) = match u.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (u, None),
            };
            Auth {
                username: (!user.is_empty()).then(|| decode(user)).transpose()?,
                password: password.map(decode).transpose()?,
            }
        }
    };
    let mut nodes = Vec::new();
    for hp in hosts.split(',') {
        let (host, port) = hp
            .rsplit_once(':')
            .ok_or_else(|| "lists a node without :PORT (expected HOST:PORT[,HOST:PORT…])".to_owned())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .map_err(|_| "lists a node whose port is not a number".to_owned())?;
        if host.is_empty() || port == 0 {
            return Err("lists a node without a host or port".to_owned());
        }
        nodes.push((host.to_owned(), port));
    }
    Ok((auth, nodes, path, query))
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode(s).ok_or_else(|| "has an invalid percent-encoding".to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_stay_as_given() {
        let t = Topology::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(t.kind(), "single");
        assert!(!t.tls());
        assert!(Topology::parse("rediss://u:p@redis.example.com:6380").unwrap().tls());
    }

    #[test]
    fn sentinel_urls_name_nodes_master_and_credentials() {
        let t = Topology::parse(
            "redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2:26380/mymaster?sentinel_password=s%2Fp",
        )
        .unwrap();
        let Topology::Sentinel {
            sentinels,
            master,
            auth,
            sentinel_auth,
            tls,
        } = t
        else {
            panic!("not sentinel")
        };
        assert_eq!(
            sentinels,
            [("10.0.0.1".to_owned(), 26379), ("10.0.0.2".to_owned(), 26380)]
        );
        assert_eq!(master, "mymaster");
        assert_eq!(auth.username.as_deref(), Some("app"));
        assert_eq!(auth.password.as_deref(), Some("p@ss"));
        assert_eq!(sentinel_auth.password.as_deref(), Some("s/p"));
        assert!(!tls);
        assert!(Topology::parse("rediss+sentinel://h:1/m").unwrap().tls());
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let Topology::Cluster { nodes, auth, tls } =
            Topology::parse("redis+cluster://:secret@a:7000,b:7001,[::1]:7002").unwrap()
        else {
            panic!("not cluster")
        };
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2], ("::1".to_owned(), 7002));
        assert_eq!(auth.username, None);
        assert_eq!(auth.password.as_deref(), Some("secret"));
        assert!(!tls);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        for bad in [
            "http://x:1",
            "redis+sentinel://u:hunter2@a:1",
            "redis+sentinel://u:hunter2@a:1/",
            "redis+sentinel://u:hunter2@a/m",
            "redis+sentinel://u:hunter2@a:1/m?nope=1",
            "redis+cluster://u:hunter2@a:x",
            "redis+cluster://u:hunter2@a:1/db",
            "redis+cluster://u:hunter2%zz@a:1",
            "nonsense",
        ] {
            let err = Topology::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
        assert!(!format!("{:?}", Topology::parse("redis+cluster://:hunter2@a:1").unwrap()).contains("hunter2"));
    }
}
