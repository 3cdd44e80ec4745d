//! Memory stays flat under repeated sign-ins: after a warm-up, thousands of
//! SAML ACS validations (`SamlConnector::complete` on the six vendor
//! captures in turn, signed Responses and signed Assertions) must not keep
//! memory. It used to: samael leaked the detached Response of every signed
//! Assertion, ~2.5 KB per sign-in (docs/performance-log.md, "Memory").
//!
//! What is measured is glibc's count of bytes in use (`mallinfo2`: the small
//! blocks of every arena plus the mmapped large ones), which sees libxml2's,
//! xmlsec's and openssl's allocations as well as Rust's, and, unlike the
//! resident set, does not move with fragmentation or with pages the
//! allocator keeps. The resident set is printed alongside. glibc's
//! per-thread caches of freed blocks (tcache) count as "in use" and made the
//! figure wander by up to ~0.9 MB between runs, so the measuring process
//! runs with them off (`GLIBC_TUNABLES=glibc.malloc.tcache_count=0`): then
//! a correct build grows by under 30 KB over the measured validations.
//!
//! The other tests of this binary run on other threads of the same process
//! and allocate meanwhile, so the measurement runs in a process of its own:
//! [`saml_validation_memory_is_flat`] runs this test binary again with only
//! [`measure_saml_validations`] selected.

use crate::saml_common::{attr_value, fixtures, form, pending};
use crate::support::replay_free::{ReplayFree, ReplayWrites};
use chrono::{DateTime, Utc};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::store::memory::MemoryStore;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::saml::{self, SamlConnector};
use portcullis::upstream::{CallbackParams, Connection, ConnectionKind, Connector, UpstreamContext};
use std::sync::Arc;

const VENDORS: [&str; 6] = ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"];
/// Validations before the baseline: one-time setup (xmlsec's init, the
/// blocking pool's threads and their arenas, lazily built tables).
const WARM_UP: usize = 1_000;
/// Validations measured after the baseline.
const MEASURED: usize = 4_000;
/// Allowed growth of the bytes in use over the measured validations: 64
/// bytes a validation. The leak this guards against kept ~2,500; a correct
/// build grows by under 30 KB in all.
const BOUND: usize = 64 * MEASURED;
/// Connector builds (per capture) measured after a warm-up of a quarter of that.
const REBUILDS: usize = 100;
/// Allowed growth over those builds: 32 bytes a build; one leaked xmlsec key
/// (an `xmlSecKey`, its key data and the `EVP_PKEY`) is over 1 KB.
const REBUILD_BOUND: usize = 32 * REBUILDS * VENDORS.len();
/// Connectors (and records) built and held at once to weigh one.
const HELD: usize = 50;
/// What one connection kept ready may cost: a vendor's connector and its
/// record weigh 10 to 30 KB (docs/performance-log.md, twenty-fifth pass).
const PER_CONNECTION_BOUND: usize = 128 * 1024;
/// The glibc tunable that turns the per-thread caches off.
const NO_TCACHE: &str = "glibc.malloc.tcache_count=0";

/// glibc's `struct mallinfo2` (glibc 2.33+).
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// Bytes handed out by malloc and not yet freed, all arenas and mmapped
/// blocks included.
fn in_use() -> usize {
    // SAFETY: mallinfo2 takes no argument and returns a plain struct.
    let info = unsafe { mallinfo2() };
    info.uordblks + info.hblkhd
}

/// The resident set, in KiB (4 KiB pages).
fn rss_kib() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

struct Capture {
    connector: SamlConnector,
    params: CallbackParams,
    pending: Option<serde_json::Value>,
    /// What the connector was built from, to build it again.
    rebuild: (Connection, saml::SamlConfig, UpstreamContext),
}

/// The connection of `tests/api/saml_vendors.rs` for one capture, its clock
/// at the capture's `now`.
async fn capture(vendor: &str) -> Capture {
    let dir = fixtures().join("assertions").join(vendor);
    let params: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("params.json")).unwrap()).unwrap();
    let now: DateTime<Utc> = params["now"].as_str().unwrap().parse().unwrap();
    let clock: SharedClock = Arc::new(ManualClock::at(now));
    let ctx = UpstreamContext {
        // The Keycloak capture's endpoints are http on loopback, which the IdP URL
        // rule allows only when private networks are.
        http: OutboundHttp::new(OutboundConfig {
            allow_private_networks: true,
            ..OutboundConfig::default()
        })
        .unwrap(),
        clock: clock.clone(),
        // The replay cache forgets: it would refuse each capture from the second
        // time on and (legitimately) grow by one entry a validation.
        store: Arc::new(ReplayFree(MemoryStore::new(clock), ReplayWrites::Dropped)),
        public_url: url::Url::parse("https://sso.example.test/").unwrap(),
        clock_skew_secs: 60,
        saml_in_place_bytes: 0,
    };
    let (tenant, id) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("idp").unwrap());
    let xml = std::fs::read_to_string(dir.join("assertion.xml")).unwrap();
    let body = serde_json::json!({
        "metadata_xml": std::fs::read_to_string(dir.join("metadata.xml")).unwrap(),
        "allow_idp_initiated": true,
        "default_client_id": "app",
        "redirect_uri": "https://app.example.test/cb",
    });
    let mut cfg = saml::setup(body, &ctx, &tenant, &id).await.unwrap();
    cfg.sp_entity_id = Some(params["sp_entity_id"].as_str().unwrap().to_owned());
    cfg.acs_url = attr_value(&xml, "Recipient");
    let conn = Connection {
        id,
        tenant,
        revision: 1,
        status: portcullis::upstream::ConnectionStatus::Active,
        disabled_by_platform: false,
        kind: ConnectionKind::Saml(cfg.clone()),
    };
    Capture {
        connector: SamlConnector::new(&conn, cfg.clone(), ctx.clone()).unwrap(),
        params: form(xml.as_bytes()),
        pending: attr_value(&xml, "InResponseTo").map(|id| pending(&id)),
        rebuild: (conn, cfg, ctx),
    }
}

async fn validate(captures: &[Capture], count: usize) {
    for i in 0..count {
        let cap = &captures[i % captures.len()];
        cap.connector
            .complete(cap.pending.as_ref(), &cap.params)
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e}", VENDORS[i % VENDORS.len()]));
    }
}

/// The measurement; run alone in its own process by
/// [`saml_validation_memory_is_flat`] (the harness runs ignored tests only
/// when asked to).
#[tokio::test]
#[ignore = "measured in a process of its own by saml_validation_memory_is_flat"]
async fn measure_saml_validations() {
    assert!(
        std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(NO_TCACHE)),
        "run with GLIBC_TUNABLES={NO_TCACHE} (saml_validation_memory_is_flat does)"
    );
    let mut captures = Vec::new();
    for vendor in VENDORS {
        captures.push(capture(vendor).await);
    }
    validate(&captures, WARM_UP).await;
    let (base, base_rss) = (in_use(), rss_kib());
    println!("memory: after {WARM_UP}: {base} bytes in use, RSS {base_rss} KiB");
    let mut last = base;
    for step in 1..=4 {
        validate(&captures, MEASURED / 4).await;
        last = in_use();
        println!(
            "memory: after {}: {last} bytes in use ({:+}), RSS {} KiB",
            WARM_UP + step * MEASURED / 4,
            last as i64 - base as i64,
            rss_kib()
        );
    }
    let grown = last.saturating_sub(base);
    assert!(
        grown < BOUND,
        "{MEASURED} SAML validations after the first {WARM_UP} kept {grown} bytes \
         ({} per validation; at most {BOUND} in all allowed)",
        grown / MEASURED
    );

    // Building a connector loads the IdP's keys into xmlsec (once per
    // connector, `dsig::IdpKeys`); dropping it must free them, or every
    // configuration change would keep them.
    let rebuild = |captures: &mut Vec<Capture>| {
        for cap in captures.iter_mut() {
            let (conn, cfg, ctx) = &cap.rebuild;
            cap.connector = SamlConnector::new(conn, cfg.clone(), ctx.clone()).unwrap();
        }
    };
    for _ in 0..REBUILDS / 4 {
        rebuild(&mut captures);
    }
    validate(&captures, VENDORS.len()).await;
    let base = in_use();
    for _ in 0..REBUILDS {
        rebuild(&mut captures);
    }
    validate(&captures, VENDORS.len()).await;
    let grown = in_use().saturating_sub(base);
    println!(
        "connectors: {} rebuilt: {grown} bytes kept, RSS {} KiB",
        REBUILDS * VENDORS.len(),
        rss_kib()
    );
    assert!(
        grown < REBUILD_BOUND,
        "{} connector builds kept {grown} bytes (at most {REBUILD_BOUND} allowed)",
        REBUILDS * VENDORS.len()
    );

    // What one connection kept ready costs a replica (the bound of
    // `[upstream] cached_connections` times this): a built connector, and
    // the decoded record the registry keeps beside it.
    for (vendor, cap) in VENDORS.iter().zip(&captures) {
        let (conn, cfg, ctx) = &cap.rebuild;
        let base = in_use();
        let kept: Vec<SamlConnector> = (0..HELD)
            .map(|_| SamlConnector::new(conn, cfg.clone(), ctx.clone()).unwrap())
            .collect();
        let connector = in_use().saturating_sub(base) / HELD;
        let base = in_use();
        let records: Vec<Connection> = (0..HELD).map(|_| conn.clone()).collect();
        let record = in_use().saturating_sub(base) / HELD;
        println!(
            "kept per connection: {vendor}: connector {connector} bytes, record {record} bytes \
             (metadata {} bytes)",
            cfg.metadata_xml.len()
        );
        assert!(
            connector + record < PER_CONNECTION_BOUND,
            "{vendor}: {connector} + {record} bytes kept per connection (at most {PER_CONNECTION_BOUND})"
        );
        drop((kept, records));
    }
}

#[test]
fn saml_validation_memory_is_flat() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "memory_flat::measure_saml_validations",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GLIBC_TUNABLES", NO_TCACHE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the measurement failed:\n{stdout}\n{stderr}");
    // It ran, and measured: not a filter that matched nothing.
    assert!(
        stdout.contains("1 passed")
            && stdout.matches("memory: after").count() == 5
            && stdout.contains("connectors: ")
            && stdout.matches("kept per connection: ").count() == VENDORS.len(),
        "the measurement did not run:\n{stdout}"
    );
}
