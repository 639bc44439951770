//! `weft proxy-status`: every node proxy and waypoint as the controller sees it: connected,
//! config acknowledged or the last refusal's reason, capture mode, the first certificate to
//! expire, version. From the controller's admin endpoint (see `weft check`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use serde_json::Value;

use crate::output::{Format, print_data, table};

/// `weft proxy-status` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxyStatusArgs {
    /// The controller's admin endpoint (after `kubectl port-forward -n weft-system
    /// deploy/weft-controller 15014`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    controller_admin: SocketAddr,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// Runs `weft proxy-status`: exit 1 when a proxy is disconnected or out of sync.
pub(crate) fn run(args: &ProxyStatusArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let proxies = runtime.block_on(crate::cluster::admin_json(args.controller_admin, "/debug/proxies"))
        .map_err(|e| anyhow::anyhow!("the controller's admin endpoint {}: {e:#} (kubectl port-forward -n weft-system deploy/weft-controller 15014)", args.controller_admin))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut unhealthy = false;
    let mut rows = Vec::new();
    for (name, s) in proxies.as_object().into_iter().flatten() {
        let connected = s["connected"].as_bool().unwrap_or(false);
        let synced = s["in_sync"].as_bool().unwrap_or(false);
        unhealthy |= !connected || !synced;
        let first_expiry = s["certificates"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, c)| c["expires_unix"].as_u64())
            .min();
        rows.push(vec![
            name.clone(),
            text(&s["about"]["role"], "-"),
            if connected { "yes" } else { "NO" }.to_owned(),
            match (synced, s["last_nack"].as_str()) {
                (true, _) => format!("ACKED ({})", s["acked_resources"]),
                (false, Some(why)) => format!("NACKED: {why}"),
                (false, None) => "PENDING".to_owned(),
            },
            text(&s["about"]["capture"], "-"),
            match first_expiry {
                Some(t) if t <= now => "EXPIRED".to_owned(),
                Some(t) if t - now < 3600 => format!("{}m{:02}s", (t - now) / 60, (t - now) % 60),
                Some(t) => format!("{}h{:02}m", (t - now) / 3600, (t - now) % 3600 / 60),
                None => "-".to_owned(),
            },
            text(&s["about"]["version"], "-"),
        ]);
    }
    match args.output {
        Format::Table => table(
            &[
                "NAME",
                "ROLE",
                "CONNECTED",
                "CONFIG",
                "CAPTURE",
                "CERT EXPIRES IN",
                "VERSION",
            ],
            &rows,
        ),
        format => print_data(format, &proxies)?,
    }
    Ok(if unhealthy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn text(v: &Value, default: &str) -> String {
    v.as_str().unwrap_or(default).to_owned()
}
