//! `weft stat`, the dashboards and the alert rules on a real API server, against a real
//! Prometheus that finds the node proxies and the waypoint as a user's would:
//! deploy/observability's pod discovery by annotation.

#[path = "support/stat.rs"]
mod support;

#[test]
fn on_a_cluster_whose_prometheus_finds_the_proxies_by_annotation_stat_dashboards_and_alerts_agree()
-> anyhow::Result<()> {
    let Some(assets) = weft_testbed::cluster::tier_assets() else {
        return Ok(());
    };
    support::stat_agrees_with_the_traffic(weft_testbed::fixtures::bookinfo_on(
        "kstat",
        Some(&assets),
    )?)
}
