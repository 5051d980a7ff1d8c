//! Test certificates and TLS client configurations.

use std::sync::Arc;

/// A self-signed certificate for `localhost` and `127.0.0.1`, in PEM files that live as
/// long as this value.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub cert_pem: String,
}

/// Writes a fresh self-signed certificate and its key.
pub fn self_signed() -> TlsFiles {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let cert_pem = ck.cert.pem();
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    TlsFiles {
        _dir: dir,
        cert,
        key,
        cert_pem,
    }
}

/// A rustls client configuration (ring) trusting the certificates in `roots_pem`,
/// offering `alpn` (none when empty).
pub fn client_config(roots_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A tokio-rustls connector trusting `roots_pem`, without ALPN.
pub fn connector(roots_pem: &str) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(client_config(roots_pem, &[])))
}
