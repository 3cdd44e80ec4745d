//! Ports for servers a test starts some time after choosing their port.
//!
//! A port the kernel hands out (`bind` to port 0) comes from its ephemeral
//! range, which is also where it takes the source port of every outgoing
//! connection: between choosing such a port and a server binding it seconds
//! later, another test's connection can take it. These ports are taken below
//! that range, where nothing is handed out, and held while the caller wants.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{TcpListener, UdpSocket};

/// A port on 127.0.0.1, free for UDP and TCP, held until dropped.
pub struct ReservedPort {
    pub port: u16,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

/// A port below the ephemeral range, held (UDP and TCP) until the
/// `ReservedPort` is dropped.
pub fn reserve_port() -> ReservedPort {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12000 {
        (10000, ephemeral_low)
    } else {
        (ephemeral_low.saturating_sub(2000).max(1024), ephemeral_low)
    };
    assert!(low < high, "no room below the ephemeral range ({ephemeral_low})");
    let random = RandomState::new();
    for attempt in 0u32..200 {
        let port = low + (random.hash_one(attempt) % u64::from(high - low)) as u16;
        if !hand_out(port) {
            continue;
        }
        let (Ok(udp), Ok(tcp)) = (
            UdpSocket::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", port)),
        ) else {
            continue;
        };
        return ReservedPort {
            port,
            _udp: udp,
            _tcp: tcp,
        };
    }
    panic!("no port free for UDP and TCP in {low}..{high}");
}

/// Records `port` as handed out; `false` if it was one of the last
/// [`RECENT`] handed out in this process. A port chosen but not yet bound
/// (by a server a test starts after choosing its other ports) is free to
/// the kernel, so without this two choices in a row could be the same
/// port: a TLS Redis was once started with its plain and TLS ports equal.
fn hand_out(port: u16) -> bool {
    static HANDED: std::sync::Mutex<std::collections::VecDeque<u16>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    if handed.contains(&port) {
        return false;
    }
    if handed.len() == RECENT {
        handed.pop_front();
    }
    handed.push_back(port);
    true
}

/// How many ports handed out last are not handed out again.
const RECENT: usize = 1024;

/// A port below the ephemeral range, free now (not held: for a server a
/// test starts, stops and starts again on the same port).
pub fn unhanded_port() -> u16 {
    reserve_port().port
}
