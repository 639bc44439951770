//! `weft`: the Weft command line. `weft lab` runs the local mesh on one Linux machine.

mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Weft: a sidecarless service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a local mesh in network namespaces: 2 nodes, an ambient namespace with sample
    /// services, traffic across it and a summary; keeps running until Ctrl-C.
    Lab(lab::LabArgs),
}

fn main() -> anyhow::Result<()> {
    weft_core::telemetry::init(weft_core::telemetry::LogFormat::Plain, "warn");
    match Cli::parse().command {
        Command::Lab(args) => lab::run(&args),
    }
}
