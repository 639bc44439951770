//! What each of the lab's scenarios (the sample, a user's manifests) hands back, and what they
//! share: applying a manifest the way the lab's mode does, and one request as a user reads it.

use anyhow::Result;
use weft_testbed::{Pod, TestBed};

/// One round of light traffic, summed up in a line: run every few seconds while the lab is
/// up, so that what a user changes shows.
pub(crate) type Probe = Box<dyn Fn(&TestBed) -> String>;

/// What a scenario leaves for the common end of the lab.
pub(crate) struct Scenario {
    /// What went wrong (the lab exits non-zero after its summary).
    pub(crate) problems: Vec<String>,
    /// A command a user can run while the lab is up.
    pub(crate) try_it: String,
    /// The traffic watched while the lab runs.
    pub(crate) probe: Probe,
}

/// Applies a manifest as the lab's mode does: `kubectl apply` on its API server, else a file in
/// its controller's manifest directory.
pub(crate) fn apply(bed: &TestBed, file: &str, text: &str) -> Result<()> {
    if bed.control_plane().is_none() {
        return bed.write_manifest(file, text);
    }
    let path = bed.dir().join(file);
    std::fs::write(&path, text)?;
    bed.kubectl(&["apply", "-f", &path.display().to_string()])?;
    Ok(())
}

/// One request from `client`, with `header` if given, as a user reads the outcome: who
/// answered, the status and the first line of the body, or why there was no answer.
pub(crate) fn answer(
    bed: &TestBed,
    client: &Pod,
    url: &str,
    header: Option<&str>,
) -> Result<String> {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--connect-timeout",
        "3",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    if let Some(h) = header {
        argv.extend(["-H", h]);
    }
    argv.push(url);
    let out = bed.exec(client, &argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", stdout.trim()));
    Ok(match code {
        "200" => format!("200 from {}", body.trim()),
        // curl's exit status says how: 52 and 56 are a connection closed without an answer,
        // which is how a node proxy refuses a connection its policy does not allow.
        "000" | "" => match out.status.code() {
            Some(52 | 56) => "no answer (the connection was closed: refused by policy?)".into(),
            Some(7) => "no answer (connection refused)".into(),
            Some(28) => "no answer (timed out)".into(),
            _ => format!(
                "no answer ({})",
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("curl: ")
            ),
        },
        code => format!("{code} {}", body.lines().next().unwrap_or("").trim()),
    })
}
