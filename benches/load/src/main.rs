//! `portcullis-load`: see the library documentation and `docs/PERFORMANCE.md`.

use clap::Parser as _;
use portcullis_load::{pin, run, Options};

/// The generator allocates with mimalloc, as the gateway does: a request's
/// allocations cost it less, so it is less often the limit (with glibc's
/// malloc, allocation was about a tenth of its CPU at JWKS rates).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `portcullis-load seed ...`: fill Redis, print what was written, exit.
    if std::env::args().nth(1).as_deref() == Some("seed") {
        let opts = portcullis_load::seed::SeedOptions::parse_from(std::env::args().skip(1));
        match portcullis_load::seed::seed(&opts) {
            Ok(done) => {
                println!(
                    "seeded {} tenants and {} users in {:.1} s (run {})",
                    done.tenants, done.users, done.seconds, done.run
                );
                return;
            }
            Err(e) => {
                eprintln!("portcullis-load seed: {e}");
                std::process::exit(2);
            }
        }
    }
    let opts = Options::parse();
    // Before the runtime starts its threads, so they all inherit it.
    if let Err(e) = pin(&opts.cpus) {
        eprintln!("portcullis-load: cannot pin to {:?}: {e}", opts.cpus);
        std::process::exit(2);
    }
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-load: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let report = match rt.block_on(run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-load: {e}");
            std::process::exit(2);
        }
    };
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if path == "-" {
            println!("{text}");
        } else if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("portcullis-load: writing {path}: {e}");
            std::process::exit(2);
        }
    }
    let shed = report.shed();
    if shed > 0 {
        eprintln!(
            "portcullis-load: {shed} operations were shed (HTTP 503): the gateway was over capacity; \
             throughput and latency are those of the operations it served"
        );
    }
    let errors = report.errors();
    if errors > 0 {
        eprintln!("portcullis-load: {errors} operations got an unexpected answer: the numbers are not valid");
        std::process::exit(1);
    }
}
