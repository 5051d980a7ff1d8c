//! `wsgate serve`: telemetry, the listeners bound from the configuration, and the gateway
//! run until SIGTERM or Ctrl-C.

use anyhow::Context;
use wsgate_server::GatewayConfig;

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let telemetry = wsgate_server::telemetry::init(&config.settings, &env)
            .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
        if telemetry.exporting() {
            tracing::info!("exporting traces with OTLP");
        }
        tracing::info!(version = crate::version::LONG, "starting");
        let result = serve_until_signal(config).await;
        // Flushing blocks until the exporter is done: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        result
    })
}

async fn serve_until_signal(config: GatewayConfig) -> anyhow::Result<()> {
    let settings = config.settings.clone();
    let bind = |addr: std::net::SocketAddr, key: &str| {
        listen(addr).with_context(|| format!("cannot listen on {addr} ({key})"))
    };
    let http = bind(settings.server.listen, "server.listen")?;
    let grpc = bind(settings.server.grpc_listen, "server.grpc_listen")?;
    let admin = match settings.server.admin_listen {
        Some(addr) => Some(bind(addr, "server.admin_listen")?),
        None => None,
    };
    tracing::info!(
        http = %http.local_addr()?,
        grpc = %grpc.local_addr()?,
        admin = ?admin.as_ref().map(|a| a.local_addr()).transpose()?,
        "listening"
    );
    wsgate_server::run(
        wsgate_server::Listeners { http, grpc, admin },
        config,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Pending connections the kernel queues per listener. tokio's `bind` uses 128, which a
/// burst of reconnecting clients overflows (each dropped SYN costs the client a 1 s
/// retransmit); Go's net package, for comparison, uses the system maximum.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with address reuse and a deep accept backlog.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
