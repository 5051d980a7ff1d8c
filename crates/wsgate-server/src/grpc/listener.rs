//! TLS on the control listener, accepted here rather than by tonic: tonic's own TLS
//! offers only `h2` by ALPN, and rustls refuses a client whose ALPN list it cannot meet,
//! so every HTTP/1.1 caller of the JSON API that sends ALPN (curl `--http1.1`, most
//! language clients) would fail the handshake. The configuration offers `h2` and
//! `http/1.1`; tonic then tells the protocols apart by the connection preface.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const READY_BACKLOG: usize = 64;

/// The TLS connections accepted on `listener`, each handshake in its own task so a slow
/// client delays no one. Accepting stops, and the listener closes, when the server drops
/// the stream (at its shutdown).
pub fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (ready, stream) = mpsc::channel(READY_BACKLOG);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                conn = crate::accept::next_connection(&listener, "control") => conn,
                () = ready.closed() => break,
            };
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "control TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "control TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}
