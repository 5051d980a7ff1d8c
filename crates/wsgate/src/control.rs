//! The commands that call a running gateway's gRPC control plane (`send`, `publish`,
//! `revoke`, `presence`, `history`): where to reach it, with which API key, and each
//! call printed through [`crate::output`].

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tonic::metadata::MetadataValue;
use wsgate_proto::pb;
use wsgate_server::settings::Settings;

use crate::output::{self, OutputArgs, Sent};

#[derive(clap::Args)]
pub(crate) struct ControlArgs {
    /// The gateway's gRPC address. Default: `server.grpc_listen` from the configuration.
    #[arg(long)]
    grpc: Option<String>,
    /// API key for the control plane. Default: the first of `control.api_keys`.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args)]
pub(crate) struct PayloadArgs {
    /// The message.
    text: String,
    /// Send the message as JSON (validated by the gateway) instead of text. (The output
    /// format is `--output`.)
    #[arg(long)]
    json: bool,
}

impl PayloadArgs {
    fn payload(self) -> pb::Payload {
        pb::Payload {
            body: Some(if self.json {
                pb::payload::Body::Json(self.text)
            } else {
                pb::payload::Body::Text(self.text)
            }),
        }
    }
}

/// Adds the API key to every call.
type AddKey =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

type Client = pb::gateway_client::GatewayClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddKey>,
>;

/// A user's sessions (`send`) or a topic's subscribers (`publish`).
pub(crate) enum Target {
    User(String),
    Topic(String),
}

/// `send` and `publish`.
pub(crate) fn send(
    settings: &Settings,
    args: &ControlArgs,
    target: Target,
    message: PayloadArgs,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let payload = Some(message.payload());
    let idempotency_key = idempotency_key.unwrap_or_default();
    call(settings, args, |mut c| async move {
        let (response, to_topic) = match target {
            Target::User(user_id) => {
                let r = c.send_to_user(pb::SendToUserRequest {
                    user_id,
                    payload,
                    idempotency_key,
                });
                (r.await?.into_inner(), false)
            }
            Target::Topic(topic) => {
                let r = c.publish(pb::PublishRequest {
                    topic,
                    payload,
                    idempotency_key,
                });
                (r.await?.into_inner(), true)
            }
        };
        output::print(
            args.out.output,
            &Sent {
                response: &response,
                to_topic,
            },
        );
        Ok(())
    })
}

/// `revoke`.
pub(crate) fn revoke(
    settings: &Settings,
    args: &ControlArgs,
    target: pb::revoke_request::Target,
    duration: Duration,
) -> anyhow::Result<()> {
    let until_ms = wsgate_core::clock::now_ms()
        .saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    call(settings, args, |mut c| async move {
        let r = c
            .revoke(pb::RevokeRequest {
                target: Some(target),
                until_ms,
            })
            .await?
            .into_inner();
        output::print(args.out.output, &r);
        Ok(())
    })
}

/// `presence`.
pub(crate) fn presence(
    settings: &Settings,
    args: &ControlArgs,
    user_id: String,
) -> anyhow::Result<()> {
    call(settings, args, |mut c| async move {
        let r = c
            .get_presence(pb::GetPresenceRequest { user_id })
            .await?
            .into_inner();
        output::print(args.out.output, &r);
        Ok(())
    })
}

/// `history`.
pub(crate) fn history(
    settings: &Settings,
    args: &ControlArgs,
    request: pb::HistoryRequest,
) -> anyhow::Result<()> {
    call(settings, args, |mut c| async move {
        let r = c.history(request).await?.into_inner();
        output::print(args.out.output, &r);
        Ok(())
    })
}

/// Connects to the gateway named by `args` (or the configuration) and runs `f` with a
/// client that sends the API key.
fn call<F>(
    settings: &Settings,
    args: &ControlArgs,
    f: impl FnOnce(Client) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
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
    crate::serve::runtime()?.block_on(async move {
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
        f(client).await
    })
}
