//! The CA client, shared by the node proxy and the waypoint: certificates for the identities
//! the caller wants, from the controller's certificate service, renewed at half-life. Keys are
//! generated here and never leave the machine. Certificates are written where the proxy loads
//! them from (`<cert-dir>/<namespace>/<serviceaccount>/{cert,key}.pem`, the trust bundle file),
//! so the same reload path serves both; established connections keep their session across a
//! renewal.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::api::{self, v1};
use crate::control::ControllerEndpoint;
use crate::identity::{SpiffeId, TrustBundle, WorkloadCert, WorkloadCsr};

/// Where the certificate service is and where certificates go.
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// The controller.
    pub controller: ControllerEndpoint,
    /// Certificates directory.
    pub cert_dir: PathBuf,
    /// Trust bundle file.
    pub trust_bundle: PathBuf,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The credential file could not be read.
    #[error("reading the credential: {0}")]
    Credential(std::io::Error),
    /// Something local went wrong (bundle, key generation, a bad answer).
    #[error("{0}")]
    Setup(String),
    /// The controller said no.
    #[error("the controller refused: {0}")]
    Refused(#[from] tonic::Status),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `<dir>/<namespace>/<serviceaccount>`.
pub fn cert_dir(dir: &Path, id: &SpiffeId) -> PathBuf {
    dir.join(id.namespace()).join(id.service_account())
}

/// Runs until the process ends: every second, and whenever `changed` fires, makes sure each
/// identity `wanted` returns has a certificate that is not past half-life.
pub async fn run<W>(settings: CaSettings, wanted: W, changed: Arc<Notify>)
where
    W: Fn() -> BTreeSet<SpiffeId>,
{
    let mut last_error: Option<String> = None;
    // When each certificate we obtained is due: half-way from its issue to its expiry (the
    // CA backdates not-before, so the certificate's own validity would make it due too early).
    let mut renew_at: HashMap<SpiffeId, SystemTime> = HashMap::new();
    loop {
        for id in wanted() {
            // What is on disk is what the proxy serves with: a pair that does not load (gone,
            // or overwritten by someone else) is replaced now, whatever the schedule says.
            let on_disk = WorkloadCert::load(&id, &cert_dir(&settings.cert_dir, &id)).ok();
            let due = match (renew_at.get(&id), on_disk) {
                (_, None) => true,
                (Some(at), Some(_)) => SystemTime::now() >= *at,
                // Found on disk from an earlier run: its validity is all we know.
                (None, Some(cert)) => SystemTime::now() >= cert.renew_at(),
            };
            if !due {
                continue;
            }
            match renew(&settings, &id).await {
                Ok(cert) => {
                    last_error = None;
                    let valid = cert
                        .not_after()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    renew_at.insert(id.clone(), SystemTime::now() + valid / 2);
                    info!(identity = %id, valid_for = ?valid, "certificate issued by the controller");
                }
                Err(e) => {
                    let message = format!("{id}: {e}");
                    if last_error.as_deref() != Some(&message) {
                        warn!(identity = %id, error = %e, "certificate request failed; will retry");
                        last_error = Some(message);
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = changed.notified() => {}
        }
    }
}

async fn renew(settings: &CaSettings, id: &SpiffeId) -> Result<WorkloadCert, CaClientError> {
    let token = std::fs::read_to_string(&settings.controller.credential_file)
        .map_err(CaClientError::Credential)?;
    let bundle = TrustBundle::load(&settings.trust_bundle)
        .map_err(|e| CaClientError::Setup(e.to_string()))?;
    let channel = crate::control::channel(
        settings.controller.addr,
        settings.controller.identity.clone(),
        &bundle,
    )
    .map_err(|e| CaClientError::Setup(e.to_string()))?;
    let csr = WorkloadCsr::generate(id).map_err(|e| CaClientError::Setup(e.to_string()))?;
    let mut request = tonic::Request::new(v1::SignRequest {
        csr_pem: csr.csr_pem.clone(),
        identity: id.to_string(),
    });
    request.metadata_mut().insert(
        api::AUTHORIZATION,
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| CaClientError::Setup("the credential is not valid header text".into()))?,
    );
    let response = v1::certificates_client::CertificatesClient::new(channel)
        .sign(request)
        .await?
        .into_inner();
    let cert = WorkloadCert::from_pem(id, &response.chain_pem, &csr.key_pem)
        .map_err(|e| CaClientError::Setup(format!("the issued certificate: {e}")))?;

    let dir = cert_dir(&settings.cert_dir, id);
    let written = |path: &Path, contents: &str, mode| {
        write_atomic(path, contents, mode).map_err(|source| CaClientError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    written(&dir.join("key.pem"), &csr.key_pem, 0o600)?;
    written(&dir.join("cert.pem"), &response.chain_pem, 0o644)?;
    if !response.trust_bundle_pem.is_empty()
        && std::fs::read_to_string(&settings.trust_bundle)
            .ok()
            .as_deref()
            != Some(response.trust_bundle_pem.as_str())
    {
        written(&settings.trust_bundle, &response.trust_bundle_pem, 0o644)?;
    }
    Ok(cert)
}

/// Writes `path` atomically (a temporary file renamed over it) with `mode`.
pub fn write_atomic(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Unique per process: proxies that share a directory (the test bed, the lab) never rename
    // each other's half-written file.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // `mode` applies only when the file is created: a temporary file left by a crash keeps
    // whatever mode it had unless it is set here.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_written_file_has_the_mode_even_over_a_stale_temporary_file() {
        let dir = std::env::temp_dir().join(format!("weft-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key.pem");
        let stale = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&stale, "old").expect("stale");
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        write_atomic(&path, "secret", 0o600).expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
