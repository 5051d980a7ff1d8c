//! `wsgate`: the gateway's command line.
//!
//! `serve` (the default) loads and validates the configuration, binds the listeners and
//! runs the gateway until SIGTERM or Ctrl-C ([`serve`]); `check-config` validates only;
//! `token` mints a development token with the configured HS256 secret or a private key
//! file (with a `kid`) and `jwks` prints the key set that publishes such a key
//! ([`tokens`]); `send`, `publish`, `revoke`, `presence` and `history` call the gRPC
//! control plane of a running gateway ([`control`]), printing text or JSON ([`output`]);
//! `health` probes a running gateway's `/healthz` or `/readyz`, for a container's health
//! check ([`health`]); `completions` writes a shell completion script and `version` the
//! version with the git revision ([`version`]), neither reading the configuration.

mod control;
mod health;
mod output;
mod serve;
mod tokens;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use wsgate_proto::pb;
use wsgate_server::settings;

use crate::control::{ControlArgs, PayloadArgs, Target};
use crate::output::{ConfigCheck, OutputArgs};
use crate::tokens::SigningArgs;

/// Exit code for a configuration that does not validate (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version = version::LONG,
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
    CheckConfig {
        #[command(flatten)]
        out: OutputArgs,
    },
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
        #[command(flatten)]
        message: PayloadArgs,
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
        #[command(flatten)]
        message: PayloadArgs,
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
    /// Probe a running gateway's `/healthz` (or `/readyz` with `--ready`): exit 0 on a 200,
    /// else 1 with the reason on stderr, within `--timeout`. For a container's
    /// HEALTHCHECK; reads the configuration only to find the listener (without `--url`).
    Health(health::HealthArgs),
    /// Print a completion script for SHELL on stdout, e.g.
    /// `wsgate completions bash > /etc/bash_completion.d/wsgate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the version and the git revision it was built from.
    Version {
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// mimalloc rather than glibc's malloc: per-thread free lists instead of arenas that grow
/// page by page for each new session; measured in bench/README.md ("The allocator").
/// Without the `mimalloc` feature (for heap profilers that hook malloc) it is glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These two read no configuration: they work beside a broken one. `health` reads it
    // itself, and only without `--url`.
    match &cli.command {
        Some(Command::Health(args)) => return health::run(args, cli.config.as_deref()),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "wsgate",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Version { out }) => {
            output::print(out.output, &output::Version);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match settings::load_from_process_env(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            let check = ConfigCheck {
                problems: &e.problems,
            };
            // As JSON on stdout when asked for; otherwise for people, on stderr.
            match &cli.command {
                Some(Command::CheckConfig { out }) if out.output == output::Format::Json => {
                    output::print(out.output, &check);
                }
                _ => eprintln!("wsgate: {}", output::Render::text(&check)),
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let settings = config.settings.clone();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { out } => {
            output::print(out.output, &ConfigCheck { problems: &[] });
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
            tokens::token(&settings, &user, ttl, grants, &signing)
        }
        Command::Jwks { signing } => tokens::jwks(&signing),
        Command::Serve => serve::serve(config),
        Command::Send {
            user,
            message,
            idempotency_key,
            target,
        } => control::send(
            &settings,
            &target,
            Target::User(user),
            message,
            idempotency_key,
        ),
        Command::Publish {
            topic,
            message,
            idempotency_key,
            target,
        } => control::send(
            &settings,
            &target,
            Target::Topic(topic),
            message,
            idempotency_key,
        ),
        Command::Revoke {
            user,
            session,
            token_id,
            duration,
            target,
        } => {
            use pb::revoke_request::Target as T;
            match (user, session, token_id) {
                (Some(u), _, _) => Ok(T::UserId(u)),
                (_, Some(s), _) => Ok(T::SessionId(s)),
                (_, _, Some(t)) => Ok(T::TokenId(t)),
                // clap requires exactly one of the group.
                (None, None, None) => Err(anyhow::anyhow!(
                    "give one of --user, --session or --token-id"
                )),
            }
            .and_then(|what| control::revoke(&settings, &target, what, duration))
        }
        Command::Presence { user, target } => control::presence(&settings, &target, user),
        Command::History {
            topic,
            user,
            since,
            limit,
            target,
        } => {
            use pb::history_request::Stream;
            match (topic, user) {
                (Some(topic), None) => Ok(Stream::Topic(topic)),
                (None, Some(user)) => Ok(Stream::UserId(user)),
                // clap already refuses both and neither.
                _ => Err(anyhow::anyhow!("give either a topic or --user")),
            }
            .and_then(|stream| {
                let request = pb::HistoryRequest {
                    stream: Some(stream),
                    since_offset: since,
                    limit,
                };
                control::history(&settings, &target, request)
            })
        }
        Command::Completions { .. } | Command::Version { .. } | Command::Health(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
