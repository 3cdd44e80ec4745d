//! `portcullis-load seed`: fills the gateway's Redis with many tenants and
//! users quickly, written directly in the gateway's key format with
//! pipelined writes (the admin API would take hours for a million users),
//! so the sign-in scenarios can be measured against a store holding 1 →
//! 100,000 tenants and 1 → 1,000,000 users.
//!
//! What is written is what the gateway itself writes for a tenant (its
//! record and its place in the tenant index) and for a just-in-time
//! provisioned user (its record, its identity link and its place in the
//! tenant's user index). The seeded tenants have no connection, so no one
//! signs in to them: they only make the store (and its indexes) as large
//! as a big deployment's. Records are plain JSON: neither kind holds a
//! sealed field. The key format is checked by `tests/api/load_smoke.rs`
//! (the gateway reads seeded tenants and users back through its admin API).

use clap::Parser;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// `portcullis-load seed` options.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "portcullis-load seed",
    about = "Fill the gateway's Redis with N tenants and M users (pipelined writes in the gateway's key format)"
)]
pub struct SeedOptions {
    /// The gateway's Redis (a single server: `redis://host:port/db`).
    #[arg(long, env = "PORTCULLIS_REDIS_URL")]
    pub redis_url: String,
    /// The gateway's key prefix (`[store] key_prefix`).
    #[arg(long, default_value = "portcullis")]
    pub prefix: String,
    /// Tenants to create (`seed-<run>-<k>`).
    #[arg(long, default_value_t = 1)]
    pub tenants: usize,
    /// Users to create, spread evenly over the seeded tenants.
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    /// Writes per pipeline.
    #[arg(long, default_value_t = 2000)]
    pub batch: usize,
}

/// What a seed wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seeded {
    /// The run id in every seeded tenant id (`seed-<run>-<k>`).
    pub run: String,
    /// Tenant ids, in order (the first few; all of them when fewer than 100).
    pub tenant_sample: Vec<String>,
    /// Tenants written.
    pub tenants: usize,
    /// Users written.
    pub users: usize,
    /// Seconds it took.
    pub seconds: f64,
}

fn key(prefix: &str, tag: &str, name: &str) -> String {
    format!("{prefix}:{{{tag}}}:{name}")
}

fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Writes the tenants and users `opts` asks for.
pub fn seed(opts: &SeedOptions) -> Result<Seeded, String> {
    let started = Instant::now();
    let client = redis::Client::open(opts.redis_url.as_str()).map_err(|e| format!("redis url: {e}"))?;
    let mut con = client.get_connection().map_err(|e| format!("redis: {e}"))?;
    let run: String = (0..6).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
    let tenants = opts.tenants.max(1);
    #[allow(clippy::disallowed_methods)] // Seeded records carry the real time, as the gateway's would.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let batch = opts.batch.max(1);
    let p = opts.prefix.as_str();
    let mut ids = Vec::with_capacity(tenants);
    let mut incarnations = Vec::with_capacity(tenants);
    let mut pipe = redis::pipe();
    let mut queued = 0usize;
    let flush = |pipe: &mut redis::Pipeline, queued: &mut usize, con: &mut redis::Connection| -> Result<(), String> {
        if *queued > 0 {
            pipe.query::<()>(con).map_err(|e| format!("redis: {e}"))?;
            *pipe = redis::pipe();
            *queued = 0;
        }
        Ok(())
    };
    for k in 0..tenants {
        let id = format!("seed-{run}-{k}");
        let incarnation = random_token(12);
        let record = json!({
            "id": id, "name": format!("Seed {run} {k}"), "domains": [],
            "created_at": now, "incarnation": incarnation, "settings": {},
        });
        pipe.cmd("SET")
            .arg(key(p, &format!("t:{id}:config"), "tenant"))
            .arg(record.to_string())
            .ignore();
        pipe.cmd("SADD").arg(key(p, "g:tenants", "index")).arg(&id).ignore();
        queued += 2;
        if queued >= batch {
            flush(&mut pipe, &mut queued, &mut con)?;
        }
        ids.push(id);
        incarnations.push(incarnation);
    }
    // Users, as a JIT sign-in through a connection `seed` leaves them.
    let connection_incarnation = random_token(12);
    for j in 0..opts.users {
        let t = j % tenants;
        let (Some(id), Some(inc)) = (ids.get(t), incarnations.get(t)) else {
            continue;
        };
        let sub = format!("u_seed{run}{j}");
        let subject = format!("seed-user-{j}");
        let email = format!("user{j}@seed-{run}.load.test");
        let user = json!({
            "sub": sub, "tenant": id, "connection": "seed", "upstream_subject": subject,
            "email": email, "email_verified": false, "name": format!("Seed user {j}"),
            "given_name": null, "family_name": null, "groups": [],
            "created_at": now, "updated_at": now,
            "tenant_incarnation": inc, "connection_incarnation": connection_incarnation,
        });
        let tag = format!("t:{id}:users");
        let link = format!(
            "link:{inc}.seed.{connection_incarnation}:{}",
            hex_lower(&Sha256::digest(subject.as_bytes()))
        );
        pipe.cmd("SET")
            .arg(key(p, &tag, &format!("user:{sub}")))
            .arg(user.to_string())
            .ignore();
        pipe.cmd("SET").arg(key(p, &tag, &link)).arg(&sub).ignore();
        pipe.cmd("SADD").arg(key(p, &tag, "index")).arg(&sub).ignore();
        queued += 3;
        if queued >= batch {
            flush(&mut pipe, &mut queued, &mut con)?;
        }
    }
    flush(&mut pipe, &mut queued, &mut con)?;
    Ok(Seeded {
        run,
        tenant_sample: ids.iter().take(100).cloned().collect(),
        tenants,
        users: opts.users,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
