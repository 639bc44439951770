//! `weft stat` on the lab's kind of mesh (a controller reading a manifest directory), against
//! a real Prometheus scraping the node proxies and the waypoint by address.

#[path = "support/stat.rs"]
mod support;

#[test]
fn weft_stat_reports_the_rate_success_rate_and_latency_the_traffic_had() -> anyhow::Result<()> {
    support::stat_agrees_with_the_traffic(weft_testbed::fixtures::bookinfo("stat")?)
}
