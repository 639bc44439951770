//! `weft stat`, deploy/observability's dashboards and alert rules on the lab's kind of mesh (a
//! controller reading a manifest directory), against a real Prometheus scraping the node
//! proxies, the waypoint and the controller by address.

#[path = "support/stat.rs"]
mod support;

#[test]
fn weft_stat_the_dashboards_and_the_alert_rules_agree_with_the_traffic() -> anyhow::Result<()> {
    support::stat_agrees_with_the_traffic(weft_testbed::fixtures::bookinfo("stat")?)
}
