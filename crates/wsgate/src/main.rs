//! `wsgate`: the gateway's command line.
//!
//! `serve` (the default) loads and validates the configuration, binds the listeners and
//! runs the gateway until SIGTERM or Ctrl-C; `check-config` validates only; `token` mints
//! a development token with the configured HS256 secret or a private key file (with a
//! `kid`); `jwks` prints the key set that publishes such a key; `send`, `publish`,
//! `presence` and `history` call the gRPC control plane of a running gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::metadata::MetadataValue;
use wsgate_proto::pb;
use wsgate_server::GatewayConfig;
use wsgate_server::settings::{self, Settings};

/// Exit code for a configuration that does not validate (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A clustered WebSocket session gateway"
)]
struct Cli {
    /// Configuration file (TOML, YAML or JSON). Also `WSGATE_CONFIG`.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and list every problem.
    CheckConfig,
    /// Mint a development token with the configured HS256 secret, or with a private key
    /// (`--key-file`, RS256/ES256/EdDSA) for a gateway that reads a JWKS or a public key.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Allowed topic patterns, comma-separated (`chat.*,news`).
        #[arg(long, value_delimiter = ',')]
        topics: Option<Vec<String>>,
        /// Topic patterns the token may publish to with the `publish` op, comma-separated.
        #[arg(long, value_delimiter = ',')]
        publish: Option<Vec<String>>,
        #[command(flatten)]
        signing: SigningArgs,
    },
    /// Print the JWKS (`{"keys":[…]}`) that publishes the public half of a private key,
    /// for development and tests (`auth.jwt.jwks_url` pointed at a file server).
    Jwks {
        #[command(flatten)]
        signing: SigningArgs,
    },
    /// Push a message to every session of a user.
    Send {
        /// The user id.
        #[arg(long)]
        user: String,
        /// The message.
        text: String,
        /// Makes a retry safe when the user streams keep history: a repeat of the key
        /// within `history.idempotency_window` publishes nothing.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        target: ControlArgs,
    },
    /// Publish a message to a topic's subscribers.
    Publish {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The message.
        text: String,
        /// Makes a retry safe when the topic keeps history: a repeat of the key within
        /// `history.idempotency_window` publishes nothing.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        target: ControlArgs,
    },
    /// Revoke a user, a session or a token (`jti`) for a while: their sessions close with
    /// 3006 on every pod and their handshakes are refused until then.
    #[command(group = clap::ArgGroup::new("revoked").required(true))]
    Revoke {
        /// Every session and handshake of this user.
        #[arg(long, group = "revoked")]
        user: Option<String>,
        /// One session.
        #[arg(long, group = "revoked")]
        session: Option<String>,
        /// Every session and handshake with the token of this `jti`.
        #[arg(long, group = "revoked")]
        token_id: Option<String>,
        /// How long, e.g. `15m`, `24h` (at most 90 days).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[command(flatten)]
        target: ControlArgs,
    },
    /// Show a user's live sessions.
    Presence {
        /// The user id.
        user: String,
        #[command(flatten)]
        target: ControlArgs,
    },
    /// Show what a topic's stream keeps (or, with `--user`, a user's own stream).
    History {
        /// The topic.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        topic: Option<String>,
        /// A user's own stream (what `send` sends) instead of a topic's.
        #[arg(long)]
        user: Option<String>,
        /// Only messages with an offset above this one (0 = from the oldest kept).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many messages, the oldest first (0 = all kept).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[command(flatten)]
        target: ControlArgs,
    },
}

#[derive(clap::Args)]
struct SigningArgs {
    /// A PEM private key (PKCS#8, as `openssl genpkey` writes) to sign with instead of
    /// `auth.jwt.secret`.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The key's algorithm: RS256 (default with --key-file), ES256 or EdDSA.
    #[arg(long)]
    algorithm: Option<wsgate_core::auth::JwtAlgorithm>,
    /// The `kid` header naming the key in the gateway's JWKS.
    #[arg(long)]
    kid: Option<String>,
}

#[derive(clap::Args)]
struct ControlArgs {
    /// The gateway's gRPC address. Default: `server.grpc_listen` from the configuration.
    #[arg(long)]
    grpc: Option<String>,
    /// API key for the control plane. Default: the first of `control.api_keys`.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send the message as JSON (validated by the gateway) instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match settings::load_from_process_env(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wsgate: the configuration has problems:\n{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let settings = config.settings.clone();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("configuration OK");
            Ok(())
        }
        Command::Token {
            user,
            ttl,
            topics,
            publish,
            signing,
        } => {
            let grants = wsgate_core::auth::Grants {
                topics: topics.as_deref(),
                publish: publish.as_deref(),
            };
            token(&settings, &user, ttl, grants, &signing)
        }
        Command::Jwks { signing } => jwks(&signing),
        Command::Serve => serve(config),
        Command::Send {
            user,
            text,
            idempotency_key,
            target,
        } => control(
            &settings,
            &target,
            |mut c, payload| {
                Box::pin(async move {
                    let r = c
                        .send_to_user(pb::SendToUserRequest {
                            user_id: user,
                            payload: Some(payload),
                            idempotency_key: idempotency_key.unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    println!("sent to {} session(s), message {}", r.targets, r.message_id);
                    print_position(&r);
                    Ok(())
                })
            },
            text,
        ),
        Command::Publish {
            topic,
            text,
            idempotency_key,
            target,
        } => control(
            &settings,
            &target,
            |mut c, payload| {
                Box::pin(async move {
                    let r = c
                        .publish(pb::PublishRequest {
                            topic,
                            payload: Some(payload),
                            idempotency_key: idempotency_key.unwrap_or_default(),
                        })
                        .await?
                        .into_inner();
                    println!(
                        "published to {} subscriber(s), message {}",
                        r.targets, r.message_id
                    );
                    print_position(&r);
                    Ok(())
                })
            },
            text,
        ),
        Command::Revoke {
            user,
            session,
            token_id,
            duration,
            target,
        } => {
            use pb::revoke_request::Target as T;
            let what = match (user, session, token_id) {
                (Some(u), _, _) => T::UserId(u),
                (_, Some(s), _) => T::SessionId(s),
                (_, _, Some(t)) => T::TokenId(t),
                // clap requires exactly one of the group.
                (None, None, None) => T::UserId(String::new()),
            };
            let until_ms = wsgate_core::clock::now_ms().saturating_add(duration.as_millis() as u64);
            control(
                &settings,
                &target,
                |mut c, _| {
                    Box::pin(async move {
                        let r = c
                            .revoke(pb::RevokeRequest {
                                target: Some(what),
                                until_ms,
                            })
                            .await?
                            .into_inner();
                        let until = std::time::UNIX_EPOCH + Duration::from_millis(r.until_ms);
                        println!(
                            "revoked until {} (until_ms={})",
                            humantime::format_rfc3339_millis(until),
                            r.until_ms
                        );
                        Ok(())
                    })
                },
                String::new(),
            )
        }
        Command::Presence { user, target } => control(
            &settings,
            &target,
            |mut c, _| {
                Box::pin(async move {
                    let r = c
                        .get_presence(pb::GetPresenceRequest { user_id: user })
                        .await?
                        .into_inner();
                    if r.sessions.is_empty() {
                        println!("{} is offline", r.user_id);
                    }
                    for s in r.sessions {
                        println!(
                            "{}  pod={}  connected_at_ms={}  remote={}",
                            s.session_id, s.pod_id, s.connected_at_ms, s.remote_addr
                        );
                    }
                    Ok(())
                })
            },
            String::new(),
        ),
        Command::History {
            topic,
            user,
            since,
            limit,
            target,
        } => {
            use pb::history_request::Stream;
            let stream = match (topic, user) {
                (Some(topic), None) => Ok(Stream::Topic(topic)),
                (None, Some(user)) => Ok(Stream::UserId(user)),
                // clap already refuses both and neither.
                _ => Err(anyhow::anyhow!("give either a topic or --user")),
            };
            stream.and_then(|stream| {
                control(
                    &settings,
                    &target,
                    |mut c, _| {
                        Box::pin(async move {
                            let r = c
                                .history(pb::HistoryRequest {
                                    stream: Some(stream),
                                    since_offset: since,
                                    limit,
                                })
                                .await?
                                .into_inner();
                            print_history(&r);
                            Ok(())
                        })
                    },
                    String::new(),
                )
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The second line of `send` and `publish` when the target keeps history.
fn print_position(r: &pb::SendResponse) {
    if !r.epoch.is_empty() {
        println!("offset={}  epoch={}", r.offset, r.epoch);
    }
}

/// `history`: the stream's epoch and newest offset, then one line per kept message.
fn print_history(r: &pb::HistoryResponse) {
    println!("epoch={}  offset={}", r.epoch, r.offset);
    if r.messages.is_empty() {
        println!("no messages");
    }
    for m in &r.messages {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(m.published_at_ms);
        println!(
            "{}  {}  {}",
            m.offset,
            humantime::format_rfc3339_millis(at),
            payload_line(m.payload.as_ref())
        );
    }
}

/// A payload on one line: text as a JSON string, JSON as sent (line breaks, which valid
/// JSON has only between tokens, as spaces), binary as its size.
fn payload_line(payload: Option<&pb::Payload>) -> String {
    use pb::payload::Body;
    match payload.and_then(|p| p.body.as_ref()) {
        Some(Body::Text(t)) => serde_json::Value::from(t.as_str()).to_string(),
        Some(Body::Json(j)) => j.replace(['\n', '\r'], " "),
        Some(Body::Binary(b)) => format!("<{} bytes>", b.len()),
        None => "<empty>".to_owned(),
    }
}

fn token(
    settings: &Settings,
    user: &str,
    ttl: Duration,
    grants: wsgate_core::auth::Grants<'_>,
    signing: &SigningArgs,
) -> anyhow::Result<()> {
    use wsgate_core::auth::{JwtAlgorithm, MintKey, mint};
    let pem;
    let key = match &signing.key_file {
        Some(_) => {
            let (algorithm, read) = private_key(signing)?;
            pem = read;
            MintKey {
                algorithm,
                key: &pem,
                kid: signing.kid.as_deref(),
            }
        }
        None => {
            if signing.algorithm.is_some_and(|a| a != JwtAlgorithm::HS256) {
                anyhow::bail!("--algorithm other than HS256 needs --key-file");
            }
            let secret = settings.auth.jwt.secret.as_deref().context(
                "no auth.jwt.secret configured: `wsgate token` mints HS256 tokens with it \
                 (set WSGATE__AUTH__JWT__SECRET or auth.jwt.secret), or pass --key-file",
            )?;
            MintKey {
                algorithm: JwtAlgorithm::HS256,
                key: secret.as_bytes(),
                kid: signing.kid.as_deref(),
            }
        }
    };
    let token = mint(
        &key,
        user,
        ttl,
        grants,
        settings.auth.jwt.issuer.as_deref(),
        settings.auth.jwt.audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}

/// The algorithm and PEM of `--key-file` (RS256 unless `--algorithm` says otherwise).
fn private_key(
    signing: &SigningArgs,
) -> anyhow::Result<(wsgate_core::auth::JwtAlgorithm, Vec<u8>)> {
    use wsgate_core::auth::JwtAlgorithm;
    let path = signing
        .key_file
        .as_deref()
        .context("--key-file is required")?;
    let algorithm = signing.algorithm.unwrap_or(JwtAlgorithm::RS256);
    if algorithm == JwtAlgorithm::HS256 {
        anyhow::bail!("HS256 signs with auth.jwt.secret, not a key file");
    }
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((algorithm, pem))
}

fn jwks(signing: &SigningArgs) -> anyhow::Result<()> {
    let (algorithm, pem) = private_key(signing)?;
    let jwk = wsgate_core::auth::public_jwk(algorithm, &pem, signing.kid.as_deref())?;
    println!("{}", serde_json::json!({ "keys": [jwk] }));
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let telemetry = wsgate_server::telemetry::init(&config.settings, &env)
            .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
        if telemetry.exporting() {
            tracing::info!("exporting traces with OTLP");
        }
        let result = serve_until_signal(config).await;
        // Flushing blocks until the exporter is done: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        result
    })
}

async fn serve_until_signal(config: GatewayConfig) -> anyhow::Result<()> {
    {
        let settings = config.settings.clone();
        let http = listen(settings.server.listen).with_context(|| {
            format!(
                "cannot listen on {} (server.listen)",
                settings.server.listen
            )
        })?;
        let grpc = listen(settings.server.grpc_listen).with_context(|| {
            format!(
                "cannot listen on {} (server.grpc_listen)",
                settings.server.grpc_listen
            )
        })?;
        let admin = match settings.server.admin_listen {
            Some(addr) => Some(
                listen(addr)
                    .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?,
            ),
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

/// Adds the API key to every call.
type AddKey =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

type Client = pb::gateway_client::GatewayClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddKey>,
>;

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

fn control(
    settings: &Settings,
    args: &ControlArgs,
    call: impl FnOnce(Client, pb::Payload) -> Call,
    text: String,
) -> anyhow::Result<()> {
    let addr = args.grpc.clone().unwrap_or_else(|| {
        let a = settings.server.grpc_listen;
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            a.ip().to_string()
        };
        format!("http://{host}:{}", a.port())
    });
    let addr = if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    };
    let key = args
        .api_key
        .clone()
        .or_else(|| settings.control.api_keys.first().cloned());
    let header = match key {
        Some(k) => Some(
            MetadataValue::try_from(format!("Bearer {k}"))
                .context("the API key contains characters not allowed in metadata")?,
        ),
        None => None,
    };
    let payload = pb::Payload {
        body: Some(if args.json {
            pb::payload::Body::Json(text)
        } else {
            pb::payload::Body::Text(text)
        }),
    };
    runtime()?.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .with_context(|| format!("bad gRPC address {addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {addr}"))?;
        let interceptor: AddKey = Box::new(move |mut req: tonic::Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert("authorization", h.clone());
            }
            Ok(req)
        });
        let client = pb::gateway_client::GatewayClient::with_interceptor(channel, interceptor);
        call(client, payload).await
    })
}
