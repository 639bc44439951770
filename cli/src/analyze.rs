//! `weft analyze`: the controller's own parsers, translation and verdicts, run offline on
//! manifest files (and/or on the cluster's objects), so a user learns before `kubectl apply`
//! what Weft will honour, what it will not, and what it refuses. The verdicts are the ones the
//! controller writes into each object's status: one code path ([`status::verdicts`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use weft_controller::model::Objects;
use weft_controller::model::status::{self, Reason, Rejected, Verdict};
use weft_controller::source::manifests::parse_documents;

use crate::output::{Format, Style, print_data, table};

/// `weft analyze` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct AnalyzeArgs {
    /// A manifest file, a directory of them (`*.yaml`, `*.yml`, `*.json`), or `-` for stdin.
    /// Repeatable; a later file's version of an object wins.
    #[arg(short = 'f', long = "filename", required_unless_present = "cluster")]
    files: Vec<PathBuf>,
    /// Start from the cluster's objects (the current kubeconfig), as the controller sees them;
    /// files given with `-f` are judged as if applied on top.
    #[arg(long)]
    cluster: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// What `analyze` found, as `-o json|yaml` prints it.
#[derive(Serialize)]
struct Report {
    /// One per policy: accepted, partially honoured or refused.
    verdicts: Vec<Verdict>,
    /// Documents that could not be read and are not policies (or could not say which).
    errors: Vec<String>,
}

/// Runs `weft analyze`: exit 0 when nothing is refused, 1 when a policy is refused or a
/// document cannot be read.
pub(crate) fn run(args: &AnalyzeArgs) -> Result<ExitCode> {
    let mut objects = Objects::default();
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut errors = Vec::new();
    if args.cluster {
        let snapshot = cluster_snapshot()?;
        objects = snapshot.objects.clone();
        rejected.extend(snapshot.rejected.iter().cloned());
        errors.extend(snapshot.errors.iter().cloned());
    }
    for (path, text) in read_inputs(&args.files)? {
        let parsed = parse_documents(&path, &text);
        for object in parsed.objects {
            // Applied on top: a good version replaces the cluster's refusal of the same object.
            if let weft_controller::model::Object::Policy(p) = &object {
                rejected.retain(|r| !(r.kind == p.kind && r.key == p.key));
            }
            objects.upsert(object);
        }
        let policies: Vec<String> = parsed.rejected.iter().map(|r| r.message.clone()).collect();
        errors.extend(
            parsed
                .errors
                .into_iter()
                .filter(|e| !policies.iter().any(|m| e.ends_with(m.as_str()))),
        );
        for r in parsed.rejected {
            rejected.retain(|old| !(old.kind == r.kind && old.key == r.key));
            rejected.push(r);
        }
    }
    let report = Report {
        verdicts: status::verdicts(&objects, &rejected),
        errors,
    };
    match args.output {
        Format::Table => print_table(&report, Style::detect()),
        format => print_data(format, &report)?,
    }
    let refused = report.verdicts.iter().any(|v| v.reason == Reason::Invalid);
    Ok(if refused || !report.errors.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every manifest named by `paths`, with its text.
fn read_inputs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let text = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
            out.push((PathBuf::from("<stdin>"), text));
            continue;
        }
        let meta =
            std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot list", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("{}: cannot read", file.display()))?;
                out.push((file, text));
            }
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            out.push((path.clone(), text));
        }
    }
    Ok(out)
}

/// The cluster's objects as the controller's Kubernetes source reads them (one list of every
/// kind it watches), within 30 s.
fn cluster_snapshot() -> Result<std::sync::Arc<weft_controller::source::kubernetes::Snapshot>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no cluster: the kubeconfig (KUBECONFIG or ~/.kube/config) could not be used")?;
        let mut snapshots = weft_controller::source::kubernetes::spawn(&client);
        let synced = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if snapshots.borrow().synced {
                    return Ok(snapshots.borrow().clone());
                }
                if snapshots.changed().await.is_err() {
                    bail!("the cluster's objects could not be read");
                }
            }
        })
        .await;
        match synced {
            Ok(snapshot) => snapshot,
            Err(_) => bail!("the cluster's objects were not all listed within 30 s (is the API server reachable, and may this user list them?)"),
        }
    })
}

fn print_table(report: &Report, style: Style) {
    let rows: Vec<Vec<String>> = report
        .verdicts
        .iter()
        .map(|v| {
            let mark = match v.reason {
                Reason::Accepted if v.hints.is_empty() => style.ok(),
                Reason::Accepted | Reason::PartiallyHonoured => style.warn(),
                Reason::Invalid => style.bad(),
            };
            vec![
                mark,
                v.kind.kind().to_owned(),
                v.key.to_string(),
                v.reason.as_str().to_owned(),
            ]
        })
        .collect();
    table(&["", "KIND", "NAMESPACE/NAME", "VERDICT"], &rows);
    let mut detail = Vec::new();
    for v in &report.verdicts {
        let mut lines = Vec::new();
        if v.reason == Reason::Invalid {
            lines.push(format!("{} refused: {}", style.bad(), v.message));
        }
        lines.extend(
            v.notes
                .iter()
                .map(|n| format!("{} not honoured: {n}", style.warn())),
        );
        lines.extend(
            v.findings
                .iter()
                .map(|f| format!("{} without effect: {f}", style.warn())),
        );
        lines.extend(v.hints.iter().map(|h| format!("{} {h}", style.info())));
        if !lines.is_empty() {
            detail.push((format!("{} {}", v.kind.kind(), v.key), lines));
        }
    }
    for (object, lines) in detail {
        println!("\n{}", style.bold(&object));
        for line in lines {
            println!("  {line}");
        }
    }
    if !report.errors.is_empty() {
        println!("\n{}", style.bold("Documents that could not be read"));
        for e in &report.errors {
            println!("  {} {e}", style.bad());
        }
    }
    let count = |r: Reason| report.verdicts.iter().filter(|v| v.reason == r).count();
    println!(
        "\n{} accepted, {} partially honoured, {} refused, {} unreadable",
        count(Reason::Accepted),
        count(Reason::PartiallyHonoured),
        count(Reason::Invalid),
        report.errors.len()
    );
}
