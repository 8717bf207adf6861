//! TLS for the APNs client: rustls with ring, TLS 1.2 and 1.3, ALPN `h2`, the
//! public web roots plus an optional extra CA (a simulator or an inspecting proxy).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;

/// A client certificate and its key, for certificate-based APNs auth.
#[derive(Debug)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads a PKCS#12 file (`.p12`/`.pfx`, with `password`) or a PEM file
    /// holding the certificate (chain) and its private key.
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<Self, TlsError> {
        let cert_err = |problem: String| TlsError::Certificate {
            path: path.display().to_string(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|e| cert_err(e.to_string()))?;
        if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| cert_err(e.to_string()))?;
            if chain.is_empty() {
                return Err(cert_err("holds no PEM certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|_| cert_err("holds no PEM private key beside the certificate".into()))?;
            return Ok(ClientIdentity { chain, key });
        }
        // PKCS#12. The error names the file, never the password.
        let store =
            p12_keystore::KeyStore::from_pkcs12(&bytes, password.unwrap_or("")).map_err(|e| {
                cert_err(format!(
                    "not a readable PKCS#12 file with this password ({e})"
                ))
            })?;
        let (_, entry) = store
            .private_key_chain()
            .ok_or_else(|| cert_err("the PKCS#12 file holds no private key".into()))?;
        let chain = entry
            .chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect::<Vec<_>>();
        if chain.is_empty() {
            return Err(cert_err("the PKCS#12 file holds no certificate".into()));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(entry.key().to_vec()));
        Ok(ClientIdentity { chain, key })
    }

    /// The leaf certificate's `notAfter`, in seconds since the epoch: when
    /// APNs will stop accepting it. `None` if it does not parse as X.509,
    /// which rustls would refuse anyway.
    pub fn not_after(&self) -> Option<i64> {
        let leaf = self.chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {problem}")]
    Certificate { path: String, problem: String },
    #[error("CA file {path}: {problem}")]
    CaFile { path: String, problem: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn client_config(
    extra_ca: Option<&Path>,
    identity: Option<ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let ca_err = |problem: String| TlsError::CaFile {
            path: path.display().to_string(),
            problem,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
