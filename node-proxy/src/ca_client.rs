//! The CA client: certificates for the identities of enrolled workloads on this node, from the
//! controller's certificate service, renewed at half-life. The key is generated here and never
//! leaves the node. Certificates are written where the proxy loads them from
//! (`<cert-dir>/<namespace>/<serviceaccount>/{cert,key}.pem`, `root-cert.pem`), so the same
//! reload path serves both; established connections keep their session across a renewal.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use weft_core::api::{self, v1};
use weft_core::config::Protocol;
use weft_core::identity::{SpiffeId, TrustBundle, WorkloadCert, WorkloadCsr};

use crate::identity::cert_dir;
use crate::inputs::Inputs;
use crate::xds::ControllerSettings;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    #[error("reading the node credential: {0}")]
    Credential(std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the controller refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Runs until the process ends: every second, and whenever `changed` fires, makes sure each
/// wanted identity has a certificate that is not past half-life.
pub(crate) async fn run(
    inputs: Arc<Inputs>,
    settings: ControllerSettings,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut last_error: Option<String> = None;
    // When each certificate we obtained is due: half-way from its issue to its expiry (the
    // CA backdates not-before, so the certificate's own validity would make it due too early).
    let mut renew_at: std::collections::HashMap<SpiffeId, SystemTime> = Default::default();
    loop {
        let wanted: BTreeSet<SpiffeId> = {
            let state = inputs.state.load();
            state
                .workloads_on(&inputs.config.node)
                .filter(|w| w.protocol == Protocol::Hbone)
                .map(|w| state.identity(w))
                .collect()
        };
        for id in wanted {
            let due = match renew_at.get(&id) {
                Some(at) => SystemTime::now() >= *at,
                // Found on disk from an earlier run: its validity is all we know.
                None => on_disk(&inputs.config.cert_dir, &id)
                    .is_none_or(|cert| SystemTime::now() >= cert.renew_at()),
            };
            if !due {
                continue;
            }
            match renew(&inputs, &settings, &id).await {
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

fn on_disk(dir: &Path, id: &SpiffeId) -> Option<WorkloadCert> {
    WorkloadCert::load(id, &cert_dir(dir, id)).ok()
}

async fn renew(
    inputs: &Inputs,
    settings: &ControllerSettings,
    id: &SpiffeId,
) -> Result<WorkloadCert, CaError> {
    let token = std::fs::read_to_string(&settings.credential_file).map_err(CaError::Credential)?;
    let bundle = TrustBundle::load(&inputs.config.trust_bundle)
        .map_err(|e| CaError::Setup(e.to_string()))?;
    let channel = weft_core::control::channel(settings.addr, settings.identity.clone(), &bundle)
        .map_err(|e| CaError::Setup(e.to_string()))?;
    let csr = WorkloadCsr::generate(id).map_err(|e| CaError::Setup(e.to_string()))?;
    let mut request = tonic::Request::new(v1::SignRequest {
        csr_pem: csr.csr_pem.clone(),
        identity: id.to_string(),
    });
    request.metadata_mut().insert(
        api::AUTHORIZATION,
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| CaError::Setup("the node credential is not valid header text".into()))?,
    );
    let response = v1::certificates_client::CertificatesClient::new(channel)
        .sign(request)
        .await?
        .into_inner();
    let cert = WorkloadCert::from_pem(id, &response.chain_pem, &csr.key_pem)
        .map_err(|e| CaError::Setup(format!("the issued certificate: {e}")))?;

    let dir = cert_dir(&inputs.config.cert_dir, id);
    write(&dir.join("key.pem"), &csr.key_pem, 0o600)?;
    write(&dir.join("cert.pem"), &response.chain_pem, 0o644)?;
    if !response.trust_bundle_pem.is_empty()
        && std::fs::read_to_string(&inputs.config.trust_bundle)
            .ok()
            .as_deref()
            != Some(response.trust_bundle_pem.as_str())
    {
        write(
            &inputs.config.trust_bundle,
            &response.trust_bundle_pem,
            0o644,
        )?;
    }
    Ok(cert)
}

/// Writes `path` atomically (a temporary file renamed over it) with `mode`.
pub(crate) fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| CaError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Unique per process: proxies that share a directory (the test bed, the lab) never rename
    // each other's half-written file.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
