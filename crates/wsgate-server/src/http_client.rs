//! The gateway's outbound HTTP client, shared by the calls to the application's backend
//! ([`crate::rpc`]) and webhook deliveries ([`crate::webhooks`]): reqwest with a
//! connection pool (HTTP/1.1 and HTTP/2), on the same rustls (ring) as the listeners,
//! trusting the system's CA store for `https://` URLs. No proxy from the environment, no
//! redirects: the gateway talks to exactly the URL it was configured with.

use std::sync::Arc;
use std::time::Duration;

/// A pooled client; with `https`, the system's CA certificates are loaded (`SSL_CERT_FILE`
/// and `SSL_CERT_DIR` are honoured) and an error says when there are none.
pub fn pooled(https: bool) -> Result<reqwest::Client, String> {
    let tls = tls_config(https)?;
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("wsgate/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// rustls on ring, with the system's roots when `https` calls are to be made.
fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "no CA certificates found in the system store for an https URL (install \
                 ca-certificates or set SSL_CERT_FILE)"
                    .to_owned(),
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
