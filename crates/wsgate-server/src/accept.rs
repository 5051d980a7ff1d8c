//! Taking connections off a listener: a failed `accept` (out of file descriptors and the
//! like) is logged and retried after a short pause instead of spinning. Shared by the
//! HTTP listener and the control listener's TLS front.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The pause after a failed `accept`.
const BACK_OFF: Duration = Duration::from_millis(50);

/// The next connection on `listener` (named `name` in the log). Cancel-safe: dropping
/// the future loses no connection.
pub async fn next_connection(listener: &TcpListener, name: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(BACK_OFF).await;
            }
        }
    }
}
