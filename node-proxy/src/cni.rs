//! The node proxy's side of `weft-cni`: a Unix socket on which the plugin reports new and
//! deleted pods, and the registry of those pods (network namespace, IP, probe source), kept in
//! the state directory so that a restarted proxy finds its pods again without touching them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use weft_cni::{PodInfo, Request, Response};
use weft_core::drain;

/// A request from the plugin, with the channel its answer goes back on.
pub(crate) type Call = (Request, oneshot::Sender<Response>);

/// Listens on `path`, handing each request to the proxy's main loop through `calls`.
/// How long a CNI client may take to send its request.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn serve(path: &Path, calls: mpsc::Sender<Call>, drain: drain::Watch) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        let mut backoff = weft_core::accept::Backoff::default();
        loop {
            let stream = tokio::select! {
                _ = drain.signaled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        stream
                    }
                    Err(e) => {
                        backoff.failed("CNI socket", &e).await;
                        continue;
                    }
                },
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 * 1024));
                // A client that connects and says nothing holds a task and a descriptor: it
                // gets a few seconds (weft-cni writes its one line at once).
                let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
                let read = read.unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no request within {READ_TIMEOUT:?}"),
                    ))
                });
                let response = match read {
                    Ok(_) => match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            let (tx, rx) = oneshot::channel();
                            if calls.send((request, tx)).await.is_err() {
                                Response::Error {
                                    message: "node proxy is shutting down".into(),
                                }
                            } else {
                                rx.await.unwrap_or(Response::Error {
                                    message: "node proxy dropped the request".into(),
                                })
                            }
                        }
                        Err(e) => Response::Error {
                            message: format!("malformed request: {e}"),
                        },
                    },
                    Err(e) => Response::Error {
                        message: format!("reading the request: {e}"),
                    },
                };
                let mut reply = serde_json::to_vec(&response).unwrap_or_default();
                reply.push(b'\n');
                let _ = write.write_all(&reply).await;
            });
        }
    });
    Ok(())
}

/// Pods the plugin reported on this node, by (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    file: Option<PathBuf>,
    pods: BTreeMap<(String, String), PodInfo>,
}

impl Registry {
    /// Loads `<state_dir>/pods.json`, forgetting pods whose network namespace is gone.
    pub(crate) fn load(state_dir: &Path) -> Self {
        let file = state_dir.join("pods.json");
        let pods: Vec<PodInfo> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %file.display(), error = %e, "unreadable pod registry; starting empty");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let mut registry = Self {
            file: Some(file),
            pods: BTreeMap::new(),
        };
        for pod in pods {
            if pod.netns.exists() {
                registry
                    .pods
                    .insert((pod.namespace.clone(), pod.name.clone()), pod);
            } else {
                info!(pod = %pod.name, namespace = %pod.namespace, "pod gone while the proxy was down");
            }
        }
        registry.save();
        registry
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub(crate) fn add(&mut self, pod: PodInfo) {
        self.pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
        self.save();
    }

    /// Forgets a pod, unless a newer sandbox (another container id) replaced it.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str, container_id: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if self
            .pods
            .get(&key)
            .is_some_and(|p| container_id.is_empty() || p.container_id == container_id)
        {
            self.pods.remove(&key);
            self.save();
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let pods: Vec<&PodInfo> = self.pods.values().collect();
        let write = || -> io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&pods)?)?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            warn!(file = %file.display(), error = %e, "saving the pod registry");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn a_client_that_says_nothing_is_answered_and_let_go() {
        let dir = std::env::temp_dir().join(format!("weft-cni-silent-{}", std::process::id()));
        let path = dir.join("cni.sock");
        let (calls, _rx) = mpsc::channel(1);
        let (_stop, drain) = drain::channel();
        serve(&path, calls, drain).expect("listening");
        let mut silent = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let started = std::time::Instant::now();
        let mut reply = String::new();
        tokio::time::timeout(
            READ_TIMEOUT + std::time::Duration::from_secs(5),
            silent.read_to_string(&mut reply),
        )
        .await
        .expect("the server let go of a silent client")
        .expect("read");
        assert!(started.elapsed() >= READ_TIMEOUT);
        assert!(reply.contains("no request within"), "{reply}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
