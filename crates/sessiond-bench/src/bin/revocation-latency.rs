//! `revocation-latency`: how long a revocation acknowledged by one replica takes to reach (a) a
//! `WatchRevocations` subscriber of another replica, and (b) a `sessiond-verifier` following that
//! other replica, until it refuses the session's token. Run by `crates/sessiond-bench/revocations.sh`,
//! which starts the two replicas.
//!
//! ```sh
//! revocation-latency --revoke-on http://127.0.0.1:50051 --watch-on http://127.0.0.1:50052 \
//!   --jwks http://127.0.0.1:9091/.well-known/jwks.json --count 500
//! ```
//!
//! Each round creates a session on the revoking replica, checks that the verifier accepts its
//! token, revokes it, and from the acknowledgement on times the event's arrival at the subscriber
//! and the verifier's first refusal (polled every 50 µs). Rounds are sequential, `--pause` apart.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use sessiond::api::pb::{self, RevocationKind, session_service_client::SessionServiceClient};
use sessiond_verifier::{Verifier, VerifyError};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "revocation-latency")]
struct Args {
    /// The replica that revokes.
    #[arg(long)]
    revoke_on: String,
    /// The replica the subscriber and the verifier follow.
    #[arg(long)]
    watch_on: String,
    /// The JWKS the verifier reads (the watched replica's ops port).
    #[arg(long)]
    jwks: String,
    #[arg(long, default_value = "sessiond")]
    issuer: String,
    #[arg(long, default_value = "sessiond")]
    audience: String,
    /// Revocations measured.
    #[arg(long, default_value_t = 500)]
    count: u64,
    /// Time between rounds.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pause: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("== {}", std::env::args().collect::<Vec<_>>().join(" "));
    let mut revoker = SessionServiceClient::new(
        Channel::from_shared(args.revoke_on.clone())?
            .connect()
            .await
            .context("--revoke-on")?,
    );
    let mut watcher = SessionServiceClient::new(
        Channel::from_shared(args.watch_on.clone())?
            .connect()
            .await
            .context("--watch-on")?,
    );
    let verifier = Verifier::builder(args.watch_on.clone(), args.jwks.clone())
        .issuer(args.issuer.clone())
        .audience(args.audience.clone())
        .start()
        .await?;
    verifier.wait_synced(Duration::from_secs(30)).await?;
    let mut stream = watcher
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await?
        .into_inner();
    // The replay of what is in force ends with a heartbeat.
    while let Some(event) = stream.message().await? {
        if event.kind() == RevocationKind::Heartbeat {
            break;
        }
    }

    let mut to_event = Histogram::<u64>::new(3)?;
    let mut to_refusal = Histogram::<u64>::new(3)?;
    let mut acknowledge = Histogram::<u64>::new(3)?;
    let run = std::process::id();
    for round in 0..args.count {
        let created = revoker
            .create_session(pb::CreateSessionRequest {
                user_id: format!("latency-{run}-{round}"),
                ..Default::default()
            })
            .await?
            .into_inner();
        let session_id = created.session.context("a session")?.session_id;
        let token = created.tokens.context("tokens")?.access_token;
        // The verifier may need the JWKS of a rotated key first (never here: one key).
        verifier
            .verify(&token)
            .await
            .context("the verifier accepts a live token")?;

        let sent = Instant::now();
        revoker
            .revoke_session(pb::RevokeSessionRequest {
                session_id: session_id.clone(),
                ..Default::default()
            })
            .await?;
        let acknowledged = Instant::now();
        acknowledge.record(micros(acknowledged - sent))?;
        let mut refused_at = None;
        let mut event_at = None;
        let deadline = acknowledged + Duration::from_secs(10);
        let (event_at, refused_at) = loop {
            if let (Some(event), Some(refused)) = (event_at, refused_at) {
                break (event, refused);
            }
            if Instant::now() > deadline {
                bail!("round {round}: not refused or not streamed within 10 s");
            }
            if refused_at.is_none()
                && matches!(verifier.verify_local(&token), Err(VerifyError::Revoked))
            {
                refused_at = Some(Instant::now());
            }
            if event_at.is_some() {
                tokio::time::sleep(Duration::from_micros(50)).await;
                continue;
            }
            // A short wait on the stream doubles as the verifier's polling interval.
            if let Ok(message) =
                tokio::time::timeout(Duration::from_micros(50), stream.message()).await
            {
                let event = message?.context("the stream ended")?;
                if event.session_id == session_id {
                    event_at = Some(Instant::now());
                }
            }
        };
        to_event.record(micros(event_at.saturating_duration_since(acknowledged)))?;
        to_refusal.record(micros(refused_at.saturating_duration_since(acknowledged)))?;
        tokio::time::sleep(args.pause).await;
    }
    println!("revocations: {}", args.count);
    for (name, histogram) in [
        ("RevokeSession answered (A)", &acknowledge),
        ("ack -> event at a subscriber of B", &to_event),
        ("ack -> refusal by a verifier following B", &to_refusal),
    ] {
        println!(
            "{name:<44} p50 {:>8} µs   p99 {:>8} µs   max {:>8} µs",
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max()
        );
    }
    verifier.shutdown().await;
    Ok(())
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
