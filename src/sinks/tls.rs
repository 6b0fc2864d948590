//! TLS settings shared by every sink that connects out (ClickHouse, HTTP collectors, syslog over TLS):
//! rustls, the public web PKI roots by default, an internal CA, a client certificate for mutual TLS.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[sinks.<name>.tls]`: TLS for a sink's `https://` (or syslog TLS) connections.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) to trust instead of the public web PKI (an internal CA).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl TlsOptions {
    pub fn is_default(&self) -> bool {
        self == &TlsOptions::default()
    }

    /// The rustls client configuration these options describe.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
        let builder = match &self.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(path)? {
                    roots.add(c).map_err(|e| format!("{}: {e}", path.display()))?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder.with_root_certificates(rustls::RootCertStore { roots: webpki_roots_or_empty() }),
        };
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err("client_cert_file and client_key_file go together".into()),
        }
    }
}

/// Every certificate in a PEM file (at least one).
fn read_certs(path: &std::path::Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The public web PKI roots (the same set the default client trusts).
fn webpki_roots_or_empty() -> Vec<rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

