//! The protocol between the `weft-cni` plugin and the node proxy: one JSON request and one JSON
//! response per connection on the node proxy's Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod install;

/// Default path of the node proxy's CNI socket.
pub const DEFAULT_SOCKET: &str = "/var/run/weft/cni.sock";

/// A pod as the container runtime created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// The pod's IPv4 address, from the primary plugin's result.
    pub ip: Ipv4Addr,
    /// The gateway the primary plugin configured: the node's address on the pod network, the
    /// source of the kubelet's health probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

/// What the plugin asks of the node proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A pod was created: capture it if it belongs to the mesh, before it starts.
    Add(PodInfo),
    /// A pod is being deleted.
    Del {
        /// Kubernetes namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Container id, to ignore a DEL for an older sandbox of the same pod.
        container_id: String,
    },
    /// Is the pod captured as it should be?
    Check(PodInfo),
}

/// The node proxy's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    /// Done; `captured` says whether the pod's traffic now goes through the mesh.
    Ok {
        /// Whether the pod is captured.
        captured: bool,
        /// Human-readable detail.
        message: String,
    },
    /// Refused, with the reason.
    Error {
        /// Why.
        message: String,
    },
}

/// Sends `request` to the node proxy at `socket` and waits (up to `timeout`) for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

/// Parses `CNI_ARGS` (`K=V;K=V`) into the Kubernetes pod namespace and name.
pub fn pod_from_cni_args(args: &str) -> Option<(String, String)> {
    let mut namespace = None;
    let mut name = None;
    for pair in args.split(';') {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) => namespace = Some(v.to_owned()),
            Some(("K8S_POD_NAME", v)) => name = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((namespace?, name?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_name_the_pod() {
        assert_eq!(
            pod_from_cni_args(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc"
            ),
            Some(("shop".into(), "web-1".into()))
        );
        assert_eq!(pod_from_cni_args("IgnoreUnknown=1"), None);
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Add(PodInfo {
            namespace: "shop".into(),
            name: "web".into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ip: Ipv4Addr::new(10, 10, 1, 2),
            gateway: Some(Ipv4Addr::new(10, 10, 1, 1)),
        });
        let text = serde_json::to_string(&req).expect("serialize");
        assert!(text.contains(r#""op":"add""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), req);
    }

    /// Property: whatever line arrives on the socket, and whatever CNI_ARGS the runtime
    /// passes, parsing answers without panicking; well-formed requests round trip.
    #[test]
    fn any_request_line_and_cni_args_parse_or_are_refused() {
        let mut g = weft_core::testing::Gen::new(17);
        let good = serde_json::to_string(&Request::Check(PodInfo {
            namespace: "shop".into(),
            name: "web".into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ip: Ipv4Addr::new(10, 10, 1, 2),
            gateway: None,
        }))
        .expect("serialize");
        let noise = [
            "\"",
            "{",
            "}",
            ":",
            ",",
            "null",
            "\\u0000",
            "999.1.1.1",
            "\"op\":\"add\"",
        ];
        for _ in 0..3000 {
            let line = g.mutate(&good, &noise);
            if let Ok(request) = serde_json::from_str::<Request>(&line) {
                let again = serde_json::to_string(&request).expect("serialize");
                assert_eq!(
                    serde_json::from_str::<Request>(&again).expect("parse"),
                    request
                );
            }
            let args = g.string(
                &["K8S_POD_NAME=", "K8S_POD_NAMESPACE=", "a", ";", "=", ""],
                8,
            );
            let _ = pod_from_cni_args(&args);
        }
    }
}
