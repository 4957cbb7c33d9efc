//! [`TlsOptions`]: how a client checks the server's certificate, and the TLS connector built from
//! them (rustls with the ring provider, TLS 1.3 and 1.2).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::error::ClientError;

/// TLS settings of a connection.
///
/// By default the server's certificate must chain to one of the public web roots (Mozilla's list)
/// and name the host. A development server's self-signed certificate, or a private CA, is trusted
/// by adding it with [`TlsOptions::with_root_pem`] or [`TlsOptions::with_root_pem_file`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// The name the certificate must carry: a DNS name (`chat.example.com`) or an IP address.
    pub server_name: String,
    /// Extra trusted certificates, PEM (each may hold several).
    pub roots_pem: Vec<Vec<u8>>,
    /// Whether the public web roots are trusted too. Default: yes.
    pub web_roots: bool,
}

impl TlsOptions {
    /// Checks the certificate against `server_name` and the public web roots.
    pub fn new(server_name: impl Into<String>) -> TlsOptions {
        TlsOptions {
            server_name: server_name.into(),
            roots_pem: Vec::new(),
            web_roots: true,
        }
    }

    /// Also trusts the certificates in `pem`.
    pub fn with_root_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsOptions {
        self.roots_pem.push(pem.into());
        self
    }

    /// Also trusts the certificates in the PEM file at `path` (such as a development server's
    /// `<data-dir>/tls/self-signed.pem`).
    pub fn with_root_pem_file(self, path: impl AsRef<Path>) -> Result<TlsOptions, ClientError> {
        let pem = std::fs::read(path)?;
        Ok(self.with_root_pem(pem))
    }

    /// Trusts only the added certificates, not the public web roots.
    pub fn without_web_roots(mut self) -> TlsOptions {
        self.web_roots = false;
        self
    }

    /// The connector and server name these options describe.
    pub(crate) fn connector(
        &self,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), ClientError> {
        let bad = |what: String| {
            ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
        };
        let mut roots = RootCertStore::empty();
        if self.web_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for pem in &self.roots_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| bad(format!("a trusted certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("a trusted certificate: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| bad(format!("server name {:?}: {e}", self.server_name)))?;
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    }
}
