//! The `portcullis` binary: parse the command line and run it.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    portcullis::telemetry::init();
    portcullis::tls::install_default_provider();
    let cli = portcullis::cli::Cli::parse();
    let code = portcullis::cli::run(cli).await;
    portcullis::telemetry::shutdown();
    std::process::exit(code?);
}
