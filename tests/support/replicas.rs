//! Two sessiond replicas (A and B) as child processes over one fresh Postgres database, one Redis
//! and one key prefix, and the RPCs the replica tests make.

use sessiond::api::pb::{self, session_service_client::SessionServiceClient};
use tonic::transport::Channel;

use super::{SessiondProcess, keys::Keys, postgres::fresh_database};

/// What a replica logs each time its subscription to the invalidation channel is (re)established.
pub const SUBSCRIBED: &str = "subscribed to invalidations";

/// Local-tier hits a replica has counted.
pub async fn local_hits(sessiond: &SessiondProcess) -> f64 {
    sessiond
        .metric(
            "sessiond_cache_lookups_total",
            &[("tier", "local"), ("result", "hit")],
        )
        .await
}

pub async fn create(
    client: &mut SessionServiceClient<Channel>,
    user_id: &str,
    device_id: &str,
) -> pb::CreateSessionResponse {
    client
        .create_session(pb::CreateSessionRequest {
            user_id: user_id.into(),
            device: Some(pb::Device {
                device_id: device_id.into(),
                name: "test device".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn validate(
    client: &mut SessionServiceClient<Channel>,
    access: &str,
) -> pb::ValidateResponse {
    client
        .validate(pb::ValidateRequest {
            access_token: access.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn revoke(client: &mut SessionServiceClient<Channel>, session_id: &str) {
    client
        .revoke_session(pb::RevokeSessionRequest {
            session_id: session_id.into(),
            reason: "signed out".into(),
        })
        .await
        .unwrap();
}

pub fn token_and_id(created: &pb::CreateSessionResponse) -> (String, String) {
    let access = created.tokens.as_ref().unwrap().access_token.clone();
    let id = created.session.as_ref().unwrap().session_id.clone();
    (access, id)
}

/// Two replicas over one database, one Redis and one key prefix.
pub struct Replicas {
    pub a: SessiondProcess,
    pub b: SessiondProcess,
    /// The key prefix both use.
    pub prefix: String,
    /// The invalidation channel both subscribe to.
    pub channel: String,
    _keys: Keys,
}

impl Replicas {
    /// Starts A, then B, on `redis_url`, with `env` on top of the defaults, and waits until both
    /// are subscribed to the invalidation channel.
    pub async fn start(redis_url: &str, extra: &[(&str, String)]) -> Self {
        let keys = Keys::generate();
        let database = fresh_database().await;
        let prefix = format!("sessiond-replicas:{}:", uuid::Uuid::now_v7().simple());
        let env = |name: &str| {
            let mut env = vec![
                ("SESSIOND_DATABASE_URL", database.clone()),
                ("SESSIOND_REDIS_URL", redis_url.to_owned()),
                ("SESSIOND_REDIS_KEY_PREFIX", prefix.clone()),
                ("SESSIOND_LOCAL_CACHE", "on".into()),
                ("SESSIOND_SHUTDOWN_DRAIN", "0s".into()),
                ("NO_COLOR", "1".into()),
                ("REPLICA", name.to_owned()),
            ];
            env.extend(keys.env());
            env.extend(extra.iter().cloned());
            env
        };
        // One after the other, so only one applies the migrations to the fresh database.
        let a = SessiondProcess::start(&env("A")).await;
        let b = SessiondProcess::start(&env("B")).await;
        a.wait_for_log(SUBSCRIBED, 1).await;
        b.wait_for_log(SUBSCRIBED, 1).await;
        Self {
            a,
            b,
            channel: format!("{prefix}invalidate"),
            prefix,
            _keys: keys,
        }
    }
}
