//! `wsgate token` and `wsgate jwks`: development tokens signed with the configured HS256
//! secret or a private key file, and the key set that publishes such a key.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wsgate_core::auth::JwtAlgorithm;
use wsgate_server::settings::Settings;

#[derive(clap::Args)]
pub(crate) struct SigningArgs {
    /// A PEM private key (PKCS#8, as `openssl genpkey` writes) to sign with instead of
    /// `auth.jwt.secret`.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The key's algorithm: RS256 (default with --key-file), ES256 or EdDSA.
    #[arg(long)]
    algorithm: Option<JwtAlgorithm>,
    /// The `kid` header naming the key in the gateway's JWKS.
    #[arg(long)]
    kid: Option<String>,
}

pub(crate) fn token(
    settings: &Settings,
    user: &str,
    ttl: Duration,
    grants: wsgate_core::auth::Grants<'_>,
    signing: &SigningArgs,
) -> anyhow::Result<()> {
    use wsgate_core::auth::{MintKey, mint};
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
fn private_key(signing: &SigningArgs) -> anyhow::Result<(JwtAlgorithm, Vec<u8>)> {
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

pub(crate) fn jwks(signing: &SigningArgs) -> anyhow::Result<()> {
    let (algorithm, pem) = private_key(signing)?;
    let jwk = wsgate_core::auth::public_jwk(algorithm, &pem, signing.kid.as_deref())?;
    println!("{}", serde_json::json!({ "keys": [jwk] }));
    Ok(())
}
