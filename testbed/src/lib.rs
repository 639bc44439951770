//! The network-namespace test bed: "nodes" and "pods" as network namespaces on one Linux
//! machine, wired the way a cluster is. Every node is joined to a fabric (a bridge in a namespace
//! of its own); pods are created by calling the real `bridge` and `host-local` CNI plugins from
//! inside the node's namespace, as a kubelet would. One real `weft-node-proxy` runs per node.
//!
//! Names are unique per test bed, traffic stays inside its namespaces, and everything is torn
//! down when the [`TestBed`] is dropped — also when a test panics.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut bed = weft_testbed::TestBed::new("demo", 2)?;
//! let client = bed.pod("client").namespace("shop").on_node(0).add()?;
//! let server = bed.pod("web").namespace("shop").on_node(1).add()?;
//! bed.start()?;
//! let out = bed.exec(&client, &["curl", "-s", &format!("http://{}:8080/", server.ip)])?;
//! # Ok(()) }
//! ```

mod bed;
mod certs;
pub mod cluster;
mod cni;
pub mod fixtures;
pub mod hostile;
mod kube;
mod kubelet;
mod manifests;
mod metrics;
mod net;
pub mod pcap;
mod pod;
mod pod_runner;
mod pods;
pub mod process;
mod procs;
pub mod rogue;
mod traffic;

pub use bed::{CaptureMode, TestBed, bin_dir};
pub use metrics::{metric_sum, parse_metrics};
pub use net::{CNI_PATH, in_netns};
pub use pod::{Node, Pod};
pub use pods::PodBuilder;
pub use traffic::{LongLived, http_get_in, wait_listening, wait_until};

/// Defines each listed test (a `fn(CaptureMode) -> Result<()>` in the calling module) twice:
/// `ebpf::<name>` and `nftables::<name>`, so every capture suite runs under both mechanisms.
#[macro_export]
macro_rules! in_both_capture_modes {
    ($($name:ident),* $(,)?) => {
        mod ebpf {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::$name($crate::CaptureMode::Ebpf)
                }
            )*
        }
        mod nftables {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::$name($crate::CaptureMode::Nftables)
                }
            )*
        }
    };
}
