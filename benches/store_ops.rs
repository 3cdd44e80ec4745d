//! The gateway's CPU per store operation, layer by layer, against a real
//! `redis-server` this benchmark starts itself (on a free port, stopped at
//! the end): raw redis-rs (the floor), [`RedisStore`], the metered store
//! (`MeteredStore<RedisStore>`, what `app::open_store` builds, with the
//! Prometheus recorder installed as in the gateway) and the whole stack
//! every caller sees (`SealedStore` over it), each with one caller (every
//! operation a sequential wait: the light-load wake-up cost) and with 32
//! concurrent callers (operations share wake-ups and writes: the saturated
//! cost). The runtime is the gateway's on one core: a multi-thread runtime
//! with one worker (`STORE_OPS_RUNTIME=current` for a current-thread one).
//!
//! CPU is the process's own (all threads, `/proc/self/task/*/schedstat`,
//! nanoseconds), not Redis's: pin the two apart for stable numbers, e.g.
//! `STORE_OPS_REDIS_CPUS=1 taskset -c 0 cargo bench --bench store_ops`
//! (Redis is started under `taskset -c $STORE_OPS_REDIS_CPUS`). Prints one
//! line per layer and concurrency; asserts nothing about time.
//!
//! `STORE_OPS_ONLY=<text>` runs only the layers whose name contains it (to
//! profile one), `STORE_OPS_CALLERS=1|32` only that concurrency. `cargo bench` runs the full counts; run without `--bench` (as `cargo
//! test --all-targets` does) it runs a few operations per layer, a smoke
//! check that every layer works against a real server.

use portcullis::secrets::sealed::SealedStore;
use portcullis::store::metered::MeteredStore;
use portcullis::store::redis::{RedisOptions, RedisStore};
use portcullis::store::{Key, Read, SharedStore, Store};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of this process so far (every thread), in nanoseconds.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path().join("schedstat");
        // A thread may have ended between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// A throwaway `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("portcullis-store-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().expect("UTF-8 temporary directory"),
        ];
        let mut cmd = match std::env::var("STORE_OPS_REDIS_CPUS") {
            Ok(cpus) if !cpus.is_empty() => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg("redis-server");
                c
            }
            _ => Command::new("redis-server"),
        };
        let child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing (Debian: apt-get install -y redis-server)");
        let server = RedisServer { child, port, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on port {port} within 5 s");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `op` `per_caller` times in each of `callers` concurrent tasks and
/// prints the CPU per operation.
async fn run<F, Fut>(name: &str, callers: usize, per_caller: usize, op: F)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if std::env::var("STORE_OPS_ONLY").is_ok_and(|only| !name.contains(only.as_str())) {
        return;
    }
    if std::env::var("STORE_OPS_CALLERS").is_ok_and(|c| c != callers.to_string()) {
        return;
    }
    // Warm-up: connections, script caches, histogram handles.
    for _ in 0..(per_caller / 10).max(1) {
        op().await;
    }
    let c0 = cpu_ns();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_caller {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a caller panicked");
    }
    let n = (callers * per_caller) as f64;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ns() - c0) as f64 / 1e3;
    println!(
        "{name:34} callers {callers:3}  {:8.0} ops/s  cpu {:6.2} us/op",
        n / wall,
        cpu / n
    );
}

macro_rules! layer {
    ($name:expr, $callers:expr, $per:expr, ($($v:ident),+), |$s:ident| $body:expr) => {{
        let store = ($($v.clone()),+);
        run($name, $callers, $per, move || {
            let $s = store.clone();
            async move {
                $body;
            }
        })
        .await;
    }};
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let server = RedisServer::start();
    let url = server.url();
    let rt = match std::env::var("STORE_OPS_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    }
    .expect("runtime");
    rt.block_on(async move {
        // As in the gateway: the Prometheus recorder, so the metered layer
        // records into real histograms.
        portcullis::meter::install();
        let opts = RedisOptions {
            wait_replicas: Some(0),
            ..RedisOptions::new(&url, "bench")
        };
        let redis = Arc::new(RedisStore::connect_with(&opts).await.expect("RedisStore"));
        let metered: SharedStore = Arc::new(MeteredStore::new(
            RedisStore::connect_with(&opts).await.expect("RedisStore"),
        ));
        let sealed: SharedStore = Arc::new(SealedStore::new(metered.clone(), None, false));
        let key = Key::tenant("t1", "config", "tenant");
        let other = Key::tenant("t1", "config", "connections");
        redis.put(&key, &[b'a'; 300], None).await.expect("put");
        redis.put(&other, &[b'b'; 40], None).await.expect("put");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).expect("URL");
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings)).expect("client");
        let raw = redis::aio::ConnectionManager::new(client)
            .await
            .expect("ConnectionManager");
        let rendered = Arc::new(key.render("bench"));
        let key = Arc::new(key);
        let other = Arc::new(other);

        println!("gateway CPU per store operation (this process; Redis's own CPU not counted)");
        for (callers, per) in [(1usize, 20_000usize), (32, 2_000)] {
            let per = if full { per } else { (per / 100).max(5) };
            {
                let (raw, rendered) = (raw.clone(), rendered.clone());
                run("raw redis-rs GET", callers, per, move || {
                    let (mut raw, rendered) = (raw.clone(), rendered.clone());
                    async move {
                        let v: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(rendered.as_str())
                            .query_async(&mut raw)
                            .await
                            .expect("GET");
                        assert!(v.is_some());
                    }
                })
                .await;
            }
            let k = &key;
            layer!("RedisStore::get", callers, per, (redis, k), |s| {
                assert!(s.0.get(&s.1).await.expect("get").is_some())
            });
            layer!("Metered<Redis>::get", callers, per, (metered, k), |s| {
                assert!(s.0.get(&s.1).await.expect("get").is_some())
            });
            layer!("Sealed<Metered<Redis>>::get", callers, per, (sealed, k), |s| {
                assert!(s.0.get(&s.1).await.expect("get").is_some())
            });
            layer!("RedisStore::get_if_changed", callers, per, (redis, k), |s| {
                s.0.get_if_changed(&s.1, Some("0123456789abcdef0123456789abcdef01234567"))
                    .await
                    .expect("get_if_changed")
            });
            let o = &other;
            layer!("RedisStore::read_many(2)", callers, per, (redis, k, o), |s| {
                s.0.read_many(&[(&s.1, Read::Value), (&s.2, Read::Presence)])
                    .await
                    .expect("read_many")
            });
            layer!("RedisStore::put", callers, per, (redis, k), |s| {
                s.0.put(&s.1, &[b'a'; 300], None).await.expect("put")
            });
            layer!("Sealed<Metered<Redis>>::put", callers, per, (sealed, k), |s| {
                s.0.put(&s.1, &[b'a'; 300], None).await.expect("put")
            });
        }
    });
    drop(server);
}
