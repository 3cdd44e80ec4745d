//! The `portcullis` binary: parse the command line and run it.

use clap::Parser;

/// With the `mimalloc` feature, the Rust allocations of the whole process
/// (not those of the C libraries) go to mimalloc instead of glibc's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    portcullis::telemetry::init();
    portcullis::tls::install_default_provider();
    let cli = portcullis::cli::Cli::parse();
    let code = portcullis::cli::run(cli).await;
    portcullis::telemetry::shutdown();
    std::process::exit(code?);
}
