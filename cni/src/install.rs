//! Installing the plugin on a node the way operators expect: the binary copied into the host's
//! CNI bin directory, and `weft-cni` chained at the end of the host's network config (the file
//! the runtime reads: the first `.conflist`, `.conf` or `.json` by name). A single-plugin
//! `.conf` becomes a `.conflist` of the same name, as runtimes read both. Uninstalling takes the
//! entry out of every config in the directory; the primary plugin's config is otherwise left as
//! it was. Files are replaced atomically (written beside, then renamed), so a runtime never
//! reads half a config.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The `type` of Weft's entry in a plugin chain.
pub const PLUGIN_TYPE: &str = "weft-cni";

/// Why installing failed.
#[derive(Debug)]
pub enum InstallError {
    /// No network config yet (the primary CNI has not written it).
    NoConfig(PathBuf),
    /// A config that is not JSON, or not a network config.
    BadConfig(PathBuf, String),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoConfig(dir) => write!(
                f,
                "no CNI network config in {} yet (the primary CNI plugin writes it)",
                dir.display()
            ),
            Self::BadConfig(file, why) => write!(f, "{}: {why}", file.display()),
            Self::Io(path, e) => write!(f, "{}: {e}", path.display()),
        }
    }
}

impl std::error::Error for InstallError {}

fn io_at(path: &Path) -> impl Fn(io::Error) -> InstallError + '_ {
    move |e| InstallError::Io(path.to_owned(), e)
}

/// The network config files in `dir`, in the order a runtime reads them.
fn configs(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read_to_string(path).map_err(io_at(path))?;
    serde_json::from_str(&text).map_err(|e| InstallError::BadConfig(path.to_owned(), e.to_string()))
}

/// Writes `value` to `path` through a file beside it (not read as a config) and a rename.
fn write_atomic(path: &Path, value: &Value) -> Result<(), InstallError> {
    let temp = path.with_extension(format!("weft-{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    fs::write(&temp, text + "\n").map_err(io_at(&temp))?;
    fs::rename(&temp, path).map_err(io_at(path))
}

/// Chains `weft-cni` (talking to `socket`) into the config the runtime reads from `conf_dir`.
/// Returns that file and whether it changed (installing twice changes nothing).
pub fn install(conf_dir: &Path, socket: &Path) -> Result<(PathBuf, bool), InstallError> {
    let file = configs(conf_dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.to_owned()))?;
    let mut conf = read_json(&file)?;
    let entry = json!({"type": PLUGIN_TYPE, "socket": socket});
    let object = conf
        .as_object_mut()
        .ok_or_else(|| InstallError::BadConfig(file.clone(), "not a JSON object".into()))?;
    if let Some(plugins) = object.get_mut("plugins") {
        let plugins = plugins.as_array_mut().ok_or_else(|| {
            InstallError::BadConfig(file.clone(), "`plugins` is not a list".into())
        })?;
        let ours = plugins.iter().position(|p| p["type"] == PLUGIN_TYPE);
        match ours {
            Some(i) if plugins[i] == entry && i + 1 == plugins.len() => return Ok((file, false)),
            Some(i) => {
                plugins.remove(i);
            }
            None => {}
        }
        plugins.push(entry);
        write_atomic(&file, &conf)?;
        return Ok((file, true));
    }
    // A single plugin: the same network as a list of one, then Weft.
    if object.get("type").and_then(Value::as_str).is_none() {
        return Err(InstallError::BadConfig(
            file,
            "neither `plugins` nor a plugin `type`".into(),
        ));
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = object.remove(key) {
            list.insert(key.into(), v);
        }
    }
    list.insert(
        "plugins".into(),
        json!([Value::Object(object.clone()), entry]),
    );
    let conflist = file.with_extension("conflist");
    write_atomic(&conflist, &Value::Object(list))?;
    if conflist != file {
        fs::remove_file(&file).map_err(io_at(&file))?;
    }
    Ok((conflist, true))
}

/// Takes `weft-cni` out of every config in `conf_dir`; returns the files changed.
pub fn uninstall(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for file in configs(conf_dir)? {
        let Ok(mut conf) = read_json(&file) else {
            continue; // not ours to judge
        };
        let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| p["type"] != PLUGIN_TYPE);
        if plugins.len() != before {
            write_atomic(&file, &conf)?;
            changed.push(file);
        }
    }
    Ok(changed)
}

/// Copies the plugin binary `from` into `bin_dir` (atomically, so a runtime never runs half a
/// binary).
pub fn copy_binary(from: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let to = bin_dir.join(PLUGIN_TYPE);
    let temp = bin_dir.join(format!(".{PLUGIN_TYPE}.{}.tmp", std::process::id()));
    fs::copy(from, &temp).map_err(io_at(&temp))?;
    fs::rename(&temp, &to).map_err(io_at(&to))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("weft-cni-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    const BRIDGE: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    #[test]
    fn weft_is_chained_last_once_and_taken_out_again() {
        let d = dir("list");
        fs::write(d.join("10-pods.conflist"), BRIDGE).expect("write");
        fs::write(d.join("99-other.conflist"), BRIDGE).expect("write");
        let socket = Path::new("/var/run/weft/cni.sock");
        let (file, changed) = install(&d, socket).expect("install");
        assert_eq!((file.clone(), changed), (d.join("10-pods.conflist"), true));
        assert!(
            !install(&d, socket).expect("again").1,
            "installing twice changes nothing"
        );
        let conf = read_json(&file).expect("json");
        let types: Vec<_> = conf["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "weft-cni"]);
        assert_eq!(
            read_json(&d.join("99-other.conflist")).expect("json"),
            read_json_str(BRIDGE)
        );
        assert_eq!(uninstall(&d).expect("uninstall"), vec![file.clone()]);
        assert_eq!(read_json(&file).expect("json"), read_json_str(BRIDGE));
        assert!(
            fs::read_dir(&d).expect("dir").count() == 2,
            "no temporary file left behind"
        );
        let _ = fs::remove_dir_all(&d);
    }

    fn read_json_str(text: &str) -> Value {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_and_nothing_to_read_is_said_plainly() {
        let d = dir("single");
        assert!(matches!(
            install(&d, Path::new("/s")),
            Err(InstallError::NoConfig(_))
        ));
        fs::write(
            d.join("10-bridge.conf"),
            r#"{"cniVersion": "0.4.0", "name": "pods", "type": "bridge", "bridge": "cni0"}"#,
        )
        .expect("write");
        let (file, _) = install(&d, Path::new("/s")).expect("install");
        assert_eq!(file, d.join("10-bridge.conflist"));
        assert!(!d.join("10-bridge.conf").exists());
        let conf = read_json(&file).expect("json");
        assert_eq!(conf["cniVersion"], "0.4.0");
        assert_eq!(conf["plugins"][0]["type"], "bridge");
        assert_eq!(
            conf["plugins"][1],
            json!({"type": "weft-cni", "socket": "/s"})
        );
        fs::write(d.join("05-broken.conflist"), "{not json").expect("write");
        assert!(matches!(
            install(&d, Path::new("/s")),
            Err(InstallError::BadConfig(..))
        ));
        let _ = fs::remove_dir_all(&d);
    }
}
