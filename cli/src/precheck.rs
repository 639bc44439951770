//! `weft check --pre`: can Weft be installed here? Kernel features for eBPF capture on this
//! machine (where `weft` runs: run it on a node to judge that node), a CNI configuration for
//! `weft-cni` to chain into, and permission to install.

use std::path::Path;

use crate::cluster::may;
use crate::report::{Outcome, Report};

/// The pre-install checks.
pub(crate) async fn run(client: &kube::Client, cni_conf_dir: &Path, report: &mut Report) {
    kernel(report);
    cni(cni_conf_dir, report);
    permissions(client, report).await;
}

fn kernel(report: &mut Report) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release
        .split(['.', '-'])
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 10) {
        report.ok("kernel", format!("Linux {release}"));
    } else {
        report.push(
            "kernel",
            Outcome::Warn,
            format!("Linux {release}: eBPF capture needs 5.10 or later"),
            "node proxies fall back to nftables capture (works, costs more CPU)",
            "pre-kernel",
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fs: &str, at: &str| {
        mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(at) && l.split_whitespace().nth(2) == Some(fs)
        })
    };
    if mounted("bpf", "/sys/fs/bpf") {
        report.ok("bpffs", "mounted at /sys/fs/bpf".into());
    } else {
        report.push(
            "bpffs",
            Outcome::Warn,
            "no bpf filesystem at /sys/fs/bpf".into(),
            "mount -t bpf bpf /sys/fs/bpf (the node proxy pins its programs there to keep capture across restarts)",
            "pre-bpffs",
        );
    }
    // The unified hierarchy wherever it is mounted (`/sys/fs/cgroup`, or
    // `/sys/fs/cgroup/unified` on a hybrid host): eBPF capture attaches to its root.
    let cgroup2 = mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace().skip(1);
        let (at, fs) = (fields.next()?, fields.next()?);
        (fs == "cgroup2").then(|| at.to_owned())
    });
    match cgroup2 {
        Some(at) => report.ok("cgroup v2", format!("mounted at {at}")),
        None => report.push(
            "cgroup v2",
            Outcome::Warn,
            "no cgroup2 filesystem is mounted".into(),
            "eBPF capture attaches to the cgroup v2 root; without it node proxies use nftables",
            "pre-cgroup",
        ),
    }
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        report.ok("kernel BTF", "/sys/kernel/btf/vmlinux present".into());
    } else {
        report.push(
            "kernel BTF",
            Outcome::Warn,
            "no /sys/kernel/btf/vmlinux".into(),
            "a kernel built with CONFIG_DEBUG_INFO_BTF; without it node proxies use nftables",
            "pre-btf",
        );
    }
}

fn cni(dir: &Path, report: &mut Report) {
    let configs: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf"))
                .collect()
        })
        .unwrap_or_default();
    if configs.is_empty() {
        report.push(
            "CNI configuration",
            Outcome::Fail,
            format!("no *.conflist or *.conf in {}", dir.display()),
            "install the cluster's network plugin first: weft-cni chains into its config (or pass --cni-conf-dir)",
            "pre-cni",
        );
    } else {
        report.ok(
            "CNI configuration",
            format!("{} in {}", configs.join(", "), dir.display()),
        );
    }
}

async fn permissions(client: &kube::Client, report: &mut Report) {
    let needed = [
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("create", "", "namespaces"),
        ("create", "apps", "daemonsets"),
        ("create", "apps", "deployments"),
    ];
    let mut denied = Vec::new();
    for (verb, group, resource) in needed {
        match may(client, verb, group, resource).await {
            Ok(true) => {}
            Ok(false) => denied.push(format!("{verb} {resource}")),
            Err(e) => {
                report.push(
                    "permission to install",
                    Outcome::Fail,
                    format!("could not ask the API server: {e}"),
                    "SelfSubjectAccessReview must be allowed",
                    "pre-permissions",
                );
                return;
            }
        }
    }
    if denied.is_empty() {
        report.ok(
            "permission to install",
            "may create CRDs, cluster roles, namespaces, DaemonSets and Deployments".into(),
        );
    } else {
        report.push(
            "permission to install",
            Outcome::Fail,
            format!("this user may not: {}", denied.join(", ")),
            "install as a cluster administrator",
            "pre-permissions",
        );
    }
}
