//! The nftables fallback: rules installed inside each enrolled pod's network namespace send its
//! outbound TCP to the proxy's outbound listener by TPROXY, its DNS queries (UDP to port 53) to
//! the DNS proxy's 127.0.0.1:15053 (conntrack answers as the nameserver), and TPROXY its inbound
//! plaintext to the inbound-plaintext listener; HBONE (15008) and the node's health probes are
//! left alone.
//!
//! Outbound TCP cannot be TPROXYed where it is sent (TPROXY works in prerouting only), so the
//! `route` output chain marks the connections the pod opens from now on (their conntrack mark;
//! connections open before enrollment, and replies on connections to the pod, are left alone)
//! and each of their packets with [`LOOP_MARK`], and a policy rule (`fwmark` → table
//! [`LOOP_TABLE`], whose one route makes every address local through `lo`) loops it back in,
//! where prerouting hands it to 127.0.0.1:15001. The accepted socket's local address is the
//! original destination, and its four-tuple is the client's own. REDIRECT (NAT) would give every
//! connection from the pod the same proxy-side address (127.0.0.1:15001), so a client port
//! reused towards another destination would meet the proxy's TIME_WAIT socket of an earlier
//! connection under TCP timestamps of another offset: the kernel refuses that SYN and the
//! client retries some 15 ms later (measured: a tenth of eBPF mode's connection rate).
//!
//! Sockets the proxy opens inside the pod carry `PROXY_MARK` and are never captured. If the
//! proxy is down the rules stay and the listeners are gone, so captured traffic fails closed:
//! TPROXY finding no listener lets the packet go on, so the rule after it drops it. A marked
//! packet about to leave by another interface than `lo` (the loop's policy rule or route was
//! removed) is dropped too, rather than let around the proxy.
//!
//! The mesh carries IPv4 only: native IPv6 TCP to or from an enrolled pod is refused rather
//! than let around the mesh (a dual-stack socket reaching IPv4 through a v4-mapped address sends
//! IPv4 packets and is captured by the `ip` table).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use weft_core::ports;

use weft_ebpf::PROXY_MARK;

/// The mark the `route` output chain puts on a pod's outbound TCP: the policy rule that loops it
/// back into the pod matches it.
pub(crate) const LOOP_MARK: u32 = 0x400;

/// The routing table (and the policy rule's priority) that makes every address local.
pub(crate) const LOOP_TABLE: u32 = 15001;

/// Why the rules could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NftError {
    #[error(
        "running nsenter, nft and ip in {netns}: {source} (are nftables, iproute2 and util-linux's nsenter installed?)"
    )]
    Spawn {
        netns: String,
        source: std::io::Error,
    },
    #[error("{tool} in {netns} failed: {stderr}")]
    Failed {
        tool: &'static str,
        netns: String,
        stderr: String,
    },
}

fn ruleset(probe_src: Option<Ipv4Addr>) -> String {
    let probe = probe_src.map_or_else(String::new, |ip| format!("ip saddr != {ip} "));
    format!(
        r#"table ip weft
delete table ip weft
table ip weft {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp iifname "lo" meta mark & {loop:#x} == {loop:#x} tproxy to 127.0.0.1:{outbound} accept
    meta l4proto tcp iifname "lo" meta mark & {loop:#x} == {loop:#x} drop
    meta l4proto tcp iifname != "lo" ct direction original {probe}tcp dport != {hbone} tproxy to :{inbound} accept
    meta l4proto tcp iifname != "lo" ct direction original {probe}tcp dport != {hbone} drop
  }}
  chain loop {{
    type route hook output priority mangle; policy accept;
    meta mark & {mark:#x} == {mark:#x} return
    oifname "lo" return
    meta l4proto tcp ct state new ct direction original ct mark set ct mark | {loop:#x}
    ct mark & {loop:#x} == {loop:#x} ct direction original meta mark set meta mark | {loop:#x}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & {mark:#x} == {mark:#x} return
    oifname "lo" return
    meta l4proto udp udp dport 53 redirect to :{dns}
  }}
  chain unlooped {{
    type filter hook postrouting priority filter; policy accept;
    meta mark & {loop:#x} == {loop:#x} oifname != "lo" drop
  }}
}}
table ip6 weft
delete table ip6 weft
table ip6 weft {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "lo" accept
    meta l4proto tcp ct direction original drop
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta mark & {mark:#x} == {mark:#x} accept
    oifname "lo" accept
    meta l4proto tcp ct direction original reject with tcp reset
  }}
}}
"#,
        hbone = ports::HBONE,
        inbound = ports::INBOUND_PLAINTEXT,
        outbound = ports::OUTBOUND,
        dns = ports::DNS,
        mark = PROXY_MARK,
        loop = LOOP_MARK,
    )
}

/// The loop's policy rule, as `ip rule` adds it (after `pref N`) and lists it.
fn loop_rule() -> String {
    format!("fwmark {LOOP_MARK:#x}/{LOOP_MARK:#x} lookup {LOOP_TABLE}")
}

/// Adds the policy rule and route that loop marked packets back into the pod, keeping them if
/// they are there: a reinstall (the proxy restarted) never leaves a moment without them while
/// the rules of the run before still mark packets.
fn route(netns: &Path) -> Result<(), NftError> {
    let pref = LOOP_TABLE.to_string();
    let rules = run(netns, "ip", &["-4", "rule", "show", "pref", &pref], "")?;
    let mut batch = String::new();
    if !rules.contains(&loop_rule()) {
        batch.push_str(&format!("rule add pref {LOOP_TABLE} {}\n", loop_rule()));
    }
    batch.push_str(&format!(
        "route replace local 0.0.0.0/0 dev lo table {LOOP_TABLE}\n"
    ));
    run(netns, "ip", &["-4", "-batch", "-"], &batch).map(drop)
}

/// Installs (or replaces) the capture rules in the namespace at `netns`: the routing that loops
/// marked packets back first, so no packet is marked before it would be looped.
pub(crate) fn install(netns: &Path, probe_src: Option<Ipv4Addr>) -> Result<(), NftError> {
    route(netns)?;
    run(netns, "nft", &["-f", "-"], &ruleset(probe_src)).map(drop)
}

/// Removes the capture rules, then the routing; a namespace without them is fine.
pub(crate) fn remove(netns: &Path) -> Result<(), NftError> {
    run(
        netns,
        "nft",
        &["-f", "-"],
        "table ip weft\ndelete table ip weft\ntable ip6 weft\ndelete table ip6 weft\n",
    )?;
    unroute(netns)
}

/// Removes the loop's policy rule and route, if they are there: only those, matched whole, so
/// a rule or route of the pod's own that shares the priority or the table is left alone
/// (deleting what is absent fails, so each is deleted only when listed).
fn unroute(netns: &Path) -> Result<(), NftError> {
    let pref = LOOP_TABLE.to_string();
    let rules = run(netns, "ip", &["-4", "rule", "show", "pref", &pref], "")?;
    if rules.contains(&loop_rule()) {
        let rule = loop_rule();
        let del: Vec<&str> = ["-4", "rule", "del", "pref", &pref]
            .into_iter()
            .chain(rule.split(' '))
            .collect();
        run(netns, "ip", &del, "")?;
    }
    // `show table N` fails while table N does not exist; `table all` lists it when it does.
    let route = format!("local 0.0.0.0/0 dev lo table {LOOP_TABLE}");
    let listed = format!("local default dev lo table {LOOP_TABLE} ");
    let routes = run(netns, "ip", &["-4", "route", "show", "table", "all"], "")?;
    if routes.lines().any(|l| l.starts_with(&listed)) {
        let del: Vec<&str> = ["-4", "route", "del"]
            .into_iter()
            .chain(route.split(' '))
            .collect();
        run(netns, "ip", &del, "")?;
    }
    Ok(())
}

/// Runs `tool args` inside the namespace with `stdin`; its standard output.
fn run(netns: &Path, tool: &'static str, args: &[&str], stdin: &str) -> Result<String, NftError> {
    let name = netns.display().to_string();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={name}"))
        .arg(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            netns: name.clone(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())
            .map_err(|source| NftError::Spawn {
                netns: name.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        netns: name.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            tool,
            netns: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
