//! Destinations outside the mesh (a ServiceEntry's host, as an egress gateway reaches it):
//! dialed directly from the gateway, at the entry's addresses or the host resolved by DNS,
//! with TLS originated where the host's DestinationRule says (`tls.mode: SIMPLE`). The
//! server's certificate must chain to the configured CAs (a PEM file, a mounted credential's
//! `ca.crt`, else the system's bundle) and name the SNI name or one of `subjectAltNames`. A CA
//! that cannot be read fails the connections, never the config: nothing leaves unverified. The
//! CA file is read again when it changes (a new connection looks at its modification time), so
//! a CA replaced in place, or a mounted Secret updated, takes effect without a config change.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{info, warn};
use weft_core::mesh::{ExternalBackend, TlsOrigination};

/// The CA bundle used when a DestinationRule names none (Debian's `ca-certificates`).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long a connection and its TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A destination outside the mesh and how to speak to it.
pub(crate) struct Outside {
    pub(crate) spec: ExternalBackend,
    tls: Option<Tls>,
}

/// Client configs for HTTP/1.1 and HTTP/2 (their ALPN differs), or why TLS cannot be
/// originated.
type Configs = Result<[Arc<ClientConfig>; 2], String>;

/// The client configs of TLS origination, kept with the CA file they were read from.
struct Tls {
    /// The CA file, or why there is none.
    ca: Result<PathBuf, String>,
    /// The CA file's modification time when read, and what was built from it.
    read: Mutex<(Option<SystemTime>, Configs)>,
}

impl Tls {
    /// The client configs for `origination` (to `host`), read again first if the CA file
    /// changed since.
    fn configs(&self, origination: &TlsOrigination, host: &str) -> Configs {
        let path = self.ca.as_ref().map_err(Clone::clone)?;
        let now = modified(path);
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if read.0 != now {
            read.1 = client_configs(origination, path);
            read.0 = now;
            match &read.1 {
                Ok(_) => {
                    info!(%host, ca = %path.display(), "CA certificates changed: read again")
                }
                Err(e) => {
                    warn!(%host, error = %e, "CA certificates changed and cannot be used: connections fail")
                }
            }
        }
        read.1.clone()
    }
}

impl Outside {
    /// Reads the CAs its TLS needs (credentials under `credential_dir`).
    pub(crate) fn new(spec: ExternalBackend, credential_dir: &Path) -> Self {
        let tls = spec.tls.as_ref().map(|t| {
            let ca = ca_path(t, credential_dir);
            let read = match &ca {
                Ok(path) => (modified(path), client_configs(t, path)),
                Err(e) => (None, Err(e.clone())),
            };
            Tls {
                ca,
                read: Mutex::new(read),
            }
        });
        Self { spec, tls }
    }

    /// A connection to `ip` (unspecified: the host resolved by DNS) on `port`, in TLS when
    /// the destination wants it.
    pub(crate) async fn connect(&self, ip: IpAddr, port: u16, http2: bool) -> Result<Conn, String> {
        let connecting = async {
            let tcp = if ip.is_unspecified() {
                TcpStream::connect((self.spec.host.as_str(), port)).await
            } else {
                TcpStream::connect(SocketAddr::new(ip, port)).await
            }
            .map_err(|e| format!("connecting to {}:{port}: {e}", self.spec.host))?;
            let _ = tcp.set_nodelay(true);
            let (Some(tls), Some(origination)) = (&self.tls, &self.spec.tls) else {
                return Ok(Conn::Plain(tcp));
            };
            let configs = tls.configs(origination, &self.spec.host)?;
            let config = configs[usize::from(http2)].clone();
            let name = ServerName::try_from(origination.sni.clone())
                .map_err(|e| format!("SNI {:?}: {e}", origination.sni))?;
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to {}:{port}: {e}", self.spec.host))?;
            Ok(Conn::Tls(Box::new(stream)))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("connecting to {}:{port}: timed out", self.spec.host))?
    }
}

/// The modification time of `path`, if it can be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Where `tls`'s CAs are: its file, its credential's `ca.crt`, else the system's bundle.
fn ca_path(tls: &TlsOrigination, credential_dir: &Path) -> Result<PathBuf, String> {
    match (&tls.ca_file, &tls.credential) {
        (Some(file), _) => Ok(Path::new(file).to_path_buf()),
        (None, Some(name)) => {
            if !crate::credential::valid_name(name) {
                return Err(format!("credential {name:?} is not a Secret name"));
            }
            Ok(credential_dir.join(name).join("ca.crt"))
        }
        (None, None) => Ok(Path::new(SYSTEM_BUNDLE).to_path_buf()),
    }
}

/// The client configs for `tls` with the CAs in `path` (HTTP/1.1, then `h2` by ALPN).
fn client_configs(tls: &TlsOrigination, path: &Path) -> Configs {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA certificates {}: none", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
    let names = tls
        .subject_alt_names
        .iter()
        .map(|n| ServerName::try_from(n.clone()).map_err(|e| format!("subjectAltName {n:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = Arc::new(Names {
        inner: verifier,
        names,
    });
    let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok([config(b"http/1.1")?, config(b"h2")?])
}

/// The web PKI's verification, for the SNI name or, when given, any of `names` instead.
#[derive(Debug)]
struct Names {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for Names {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(verified) => return Ok(verified),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An upstream connection: an HBONE tunnel to a mesh endpoint, or a connection outside the
/// mesh in plain TCP or TLS.
pub(crate) enum Conn {
    Hbone(weft_core::hbone::H2Stream),
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_flush(cx),
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_that_cannot_be_read_fails_the_connection_not_the_config() {
        let spec = ExternalBackend {
            host: "api.example.test".into(),
            addresses: vec![],
            tls: Some(TlsOrigination {
                sni: "api.example.test".into(),
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..TlsOrigination::default()
            }),
        };
        let origination = spec.tls.clone().expect("tls");
        let outside = Outside::new(spec, Path::new("/nonexistent"));
        let why = outside
            .tls
            .as_ref()
            .expect("tls")
            .configs(&origination, "api.example.test")
            .expect_err("refused");
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
        let bad = TlsOrigination {
            sni: "x".into(),
            credential: Some("../etc".into()),
            ..TlsOrigination::default()
        };
        assert!(ca_path(&bad, Path::new("/tmp")).is_err());
    }

    /// Drives a TLS handshake between `client` and `server` in memory; why it failed.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> Result<(), String> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut client = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut server = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).map_err(|e| e.to_string())?;
            server
                .read_tls(&mut wire.as_slice())
                .map_err(|e| e.to_string())?;
            server.process_new_packets().map_err(|e| e.to_string())?;
            let mut wire = Vec::new();
            server.write_tls(&mut wire).map_err(|e| e.to_string())?;
            client
                .read_tls(&mut wire.as_slice())
                .map_err(|e| e.to_string())?;
            client.process_new_packets().map_err(|e| e.to_string())?;
            if !client.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    /// A CA file replaced in place (an operator's edit, a mounted Secret updated) is used by the
    /// next connection without a config change; a real TLS handshake, in memory, before and
    /// after.
    #[test]
    fn a_ca_file_replaced_in_place_is_used_by_the_next_connection() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("self-signed");
            (cert.pem(), Issuer::new(params, key))
        };
        let (old_ca, _) = ca("old CA");
        let (new_ca, issuer) = ca("new CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["api.example.test".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("signed");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let server = Arc::new(server);

        let dir = std::env::temp_dir().join(format!("weft-outside-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, &old_ca).expect("write");
        let origination = TlsOrigination {
            sni: "api.example.test".into(),
            ca_file: Some(path.display().to_string()),
            ..TlsOrigination::default()
        };
        let spec = ExternalBackend {
            host: "api.example.test".into(),
            addresses: vec![],
            tls: Some(origination.clone()),
        };
        let outside = Outside::new(spec, &dir);
        let connect = |outside: &Outside| {
            let tls = outside.tls.as_ref().expect("tls");
            let configs = tls.configs(&origination, "api.example.test")?;
            handshake(configs[0].clone(), server.clone(), "api.example.test")
        };
        let refused = connect(&outside).expect_err("a server the old CA did not sign");
        assert!(refused.contains("UnknownIssuer"), "{refused}");

        // Replaced in place; its modification time moves on, as an edit's or an update's does.
        std::fs::write(&path, &new_ca).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(1)))
            .expect("mtime");
        connect(&outside).expect("the new CA is used by the next connection");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
