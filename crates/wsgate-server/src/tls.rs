//! TLS for the listeners (rustls, ring provider): the WebSocket/HTTP listener when
//! `server.tls_cert_file` and `server.tls_key_file` are set, the control listener (gRPC
//! and the HTTP JSON API) when `control.tls_cert_file` and `control.tls_key_file` are.
//! Certificates and keys are PEM files; the certificate file may hold the whole chain.
//!
//! Each pair is read once, when the configuration is built, and checked by building the
//! rustls configuration from it, so a certificate and key that do not fit together are a
//! configuration problem, not a failure at start-up.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, as read from their PEM files.
#[derive(Clone)]
pub struct PemPair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").finish_non_exhaustive()
    }
}

impl PemPair {
    /// Reads a PEM certificate chain and private key, checking that they parse.
    pub fn read(cert: &Path, key: &Path) -> Result<Self, String> {
        let cert_pem = std::fs::read(cert)
            .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
        let key_pem = std::fs::read(key)
            .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
        let pair = Self { cert_pem, key_pem };
        let certs = pair
            .certs()
            .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", cert.display()));
        }
        pair.key()
            .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
        Ok(pair)
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
        CertificateDer::pem_slice_iter(&self.cert_pem).collect()
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, rustls_pki_types::pem::Error> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
    }

    /// A rustls server configuration with this certificate, offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs = self.certs().map_err(|e| format!("bad certificate: {e}"))?;
        let key = self.key().map_err(|e| format!("bad private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// ALPN of the HTTP/WebSocket listener: HTTP/1.1 only, as the listener serves.
pub const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];
/// ALPN of the control listener: HTTP/2 for gRPC (and the JSON API), HTTP/1.1 for JSON
/// API callers that offer nothing else.
pub const CONTROL_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
