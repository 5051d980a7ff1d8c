//! `wsgate health`: probes a running gateway's `/healthz` (or `/readyz`) over HTTP, for a
//! container's `HEALTHCHECK` in an image without a shell or curl. Exit 0 on a 200, 1 on
//! anything else (Docker's health check contract: 0 healthy, 1 unhealthy), with the
//! reason on one line on stderr, always within `--timeout`.
//!
//! Where: `--url`, else the listener that serves the operations endpoints in the
//! configuration `serve` reads (`server.admin_listen` when set, else `server.listen`),
//! with an unspecified address (`0.0.0.0`, `[::]`) probed on loopback. When that is the
//! public listener with TLS (`server.tls_cert_file`), the probe uses https and accepts
//! exactly the certificate that file starts with: no name on a certificate matches a
//! loopback address, and the file is what this gateway serves. `--insecure` accepts any
//! certificate (a self-signed one behind `--url https://…`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use wsgate_server::settings::{self, Settings};

use crate::output::{self, Format, OutputArgs, Render};

/// The longest `--timeout`: a probe that may hang for longer is no probe.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(clap::Args)]
pub(crate) struct HealthArgs {
    /// Probe `/readyz` (takes new connections: backends reachable, not draining) instead
    /// of `/healthz` (the process answers).
    #[arg(long)]
    ready: bool,
    /// The gateway's base URL, `http://host:port` or `https://…` (the probe's path is
    /// appended). Default: `server.admin_listen`, else `server.listen`, from the
    /// configuration, on loopback when it binds 0.0.0.0 or [::].
    #[arg(long)]
    url: Option<String>,
    /// Give up after this long (connecting and answering), e.g. `2s`, `500ms`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Accept any TLS certificate (for `--url https://…` with a self-signed one).
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    out: OutputArgs,
}

/// How the probe's TLS checks the server.
#[derive(Debug, Clone, PartialEq)]
enum Trust {
    /// The system's CA certificates, and the name in the URL.
    System,
    /// Exactly this certificate (the first of `server.tls_cert_file`), any name.
    Pinned(CertificateDer<'static>),
    /// Any certificate (`--insecure`).
    Any,
}

/// What the probe found.
struct Outcome {
    url: Option<String>,
    status: Option<u16>,
    /// Why it is not healthy; `None` when it is.
    problem: Option<String>,
}

impl Render for Outcome {
    fn text(&self) -> String {
        match (&self.problem, &self.url, self.status) {
            (None, Some(url), Some(status)) => format!("{url}: {status}"),
            (Some(problem), _, _) => problem.clone(),
            _ => "unknown".to_owned(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "ok": self.problem.is_none(),
            "url": self.url,
            "status": self.status,
            "reason": self.problem,
        })
    }
}

/// `wsgate health`: reads the configuration (from `config` and the environment) only
/// without `--url`.
pub(crate) fn run(args: &HealthArgs, config: Option<&Path>) -> ExitCode {
    let path = if args.ready { "readyz" } else { "healthz" };
    let outcome = match target(args, config, path) {
        Ok((url, trust)) => probe(url, trust, args.timeout),
        Err(problem) => Outcome {
            url: None,
            status: None,
            problem: Some(problem),
        },
    };
    if let Some(problem) = &outcome.problem {
        eprintln!("wsgate: health: {problem}");
    }
    if outcome.problem.is_none() || args.out.output == Format::Json {
        output::print(args.out.output, &outcome);
    }
    if outcome.problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The URL to GET and how to trust its TLS, or why there is none.
fn target(args: &HealthArgs, config: Option<&Path>, path: &str) -> Result<(Url, Trust), String> {
    if args.timeout.is_zero() || args.timeout > MAX_TIMEOUT {
        return Err(format!(
            "--timeout {} is out of range (above 0, at most 1h)",
            humantime::format_duration(args.timeout)
        ));
    }
    let (base, trust) = match &args.url {
        Some(url) => (parse_base(url)?, Trust::System),
        None => {
            let config = settings::load_from_process_env(config).map_err(|e| {
                let first = e.problems.first().map(ToString::to_string);
                let more = match e.problems.len() {
                    0 | 1 => String::new(),
                    n => format!(" and {} more", n - 1),
                };
                format!(
                    "the configuration does not load ({}{more}; see `wsgate check-config`)",
                    one_line(&first.unwrap_or_default())
                )
            })?;
            from_settings(&config.settings)?
        }
    };
    let trust = if args.insecure { Trust::Any } else { trust };
    Ok((join(&base, path), trust))
}

/// `--url`: http or https, a host, no query or fragment.
fn parse_base(url: &str) -> Result<Url, String> {
    let bad = |why: &str| format!("--url {url:?}: {why}");
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host().is_none() {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment"));
    }
    Ok(parsed)
}

/// `base` with `path` appended to its path (`http://h/gw` + `healthz` → `/gw/healthz`).
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}/{path}"));
    url
}

/// The listener that serves `/healthz` and `/readyz` in `settings`, as a base URL.
fn from_settings(s: &Settings) -> Result<(Url, Trust), String> {
    let (addr, key) = match s.server.admin_listen {
        Some(admin) => (admin, "server.admin_listen"),
        None => (s.server.listen, "server.listen"),
    };
    if addr.port() == 0 {
        return Err(format!("{key} has port 0 (any): give --url"));
    }
    let addr = SocketAddr::new(loopback_for(addr.ip()), addr.port());
    // TLS is on the public listener only; the admin listener is always plain HTTP.
    let tls_file = s
        .server
        .tls_cert_file
        .as_deref()
        .filter(|_| s.server.admin_listen.is_none());
    let (scheme, trust) = match tls_file {
        Some(file) => ("https", Trust::Pinned(first_certificate(file)?)),
        None => ("http", Trust::System),
    };
    let url = format!("{scheme}://{addr}/");
    let url = Url::parse(&url).map_err(|e| format!("{key} {addr} makes no URL: {e}"))?;
    Ok((url, trust))
}

/// Where to reach a listener bound to `ip` from the same host.
fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The first certificate in a PEM file (the one the listener presents).
fn first_certificate(file: &Path) -> Result<CertificateDer<'static>, String> {
    let shown = file.display();
    let mut certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("server.tls_cert_file {shown}: {e}"))?;
    match certs.next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(e)) => Err(format!("server.tls_cert_file {shown}: {e}")),
        None => Err(format!("server.tls_cert_file {shown}: no certificate")),
    }
}

/// GETs `url`; healthy on a 200.
fn probe(url: Url, trust: Trust, timeout: Duration) -> Outcome {
    let shown = url.to_string();
    let fail = |status: Option<u16>, problem: String| Outcome {
        url: Some(shown.clone()),
        status,
        problem: Some(problem),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(None, format!("cannot start the runtime: {e}")),
    };
    let answer = runtime.block_on(async {
        let client = client(&trust, url.scheme() == "https", timeout)?;
        let get = async {
            let response = client.get(url.clone()).timeout(timeout).send().await?;
            let status = response.status();
            let body = response.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        match tokio::time::timeout(timeout, get).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) if e.is_timeout() => Err(no_answer(timeout)),
            // The URL leads the line already.
            Ok(Err(e)) => Err(error_chain(&e.without_url())),
            Err(_) => Err(no_answer(timeout)),
        }
    });
    // A resolver thread still waiting for DNS must not hold the exit up.
    runtime.shutdown_background();
    match answer {
        Ok((status, _)) if status == reqwest::StatusCode::OK => Outcome {
            url: Some(shown.clone()),
            status: Some(status.as_u16()),
            problem: None,
        },
        Ok((status, body)) => fail(
            Some(status.as_u16()),
            format!("{shown} answered {status}{}", reason_of(&body)),
        ),
        Err(e) => fail(None, format!("{shown}: {e}")),
    }
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

/// The client: no proxy, no redirects, HTTP/1.1 (what the listeners speak).
/// With [`Trust::System`], the gateway's own outbound client (the system's CA
/// certificates, loaded only for `https`).
fn client(trust: &Trust, https: bool, timeout: Duration) -> Result<reqwest::Client, String> {
    let tls = match trust {
        Trust::System => return wsgate_server::http_client::pooled(https),
        Trust::Pinned(cert) => tls_accepting(Some(cert.clone())),
        Trust::Any => tls_accepting(None),
    }?;
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("wsgate-health/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// rustls that accepts `pinned` only, or any certificate when `None`.
fn tls_accepting(pinned: Option<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Accept {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts the pinned certificate (or any), whatever its name and dates, but still
/// checks that the server holds its key (the handshake's signature).
#[derive(Debug)]
struct Accept {
    pinned: Option<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if pinned.as_ref() != end_entity.as_ref() => Err(rustls::Error::General(
                "the listener's certificate is not the first in server.tls_cert_file".to_owned(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `: <message>` from the gateway's JSON error body (`{"error":…,"message":…}`), else a
/// short, one-line piece of the body; nothing for an empty one.
fn reason_of(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.get("message")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let reason = from_json.unwrap_or_else(|| body.chars().take(200).collect());
    let reason = one_line(&reason);
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// An error with its causes, `a: b: c`, skipping a cause its parent already says.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    one_line(&out)
}

/// `s` on one line: line breaks and runs of spaces as one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_probe_path_is_appended_to_the_base_path() {
        for (base, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/healthz"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/healthz"),
            (
                "https://gw.example/edge/",
                "https://gw.example/edge/healthz",
            ),
            ("http://[::1]:9090/a/b", "http://[::1]:9090/a/b/healthz"),
        ] {
            let url = join(&parse_base(base).unwrap(), "healthz");
            assert_eq!(url.as_str(), want, "{base}");
        }
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://h/",
            "http://",
            "http://h/?q=1",
            "http://h/#f",
            "http://[::1",
            "unix:/run/wsgate.sock",
        ] {
            let err = parse_base(bad).unwrap_err();
            assert!(err.starts_with("--url "), "{bad}: {err}");
        }
    }

    #[test]
    fn the_operations_listener_is_found_in_the_settings() {
        let mut s = Settings::default();
        s.server.listen = "0.0.0.0:8080".parse().unwrap();
        let (url, trust) = from_settings(&s).unwrap();
        assert_eq!(
            (url.as_str(), trust),
            ("http://127.0.0.1:8080/", Trust::System)
        );
        s.server.admin_listen = Some("[::]:9090".parse().unwrap());
        let (url, _) = from_settings(&s).unwrap();
        assert_eq!(url.as_str(), "http://[::1]:9090/");
        s.server.admin_listen = Some("10.1.2.3:9090".parse().unwrap());
        assert_eq!(
            from_settings(&s).unwrap().0.as_str(),
            "http://10.1.2.3:9090/"
        );
        s.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        assert!(from_settings(&s).unwrap_err().contains("port 0"));

        // TLS is the public listener's: the admin one stays plain HTTP...
        s.server.tls_cert_file = Some("/nonexistent/cert.pem".into());
        s.server.admin_listen = Some("127.0.0.1:9090".parse().unwrap());
        let (url, trust) = from_settings(&s).unwrap();
        assert_eq!(
            (url.as_str(), trust),
            ("http://127.0.0.1:9090/", Trust::System)
        );
        // ...and without one the probe needs the certificate file.
        s.server.admin_listen = None;
        let err = from_settings(&s).unwrap_err();
        assert!(
            err.starts_with("server.tls_cert_file /nonexistent/cert.pem"),
            "{err}"
        );
    }

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(
            reason_of(r#"{"error":"not_ready","message":"draining"}"#),
            ": draining"
        );
        assert_eq!(reason_of("a\nb\r\n  c"), ": a b c");
        assert_eq!(reason_of(""), "");
        assert_eq!(reason_of(&"x".repeat(1000)).len(), 202);
        assert_eq!(reason_of("ü".repeat(300).as_str()).chars().count(), 202);
    }
}
