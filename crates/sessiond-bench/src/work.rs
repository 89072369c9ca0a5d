//! The calls each scenario makes, and the sessions they need made first.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::ValueEnum;
use sessiond::api::pb;
use tokio::{sync::Semaphore, task::JoinSet};
use tonic_health::pb::HealthCheckRequest;

use crate::runner::{self, Clients, Outcome};

/// How validate-spread picks its next session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pick {
    Random,
    RoundRobin,
}

impl Pick {
    pub fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::RoundRobin => "round-robin",
        }
    }
}

/// Weights of the mix scenario: validate, refresh, create, revoke-user.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    const KINDS: [&str; 4] = ["validate", "refresh", "create", "revoke"];

    /// Parses `validate=90,refresh=5,create=4,revoke=1` (missing kinds weigh 0).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut weights = [0u32; 4];
        for part in text.split(',').filter(|part| !part.trim().is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let index = Self::KINDS
                .iter()
                .position(|k| *k == kind.trim())
                .ok_or_else(|| format!("unknown kind {kind:?}; use {}", Self::KINDS.join(", ")))?;
            weights[index] = weight
                .trim()
                .parse()
                .map_err(|_| format!("{weight:?} is not a whole number"))?;
        }
        if weights.iter().sum::<u32>() == 0 {
            return Err("the weights add up to 0".into());
        }
        Ok(Self { weights })
    }

    /// The kind a uniform `roll` in `0..total` lands on.
    fn pick(&self, roll: u64) -> usize {
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut roll = roll % total.max(1);
        for (index, &weight) in self.weights.iter().enumerate() {
            if roll < u64::from(weight) {
                return index;
            }
            roll -= u64::from(weight);
        }
        0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Self::KINDS
            .iter()
            .zip(self.weights)
            .map(|(kind, weight)| format!("{kind}={weight}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What a scenario's workers call.
pub enum Work {
    /// The no-op baseline: `grpc.health.v1.Health/Check`.
    Health,
    /// Validate of these tokens, picked round-robin or at random.
    Validate {
        tokens: Arc<Vec<String>>,
        pick: Pick,
    },
    /// Envoy's Check of a request bearing one of these tokens, round-robin.
    Check { tokens: Arc<Vec<String>> },
    /// Validate of each token once, then exhausted (cold sessions).
    ValidateOnce {
        tokens: Vec<String>,
        next: AtomicUsize,
    },
    /// CreateSession for a new user each time.
    Create { prefix: String, seq: AtomicU64 },
    /// Refresh of the worker's own token chain.
    Refresh,
    /// RevokeUserSessions of each of these users once, then exhausted.
    RevokeUsers {
        users: Vec<String>,
        next: AtomicUsize,
    },
    /// Validate, refresh, create and revoke-user, weighted.
    Mix {
        tokens: Arc<Vec<String>>,
        mix: Mix,
        prefix: String,
        seq: AtomicU64,
    },
}

/// The outcome of one call.
pub enum Step {
    /// A call of kind `kind` (an index into [`Work::kinds`]) was answered.
    Done {
        kind: usize,
        result: Result<(), String>,
    },
    /// The work has no more calls to make.
    Exhausted,
}

/// What one worker keeps between calls.
#[derive(Default)]
pub struct WorkerState {
    /// The refresh token to present next (refresh and mix).
    refresh_token: String,
    /// Users this worker created in the mix, for its revokes.
    created_users: VecDeque<String>,
    rng: u64,
    cursor: usize,
}

impl WorkerState {
    /// SplitMix64: fast and good enough to spread picks.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Work {
    pub fn validate(tokens: Vec<String>, pick: Pick) -> Self {
        Self::Validate {
            tokens: Arc::new(tokens),
            pick,
        }
    }

    pub fn validate_once(tokens: Vec<String>) -> Self {
        Self::ValidateOnce {
            tokens,
            next: AtomicUsize::new(0),
        }
    }

    pub fn create(prefix: String) -> Self {
        Self::Create {
            prefix,
            seq: AtomicU64::new(0),
        }
    }

    pub fn mix(tokens: Vec<String>, mix: Mix, prefix: String) -> Self {
        Self::Mix {
            tokens: Arc::new(tokens),
            mix,
            prefix,
            seq: AtomicU64::new(0),
        }
    }

    /// Names of the kinds of call this work makes.
    pub fn kinds(&self) -> &'static [&'static str] {
        match self {
            Self::Health => &["health"],
            Self::Validate { .. } | Self::ValidateOnce { .. } => &["validate"],
            Self::Check { .. } => &["check"],
            Self::Create { .. } => &["create"],
            Self::Refresh => &["refresh"],
            Self::RevokeUsers { .. } => &["revoke-user"],
            Self::Mix { .. } => &Mix::KINDS,
        }
    }

    fn needs_refresh_chains(&self) -> bool {
        match self {
            Self::Refresh => true,
            Self::Mix { mix, .. } => mix.weights[1] > 0,
            _ => false,
        }
    }

    /// Makes one call as worker `worker`.
    pub async fn call(&self, clients: &Clients, worker: usize, state: &mut WorkerState) -> Step {
        match self {
            Self::Health => {
                let result = clients
                    .health(worker)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(drop)
                    .map_err(|status| status_text(&status));
                Step::Done { kind: 0, result }
            }
            Self::Validate { tokens, pick } => {
                let index = match pick {
                    Pick::RoundRobin => {
                        state.cursor = state.cursor.wrapping_add(1);
                        state.cursor
                    }
                    Pick::Random => state.next_random() as usize,
                };
                match tokens.get(index % tokens.len().max(1)) {
                    Some(token) => Step::Done {
                        kind: 0,
                        result: validate(clients, worker, token).await,
                    },
                    None => Step::Exhausted,
                }
            }
            Self::Check { tokens } => {
                state.cursor = state.cursor.wrapping_add(1);
                match tokens.get(state.cursor % tokens.len().max(1)) {
                    Some(token) => Step::Done {
                        kind: 0,
                        result: check(clients, worker, token).await,
                    },
                    None => Step::Exhausted,
                }
            }
            Self::ValidateOnce { tokens, next } => {
                match tokens.get(next.fetch_add(1, Ordering::Relaxed)) {
                    Some(token) => Step::Done {
                        kind: 0,
                        result: validate(clients, worker, token).await,
                    },
                    None => Step::Exhausted,
                }
            }
            Self::Create { prefix, seq } => {
                let user = format!("{prefix}-{}", seq.fetch_add(1, Ordering::Relaxed));
                Step::Done {
                    kind: 0,
                    result: create(clients, worker, &user, "device-1").await.map(drop),
                }
            }
            Self::Refresh => Step::Done {
                kind: 0,
                result: refresh(clients, worker, state).await,
            },
            Self::RevokeUsers { users, next } => {
                match users.get(next.fetch_add(1, Ordering::Relaxed)) {
                    Some(user) => Step::Done {
                        kind: 0,
                        result: revoke_user(clients, worker, user).await,
                    },
                    None => Step::Exhausted,
                }
            }
            Self::Mix {
                tokens,
                mix,
                prefix,
                seq,
            } => {
                let kind = mix.pick(state.next_random());
                let result = match kind {
                    0 => {
                        let index = state.next_random() as usize % tokens.len().max(1);
                        match tokens.get(index) {
                            Some(token) => validate(clients, worker, token).await,
                            None => Err("no sessions to validate".into()),
                        }
                    }
                    1 => refresh(clients, worker, state).await,
                    2 => {
                        let user = format!("{prefix}-{}", seq.fetch_add(1, Ordering::Relaxed));
                        let result = create(clients, worker, &user, "device-1").await.map(drop);
                        if result.is_ok() {
                            state.created_users.push_back(user);
                        }
                        result
                    }
                    _ => {
                        // Sign out a user this worker created; with none yet, a user with none.
                        let user = state
                            .created_users
                            .pop_front()
                            .unwrap_or_else(|| format!("{prefix}-nobody-{worker}"));
                        revoke_user(clients, worker, &user).await
                    }
                };
                Step::Done { kind, result }
            }
        }
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn validate(clients: &Clients, worker: usize, token: &str) -> Result<(), String> {
    let response = clients
        .session(worker)
        .validate(pb::ValidateRequest {
            access_token: token.to_owned(),
        })
        .await
        .map_err(|status| status_text(&status))?
        .into_inner();
    if response.valid {
        Ok(())
    } else {
        Err(format!("valid=false, {:?}", response.status()))
    }
}

/// Envoy's Check of a request bearing `token`, shaped as Envoy sends one for a browser's request.
async fn check(clients: &Clients, worker: usize, token: &str) -> Result<(), String> {
    use sessiond::gateway::envoy::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context, check_response::HttpResponse,
    };
    let headers = [
        (":authority", "shop.example"),
        (":method", "GET"),
        (":path", "/orders?page=2"),
        ("accept", "text/html"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) sessiond-bench",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .chain([("authorization".to_owned(), format!("Bearer {token}"))])
    .collect();
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders?page=2".into(),
                    host: "shop.example".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = clients
        .authorization(worker)
        .check(request)
        .await
        .map_err(|status| status_text(&status))?
        .into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => Ok(()),
        other => Err(format!("not allowed: {other:?}")),
    }
}

async fn create(
    clients: &Clients,
    worker: usize,
    user: &str,
    device: &str,
) -> Result<pb::TokenPair, String> {
    clients
        .session(worker)
        .create_session(pb::CreateSessionRequest {
            user_id: user.to_owned(),
            device: Some(pb::Device {
                device_id: device.to_owned(),
                name: "bench device".into(),
                user_agent: "sessiond-bench/1.0".into(),
                ip_address: "203.0.113.7".into(),
            }),
            metadata: [("app".to_owned(), "bench".to_owned())].into(),
            lifetime: None,
        })
        .await
        .map_err(|status| status_text(&status))?
        .into_inner()
        .tokens
        .ok_or_else(|| "CreateSession returned no tokens".to_owned())
}

/// Rotates the worker's chain; after a failure the worker starts a new chain (not timed apart).
async fn refresh(clients: &Clients, worker: usize, state: &mut WorkerState) -> Result<(), String> {
    let answer = clients
        .session(worker)
        .refresh(pb::RefreshRequest {
            refresh_token: state.refresh_token.clone(),
        })
        .await;
    match answer.map(tonic::Response::into_inner) {
        Ok(pb::RefreshResponse {
            tokens: Some(tokens),
            ..
        }) => {
            state.refresh_token = tokens.refresh_token;
            Ok(())
        }
        Ok(_) => Err("Refresh returned no tokens".into()),
        Err(status) => {
            let user = format!("bench-rechain-{}-{worker}", uuid::Uuid::now_v7().simple());
            if let Ok(tokens) = create(clients, worker, &user, "").await {
                state.refresh_token = tokens.refresh_token;
            }
            Err(status_text(&status))
        }
    }
}

async fn revoke_user(clients: &Clients, worker: usize, user: &str) -> Result<(), String> {
    clients
        .session(worker)
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: user.to_owned(),
            except_session_id: String::new(),
            reason: "bench".into(),
        })
        .await
        .map(drop)
        .map_err(|status| status_text(&status))
}

/// One state per worker; for refresh work, each with a session of its own to rotate.
pub async fn worker_states(
    clients: &Clients,
    work: &Work,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<WorkerState>> {
    let seed = u64::from(uuid::Uuid::now_v7().as_fields().1) << 32 ^ 0x5EED;
    let mut states: Vec<WorkerState> = (0..concurrency)
        .map(|worker| WorkerState {
            rng: seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            cursor: worker,
            ..WorkerState::default()
        })
        .collect();
    if work.needs_refresh_chains() {
        let pairs = create_sessions(
            clients,
            &format!("{prefix}-chain"),
            concurrency,
            1,
            concurrency,
        )
        .await?;
        for (state, pair) in states.iter_mut().zip(pairs) {
            state.refresh_token = pair.refresh_token;
        }
    }
    Ok(states)
}

/// Creates `count` sessions (each for its own user) and returns their access tokens.
pub async fn create_tokens(
    clients: &Clients,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let pairs = create_sessions(clients, prefix, count, 1, concurrency).await?;
    eprintln!("   created {count} sessions in {:.1?}", started.elapsed());
    Ok(pairs.into_iter().map(|pair| pair.access_token).collect())
}

/// Creates `users` users holding `per_user` sessions each, `concurrency` calls at a time.
async fn create_sessions(
    clients: &Clients,
    prefix: &str,
    users: usize,
    per_user: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<pb::TokenPair>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut calls = JoinSet::new();
    for user in 0..users {
        for device in 0..per_user {
            let permit = Arc::clone(&permits).acquire_owned().await?;
            let clients = clients.clone();
            let user_id = format!("{prefix}-{user}");
            calls.spawn(async move {
                let result = create(
                    &clients,
                    user + device,
                    &user_id,
                    &format!("device-{device}"),
                )
                .await;
                drop(permit);
                result
            });
        }
    }
    let mut pairs = Vec::with_capacity(users * per_user);
    while let Some(result) = calls.join_next().await {
        pairs.push(
            result?
                .map_err(anyhow::Error::msg)
                .context("creating sessions to work on")?,
        );
    }
    Ok(pairs)
}

/// revoke-user: rounds of (make `concurrency * 2` users with `per_user` sessions each, untimed;
/// then sign them all out, `concurrency` at a time, timed) until `duration` of signing out has been
/// measured, or three times `duration` has passed in all.
pub async fn revoke_user_rounds(
    clients: &Clients,
    prefix: &str,
    per_user: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut total = Outcome::empty(1)?;
    let users_per_round = (concurrency * 2).max(16);
    let mut round = 0usize;
    while total.elapsed < duration && (round == 0 || started.elapsed() < duration * 3) {
        let round_prefix = format!("{prefix}-r{round}");
        create_sessions(
            clients,
            &round_prefix,
            users_per_round,
            per_user,
            concurrency,
        )
        .await?;
        let work = Arc::new(Work::RevokeUsers {
            users: (0..users_per_round)
                .map(|user| format!("{round_prefix}-{user}"))
                .collect(),
            next: AtomicUsize::new(0),
        });
        let states = worker_states(clients, &work, prefix, concurrency).await?;
        let (outcome, _) = runner::drive(
            clients,
            &work,
            states,
            concurrency,
            Duration::from_secs(3600),
            None,
        )
        .await?;
        total.absorb(&outcome)?;
        round += 1;
    }
    if total
        .kinds
        .first()
        .is_none_or(|tally| tally.ok + tally.errors == 0)
    {
        bail!("no revoke was measured");
    }
    eprintln!(
        "   revoke-user: {round} rounds of {users_per_round} users x {per_user} sessions; {:.2?} of revoking measured in {:.1?}",
        total.elapsed,
        started.elapsed()
    );
    Ok(total)
}
