//! The HTTP/1.1 connection loop. Served by hand rather than with `axum::serve` to set a
//! header read timeout and a header size limit, to keep upgrades, and to give each request
//! its peer address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Largest request head accepted; larger gets 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long keep-alive HTTP connections get to finish after shutdown starts.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// Accepts connections until `stop`, serving `app` on each. Returns once the listener is
/// closed and every plain HTTP connection has finished (upgraded sockets are tracked by
/// their sessions, not here).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_header_size(MAX_HEADER_BYTES);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            conn = crate::accept::next_connection(&listener, "http") => conn,
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, peer, app, stop).await,
                Some(acceptor) => {
                    // The TLS handshake counts against the header read timeout: a client
                    // that opens a connection and stalls is dropped either way.
                    match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(&builder, tls, peer, app, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection (plain or TLS) until it ends, or drains it on `stop`.
async fn serve_connection<IO>(
    builder: &hyper::server::conn::http1::Builder,
    io: IO,
    peer: SocketAddr,
    app: Router,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(
                app.oneshot(req.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|e| match e {}),
            )
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(CONNECTION_DRAIN, conn).await;
}
