//! Certificates: the test bed's CA, certificates issued to nodes' directories, and node
//! credentials for the controller.

use std::path::PathBuf;

use anyhow::Result;
use weft_controller::ca::{Ca, DEFAULT_WORKLOAD_TTL};
use weft_core::identity::{SpiffeId, WorkloadCsr};

use crate::bed::TestBed;
use crate::net::in_netns;
use crate::pod::Pod;

impl TestBed {
    /// The mesh CA of this bed.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Issues a certificate for `identity` (a CSR signed by the bed's CA, as the node proxy's CA
    /// client will do) into every node's certificate directory.
    pub fn issue_cert(&self, identity: &SpiffeId) -> Result<()> {
        let csr = WorkloadCsr::generate(identity)?;
        let issued = self
            .ca
            .sign_csr(&csr.csr_pem, identity, DEFAULT_WORKLOAD_TTL)?;
        for i in 0..self.nodes.len() {
            let dir = self
                .node_cert_dir(i)
                .join(identity.namespace())
                .join(identity.service_account());
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("key.pem"), &csr.key_pem)?;
            std::fs::write(dir.join("cert.pem"), &issued.chain_pem)?;
        }
        Ok(())
    }

    /// Node `i`'s certificate directory (each node proxy has its own, as on real nodes).
    pub fn node_cert_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("certs-{}", self.nodes[i].name))
    }

    pub(crate) fn waypoint_cert_dir(&self, w: &Pod) -> PathBuf {
        self.dir.join(format!("certs-waypoint-{}", w.name))
    }

    /// Asks the controller's certificate service for `identity` with `credential`, from node
    /// 1's namespace: the chain (PEM), or the refusal's code and message.
    pub fn ask_for_cert(
        &self,
        credential: &str,
        identity: &weft_core::identity::SpiffeId,
    ) -> Result<Result<String, (tonic::Code, String)>> {
        use weft_core::api::v1;
        let bundle =
            weft_core::identity::TrustBundle::load(&self.dir().join("certs/root-cert.pem"))?;
        let addr = self.controller_address();
        let identity = identity.clone();
        let credential = credential.to_owned();
        let netns = std::path::Path::new("/run/netns").join(&self.nodes()[0].netns);
        in_netns(
            &netns,
            move || -> Result<Result<String, (tonic::Code, String)>> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let channel = weft_core::control::channel(
                        addr,
                        weft_core::control::controller_identity("cluster.local"),
                        &bundle,
                    )?;
                    let csr = weft_core::identity::WorkloadCsr::generate(&identity)?;
                    let mut request = tonic::Request::new(v1::SignRequest {
                        csr_pem: csr.csr_pem,
                        identity: identity.to_string(),
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {credential}").parse()?);
                    let answer = v1::certificates_client::CertificatesClient::new(channel)
                        .sign(request)
                        .await;
                    Ok(answer
                        .map(|r| r.into_inner().chain_pem)
                        .map_err(|s| (s.code(), s.message().to_owned())))
                })
            },
        )?
    }

    /// Node `i`'s credential for the controller.
    pub fn node_credential(&self, i: usize) -> Result<String> {
        Ok(std::fs::read_to_string(
            self.dir.join(format!("{}.credential", self.nodes[i].name)),
        )?)
    }
}
