//! `weft`: the Weft command line. `weft lab` runs the local mesh on one Linux machine;
//! `weft analyze` judges manifests before they are applied.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem (a refused policy, a failed
//! check); 2 the command could not run (bad flags, unreadable input, no cluster).

mod analyze;
mod check;
mod checks_proxies;
mod cluster;
mod install;
mod lab;
mod mesh_cmds;
mod output;
mod precheck;
mod proxy_config;
mod proxy_status;
mod report;
mod stat;

use std::process::ExitCode;

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
    /// Judges manifests as the controller would, before they are applied: each policy's
    /// verdict (accepted; partially honoured, naming each field Weft does not act on or that
    /// has no effect among the other objects; refused, naming the field and why). Exits 1 when
    /// anything is refused or unreadable.
    Analyze(analyze::AnalyzeArgs),
    /// Checks an installed Weft (or, with --pre, a cluster before install): a ✓/‼/× list
    /// with a hint and a docs entry for each problem. Exits 1 when a check failed.
    Check(check::CheckArgs),
    /// Every node proxy and waypoint as the controller sees it: connected, config
    /// acknowledged (or the refusal's reason), capture mode, certificate expiry. Exits 1 when
    /// one is disconnected or out of sync.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// What one node proxy or waypoint holds (workloads, services, policies, certificates),
    /// from its own config dump.
    ProxyConfig(proxy_config::ProxyConfigArgs),
    /// Golden metrics from Prometheus, per workload, service or namespace: success rate,
    /// requests per second and latency percentiles (what waypoints report), open TCP
    /// connections (what node proxies report).
    Stat(stat::StatArgs),
    /// Installs Weft: renders deploy/ (an overlay), adds the CRDs the cluster lacks, applies
    /// everything server-side, and waits for the controller and every node proxy.
    Install(install::InstallArgs),
    /// Uninstalls Weft: namespaces out of the mesh and waypoints deleted first, then, once every
    /// node proxy has released its pods, Weft's objects; waits for the node proxies to go.
    Uninstall(install::UninstallArgs),
    /// Puts a namespace's pods in the mesh, or takes them out.
    #[command(subcommand)]
    Namespace(mesh_cmds::NamespaceCommand),
    /// Deploys, lists, checks and deletes waypoints.
    #[command(subcommand)]
    Waypoint(mesh_cmds::WaypointCommand),
    /// Prints a shell completion script: `weft completions bash > /etc/bash_completion.d/weft`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Writes the CustomResourceDefinitions of the policy APIs Weft reads (generated from its
    /// own types), one file per kind into DIR, or all to stdout.
    Crds {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let _log = weft_core::telemetry::init(weft_core::telemetry::LogFormat::Plain, "warn");
    let result = match Cli::parse().command {
        Command::Lab(args) => lab::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Analyze(args) => analyze::run(&args),
        Command::Check(args) => check::run(&args),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::ProxyConfig(args) => proxy_config::run(&args),
        Command::Stat(args) => stat::run(&args),
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::Namespace(command) => mesh_cmds::namespace(&command),
        Command::Waypoint(command) => mesh_cmds::waypoint(&command),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            use std::io::Write as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Crds { out } => crds(out.as_deref()).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn crds(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    for crd in weft_controller::k8s::crds::crds() {
        let text = format!(
            "# Generated by `weft crds` from Weft's own policy types: do not edit.\n{}",
            serde_yaml::to_string(&crd)?
        );
        match out {
            Some(dir) => {
                let name = crd["metadata"]["name"].as_str().unwrap_or("crd");
                std::fs::write(dir.join(format!("{name}.yaml")), text)?;
            }
            None => print!("---\n{text}"),
        }
    }
    Ok(())
}
