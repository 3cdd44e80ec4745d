//! The generator's view of the gateway: one public URL, served by one or
//! more replicas. With `--replica`, every request to the public URL goes to
//! the next replica in turn, as a load balancer without stickiness would:
//! the steps of one sign-in (its `/authorize`, the ACS, the continuation,
//! the `/token`) land on different replicas, so a run also shows that the
//! replicas share everything a sign-in needs through the store.

use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use url::Url;

/// Requests sent to one replica.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    /// Where the replica listens.
    pub address: String,
    /// Requests sent to it over the whole run (setup included).
    pub requests: u64,
}

struct Replica {
    addr: SocketAddr,
    sent: AtomicU64,
}

/// An HTTP client for the gateway that spreads its requests over the
/// replicas. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Gateway {
    client: reqwest::Client,
    public: Url,
    replicas: Arc<[Replica]>,
    next: Arc<AtomicUsize>,
}

impl Gateway {
    /// A client for the gateway whose public URL is `public`, served by
    /// `replicas` (none: `public` itself).
    pub fn new(client: reqwest::Client, public: Url, replicas: &[SocketAddr]) -> Gateway {
        let replicas: Vec<Replica> = replicas
            .iter()
            .map(|&addr| Replica {
                addr,
                sent: AtomicU64::new(0),
            })
            .collect();
        Gateway {
            client,
            public,
            replicas: replicas.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `GET url`.
    pub fn get(&self, url: Url) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: Url) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// A request to `url`: one on the gateway's public URL goes to the next
    /// replica; any other (none in the scenarios) as it is.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, self.route(url))
    }

    /// Where a request for `url` goes.
    fn route(&self, mut url: Url) -> Url {
        if self.replicas.is_empty() || url.origin() != self.public.origin() {
            return url;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
        let Some(replica) = self.replicas.get(i) else {
            return url;
        };
        // Neither fails on an http(s) URL, which the public URL's origin is.
        if url.set_ip_host(replica.addr.ip()).is_ok() && url.set_port(Some(replica.addr.port())).is_ok() {
            replica.sent.fetch_add(1, Ordering::Relaxed);
        }
        url
    }

    /// Requests sent to each replica so far (empty without `--replica`).
    pub fn replicas(&self) -> Vec<ReplicaReport> {
        self.replicas
            .iter()
            .map(|r| ReplicaReport {
                address: r.addr.to_string(),
                requests: r.sent.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(replicas: &[&str]) -> Gateway {
        let addrs: Vec<SocketAddr> = replicas.iter().map(|a| a.parse().unwrap()).collect();
        Gateway::new(
            reqwest::Client::new(),
            Url::parse("http://127.0.0.1:8080").unwrap(),
            &addrs,
        )
    }

    #[test]
    fn requests_to_the_public_url_go_to_each_replica_in_turn() {
        let g = gateway(&["127.0.0.1:9001", "127.0.0.2:9002"]);
        let to = |path: &str| g.route(Url::parse(&format!("http://127.0.0.1:8080{path}")).unwrap());
        assert_eq!(to("/authorize?a=b").as_str(), "http://127.0.0.1:9001/authorize?a=b");
        assert_eq!(to("/token").as_str(), "http://127.0.0.2:9002/token");
        assert_eq!(to("/jwks").as_str(), "http://127.0.0.1:9001/jwks");
        let sent: Vec<u64> = g.replicas().iter().map(|r| r.requests).collect();
        assert_eq!(sent, [2, 1]);
    }

    #[test]
    fn other_origins_and_a_gateway_without_replicas_are_left_alone() {
        let g = gateway(&["127.0.0.1:9001"]);
        for other in [
            "http://127.0.0.1:9/cb",
            "https://127.0.0.1:8080/x",
            "http://localhost:8080/x",
        ] {
            assert_eq!(g.route(Url::parse(other).unwrap()).as_str(), other);
        }
        assert_eq!(g.replicas()[0].requests, 0);
        let plain = gateway(&[]);
        let url = Url::parse("http://127.0.0.1:8080/token").unwrap();
        assert_eq!(plain.route(url.clone()), url);
        assert!(plain.replicas().is_empty());
    }
}
