//! `weft-cni`: a chained CNI plugin. Placed after the primary plugin (bridge, calico, ...), it
//! hands each new pod (network namespace, IP, name) to the node proxy over its Unix socket and
//! waits for the answer: the ADD fails if the node proxy cannot take the pod, so no pod of the
//! mesh starts with its traffic uncaptured. DEL always succeeds. The primary plugin's result is
//! passed through unchanged.
//!
//! Network config fields of its own (all optional): `socket` (the node proxy's CNI socket),
//! `excludeNamespaces` (never sent to the node proxy; default `["kube-system"]`),
//! `timeoutSeconds` (default 10).
//!
//! Run with arguments it installs itself instead (the node proxy's init container does):
//! `weft-cni install --conf-dir DIR --bin-dir DIR [--socket PATH] [--wait-secs N]` copies the
//! binary into the bin directory and chains it into the config the runtime reads (waiting up to
//! N seconds for the primary plugin to write one); `weft-cni uninstall --conf-dir DIR` takes it
//! out again.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use weft_cni::{DEFAULT_SOCKET, PodInfo, Request, Response, call, install, pod_from_cni_args};

const SUPPORTED: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.1.1"];

/// CNI error codes (spec section "Error").
const INVALID_ENV: u32 = 4;
const INVALID_CONFIG: u32 = 7;
const TRY_AGAIN_LATER: u32 = 11;
const REFUSED: u32 = 100;

struct Failure {
    code: u32,
    msg: String,
    details: String,
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// `install` / `uninstall`, run by hand or by the init container.
fn installer(args: &[String]) -> ExitCode {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let Some(conf_dir) = flag("--conf-dir") else {
        eprintln!("weft-cni {}: --conf-dir is required", args[0]);
        return ExitCode::from(2);
    };
    if args[0] == "uninstall" {
        return match install::uninstall(&conf_dir) {
            Ok(changed) => {
                eprintln!("weft-cni: taken out of {changed:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft-cni uninstall: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let socket = flag("--socket").unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let wait = flag("--wait-secs")
        .and_then(|s| s.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0u64);
    if let Some(bin_dir) = flag("--bin-dir") {
        let copied = std::env::current_exe()
            .map_err(|e| e.to_string())
            .and_then(|me| install::copy_binary(&me, &bin_dir).map_err(|e| e.to_string()));
        match copied {
            Ok(to) => eprintln!("weft-cni: binary at {}", to.display()),
            Err(e) => {
                eprintln!("weft-cni install: copying the binary: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        match install::install(&conf_dir, &socket) {
            Ok((file, changed)) => {
                let what = if changed {
                    "chained into"
                } else {
                    "already in"
                };
                eprintln!("weft-cni: {what} {}", file.display());
                return ExitCode::SUCCESS;
            }
            Err(install::InstallError::NoConfig(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                eprintln!("weft-cni install: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("install" | "uninstall")
    ) {
        return installer(&args);
    }
    if args.first().map(String::as_str) == Some("--version") {
        println!("weft-cni {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let conf: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    let version = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_owned();
    let outcome = match command.as_str() {
        "VERSION" => Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED,
        }))),
        "ADD" => add(&conf, &version),
        "DEL" => {
            del(&conf);
            Ok(None)
        }
        "CHECK" => check(&conf),
        "GC" | "STATUS" => Ok(None),
        other => Err(fail(
            INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK or VERSION",
        )),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(f) => {
            println!(
                "{}",
                json!({"cniVersion": version, "code": f.code, "msg": f.msg, "details": f.details})
            );
            ExitCode::FAILURE
        }
    }
}

fn socket(conf: &Value) -> PathBuf {
    conf.get("socket")
        .and_then(Value::as_str)
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

fn timeout(conf: &Value) -> Duration {
    Duration::from_secs(
        conf.get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(10),
    )
}

fn excluded(conf: &Value, namespace: &str) -> bool {
    match conf.get("excludeNamespaces").and_then(Value::as_array) {
        Some(list) => list.iter().any(|v| v.as_str() == Some(namespace)),
        None => namespace == "kube-system",
    }
}

/// The pod this invocation is about, or `None` when the runtime did not name a Kubernetes pod
/// (then the plugin has nothing to do).
fn pod(conf: &Value) -> Result<Option<PodInfo>, Failure> {
    let Some((namespace, name)) = pod_from_cni_args(&std::env::var("CNI_ARGS").unwrap_or_default())
    else {
        return Ok(None);
    };
    let env = |key: &str| {
        std::env::var(key).map_err(|_| fail(INVALID_ENV, format!("{key} is not set"), ""))
    };
    let prev = conf.get("prevResult").ok_or_else(|| {
        fail(
            INVALID_CONFIG,
            "no prevResult: weft-cni must be chained after the primary plugin",
            "list it after the primary plugin in the .conflist",
        )
    })?;
    let (ip, gateway) = first_ipv4(prev).ok_or_else(|| {
        fail(
            INVALID_CONFIG,
            "the primary plugin's result has no IPv4 address",
            prev.to_string(),
        )
    })?;
    Ok(Some(PodInfo {
        namespace,
        name,
        container_id: env("CNI_CONTAINERID")?,
        netns: PathBuf::from(env("CNI_NETNS")?),
        ip,
        gateway,
    }))
}

/// The first IPv4 address of a CNI result (0.3.x to 1.x shapes) and its gateway.
fn first_ipv4(result: &Value) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    result.get("ips")?.as_array()?.iter().find_map(|entry| {
        let address = entry.get("address")?.as_str()?;
        let ip: Ipv4Addr = address.split('/').next()?.parse().ok()?;
        let gateway = entry
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        Some((ip, gateway))
    })
}

fn add(conf: &Value, version: &str) -> Result<Option<Value>, Failure> {
    let mut result = conf.get("prevResult").cloned().unwrap_or_else(|| json!({}));
    if let Value::Object(map) = &mut result {
        map.insert("cniVersion".into(), Value::String(version.to_owned()));
    }
    let Some(pod) = pod(conf)? else {
        return Ok(Some(result));
    };
    if excluded(conf, &pod.namespace) {
        return Ok(Some(result));
    }
    let socket = socket(conf);
    let label = format!("{}/{}", pod.namespace, pod.name);
    match call(&socket, &Request::Add(pod), timeout(conf)) {
        Ok(Response::Ok { .. }) => Ok(Some(result)),
        Ok(Response::Error { message }) => Err(fail(
            REFUSED,
            format!("the Weft node proxy refused pod {label}: {message}"),
            "",
        )),
        Err(e) => Err(fail(
            TRY_AGAIN_LATER,
            format!(
                "the Weft node proxy is not reachable at {}: {e}; pod {label} cannot start \
                 uncaptured (is the weft-node-proxy DaemonSet running on this node?)",
                socket.display()
            ),
            "",
        )),
    }
}

fn del(conf: &Value) {
    let Some((namespace, name)) = pod_from_cni_args(&std::env::var("CNI_ARGS").unwrap_or_default())
    else {
        return;
    };
    if excluded(conf, &namespace) {
        return;
    }
    let request = Request::Del {
        namespace,
        name,
        container_id: std::env::var("CNI_CONTAINERID").unwrap_or_default(),
    };
    // DEL must succeed whatever happens: a node proxy that is down forgets nothing it needs
    // (the pod's namespace is gone with the pod).
    if let Err(e) = call(&socket(conf), &request, timeout(conf)) {
        eprintln!("weft-cni: DEL not delivered to the node proxy: {e}");
    }
}

fn check(conf: &Value) -> Result<Option<Value>, Failure> {
    let Some(pod) = pod(conf)? else {
        return Ok(None);
    };
    if excluded(conf, &pod.namespace) {
        return Ok(None);
    }
    let socket = socket(conf);
    match call(&socket, &Request::Check(pod), timeout(conf)) {
        Ok(Response::Ok { .. }) => Ok(None),
        Ok(Response::Error { message }) => Err(fail(REFUSED, message, "")),
        Err(e) => Err(fail(
            TRY_AGAIN_LATER,
            format!(
                "the Weft node proxy is not reachable at {}: {e}",
                socket.display()
            ),
            "",
        )),
    }
}
