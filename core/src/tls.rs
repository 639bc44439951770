//! rustls configurations for mesh mTLS: TLS 1.3 only, ALPN `h2`, no SNI, and each side checks the
//! other's SPIFFE identity, not only that it chains to the mesh root.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::identity::{SpiffeId, TrustBundle, WorkloadCert, peer_identity};

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration for {identity}: {source}")]
    Config {
        /// The local identity.
        identity: String,
        /// What rustls said.
        source: Box<rustls::Error>,
    },
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every mesh connection uses: ring, restricted to AES-GCM suites as Istio's
/// HBONE requires.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| {
        matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        )
    });
    Arc::new(provider)
}

/// Client config presenting `local`'s certificate and accepting only a server that proves
/// `expected_server`.
pub fn client_config(
    local: &WorkloadCert,
    expected_server: SpiffeId,
    bundle: &TrustBundle,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        expected: expected_server,
        roots: bundle.roots(),
        algs: provider.signature_verification_algorithms,
    });
    let wrap = |source| TlsError::Config {
        identity: local.identity().to_string(),
        source: Box::new(source),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(wrap)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(local.chain().to_vec(), local.key())
        .map_err(wrap)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Client config for the control plane: no client certificate (a node authenticates to the
/// controller with its credential, before it has any certificate), and the server must prove
/// `expected_server`.
pub fn control_client_config(
    expected_server: SpiffeId,
    bundle: &TrustBundle,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let wrap = |source| TlsError::Config {
        identity: "(control-plane client)".into(),
        source: Box::new(source),
    };
    let verifier = Arc::new(SpiffeServerVerifier {
        expected: expected_server,
        roots: bundle.roots(),
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(wrap)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Server config for the control plane: presents `local`'s certificate and asks for no client
/// certificate (callers authenticate with a credential in the request).
pub fn control_server_config(local: &WorkloadCert) -> Result<ServerConfig, TlsError> {
    let wrap = |source| TlsError::Config {
        identity: local.identity().to_string(),
        source: Box::new(source),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(wrap)?
        .with_no_client_auth()
        .with_single_cert(local.chain().to_vec(), local.key())
        .map_err(wrap)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Server config presenting `local`'s certificate and requiring a client certificate that
/// chains to the mesh root. The caller reads the client's identity after the handshake with
/// [`peer_identity`] and authorizes it.
pub fn server_config(local: &WorkloadCert, bundle: &TrustBundle) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(bundle.roots(), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let wrap = |source| TlsError::Config {
        identity: local.identity().to_string(),
        source: Box::new(source),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(wrap)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(local.chain().to_vec(), local.key())
        .map_err(wrap)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The identity proven by the peer of an established TLS session.
pub fn session_peer_identity(
    certs: Option<&[CertificateDer<'static>]>,
) -> Result<SpiffeId, crate::identity::CertError> {
    match certs.and_then(|c| c.first()) {
        Some(leaf) => peer_identity(leaf),
        None => Err(crate::identity::CertError::SpiffeSan(0)),
    }
}

/// Verifies a server's chain against the mesh roots and its SPIFFE ID against the one the
/// config says the destination must have. The TLS server name is ignored: HBONE sends no SNI.
#[derive(Debug)]
struct SpiffeServerVerifier {
    expected: SpiffeId,
    roots: Arc<rustls::RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
        let anchors: Vec<TrustAnchor<'_>> = self.roots.roots.to_vec();
        cert.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
        let found = peer_identity(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if found != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    crate::identity::CertError::WrongIdentity {
                        expected: Box::new(self.expected.clone()),
                        found: Box::new(found),
                    },
                ))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn pki_error(e: webpki::Error) -> rustls::CertificateError {
    use rustls::CertificateError as C;
    match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    }
}

/// Describes a TLS handshake failure for an operator, naming identities rather than dumping
/// rustls internals.
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    use rustls::CertificateError as C;
    match inner {
        rustls::Error::InvalidCertificate(C::Other(other)) => {
            format!("peer certificate rejected: {}", other.0)
        }
        rustls::Error::InvalidCertificate(e @ (C::UnknownIssuer | C::BadSignature)) => {
            format!("peer certificate rejected: not issued by this mesh's CA ({e:?})")
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "peer certificate rejected: expired (is its node proxy rotating certificates?)".into()
        }
        rustls::Error::InvalidMessage(_) => {
            format!("{inner} (the peer did not speak TLS: plaintext sent to the HBONE port?)")
        }
        rustls::Error::NoCertificatesPresented => "the peer presented no client certificate".into(),
        rustls::Error::AlertReceived(alert) => format!(
            "the peer refused our certificate ({alert:?}): is our identity trusted by its mesh CA?"
        ),
        other => other.to_string(),
    }
}
