//! A throw-away CA and a server certificate signed by it, made at every start.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

pub(super) struct Certs {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// In certificate-auth mode, the CA that issues (and verifies) client certificates.
    pub client_issuer: Option<Issuer<'static, KeyPair>>,
}

/// A client certificate for certificate-based auth, as PEM and as PKCS#12.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The certificate and its private key, one PEM file.
    pub pem: String,
    /// The same as PKCS#12, encrypted with the password it was asked with.
    pub p12: Vec<u8>,
}

/// Issues a client certificate for `topic` (its common name, as Apple's
/// certificates carry the bundle id).
pub(super) fn issue_client(
    issuer: &Issuer<'static, KeyPair>,
    topic: &str,
    password: &str,
) -> Result<ClientCertificate, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, topic);
    let cert = params.signed_by(&key, issuer)?;
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let mut store = p12_keystore::KeyStore::new();
    let chain = p12_keystore::Certificate::from_der(cert.der())
        .map_err(|e| CertError::P12(e.to_string()))?;
    store.add_entry(
        topic,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            key.serialize_der(),
            b"misiva",
            [chain],
        )),
    );
    let p12 = store
        .writer(password)
        .write()
        .map_err(|e| CertError::P12(e.to_string()))?;
    Ok(ClientCertificate { pem, p12 })
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CertError {
    #[error("generating the simulator certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("building the simulator TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("writing PKCS#12: {0}")]
    P12(String),
}

pub(super) fn generate(hostnames: &[String], client_auth: bool) -> Result<Certs, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Misiva APNs simulator CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(hostnames.iter().cloned());
    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(names)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "Misiva APNs simulator");
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![server_cert.der().clone()];
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let (builder, client_issuer) = if client_auth {
        let client_ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Misiva APNs simulator client CA");
        let client_ca = params.self_signed(&client_ca_key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.der().clone())?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()?;
        (
            builder.with_client_cert_verifier(verifier),
            Some(Issuer::new(params, client_ca_key)),
        )
    } else {
        (builder.with_no_client_auth(), None)
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Certs {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
        client_issuer,
    })
}

/// The common name of a DER certificate's subject, if it has one.
pub(super) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_owned())
}
