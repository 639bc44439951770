//! TLS for the load client: an `https://` URL is reached over TLS 1.2/1.3, the server's
//! certificate checked against the CA file given, for the name given (SNI).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connector and the name it asks for.
pub(crate) struct Tls {
    connector: TlsConnector,
    server: ServerName<'static>,
    pub(crate) name: String,
}

impl Tls {
    pub(crate) async fn connect(&self, stream: TcpStream) -> Result<TlsStream<TcpStream>> {
        Ok(self.connector.connect(self.server.clone(), stream).await?)
    }
}

/// TLS for `url` when it is `https://`: `cacert` and `sni` are then needed.
pub(crate) fn for_load(url: &str, cacert: Option<&Path>, sni: Option<&str>) -> Result<Option<Tls>> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    let (Some(cacert), Some(name)) = (cacert, sni) else {
        bail!("an https:// URL needs --cacert and --sni");
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cacert).context("--cacert")? {
        roots.add(cert.context("--cacert")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        server: ServerName::try_from(name.to_owned()).context("--sni")?,
        name: name.to_owned(),
    }))
}
