use clap::Parser;
use conclave::cli::{run, Cli};

fn main() {
    conclave::telemetry::init();
    let result = run(Cli::parse());
    // Spans still batched are exported before the process ends.
    conclave::telemetry::shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
