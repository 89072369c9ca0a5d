//! validate-cold: access tokens for sessions sessiond has never been asked about.
//!
//! Samples live sessions straight from sessiond's Postgres database (seeded by
//! `crates/sessiond-bench/seed.sh`) and signs tokens for them with sessiond's own key and its own
//! token code, so sessiond accepts them and has to read each session from Postgres: no cache has
//! seen it.

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sessiond::{
    domain::{Device, Metadata, Session, SessionId, UserId},
    token::{AccessTokenSigner, SigningKey},
};
use sqlx::{Connection, PgConnection};

type Row = (
    uuid::Uuid,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Signs tokens for up to `sample` live sessions picked at random from `database_url`, in random
/// order.
pub async fn mint_tokens(
    database_url: &str,
    signing_key_file: &Path,
    issuer: &str,
    audience: &str,
    sample: usize,
) -> anyhow::Result<Vec<String>> {
    let tokens = AccessTokenSigner::new(
        SigningKey::from_pem_file(signing_key_file).context("--signing-key-file")?,
        issuer.to_owned(),
        audience.to_owned(),
    );
    let mut db = PgConnection::connect(database_url)
        .await
        .context("--database-url")?;
    let estimated: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'session'")
            .fetch_optional(&mut db)
            .await?
            .unwrap_or(-1.0);
    // Bernoulli sampling reads every page but picks rows independently, so the sample is spread
    // over the whole table (SYSTEM sampling would pick whole pages of neighbouring rows).
    let percent = if estimated > 0.0 {
        (sample as f32 * 1.5 / estimated * 100.0).clamp(0.0001, 100.0)
    } else {
        100.0
    };
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT session_id, user_id, created_at, last_seen_at, expires_at, idle_expires_at \
         FROM session TABLESAMPLE BERNOULLI ($1) \
         WHERE revoked_at IS NULL AND expires_at > now() + interval '1 hour' \
           AND idle_expires_at > now() + interval '1 hour' \
         LIMIT $2",
    )
    .bind(percent)
    .bind(i64::try_from(sample)?)
    .fetch_all(&mut db)
    .await
    .context("sampling sessions")?;
    anyhow::ensure!(
        !rows.is_empty(),
        "no live session in {database_url}; run crates/sessiond-bench/seed.sh first"
    );

    let now = Utc::now();
    let mut minted = Vec::with_capacity(rows.len());
    for (id, user_id, created_at, last_seen_at, expires_at, idle_expires_at) in rows {
        let session = Session {
            id: SessionId::from(id),
            user_id: UserId::try_from(user_id).map_err(anyhow::Error::msg)?,
            device: Device::default(),
            metadata: Metadata::default(),
            created_at,
            last_seen_at,
            expires_at,
            idle_expires_at,
            revoked_at: None,
            revoke_reason: None,
        };
        minted.push(
            tokens
                .issue(&session, now, chrono::Duration::minutes(15))?
                .token,
        );
    }
    shuffle(&mut minted);
    Ok(minted)
}

/// Fisher-Yates with SplitMix64, seeded from the clock.
fn shuffle(items: &mut [String]) {
    let mut state = u64::from(Utc::now().timestamp_subsec_nanos()) ^ 0xA076_1D64_78BD_642F;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
}
