//! Drives a [`Work`] closed-loop (each worker sends its next call when the previous one answers) or
//! open-loop (calls are due on a fixed schedule and timed from when they were due, so a slow
//! server cannot hide its stalls by slowing the sender: no coordinated omission).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use sessiond::api::pb::session_service_client::SessionServiceClient;
use sessiond::gateway::envoy::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tokio::sync::{Mutex, mpsc};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::work::{Step, Work, WorkerState};

/// Largest latency the histograms hold, in microseconds; longer ones count as this.
const MAX_LATENCY_US: u64 = 120_000_000;

/// One client per HTTP/2 connection; worker `i` uses connection `i % n`.
#[derive(Clone)]
pub struct Clients {
    sessions: Vec<SessionServiceClient<Channel>>,
    health: Vec<HealthClient<Channel>>,
    authorization: Vec<AuthorizationClient<Channel>>,
}

impl Clients {
    /// Opens `connections` channels to `addr` and waits until its health says SERVING.
    pub async fn connect(addr: &str, connections: usize, wait: Duration) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("--addr {addr} is not a URL"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + wait;
        let mut channels = Vec::with_capacity(connections);
        while channels.len() < connections {
            match endpoint.connect().await {
                Ok(channel) => channels.push(channel),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    return Err(
                        anyhow::Error::new(error).context(format!("cannot connect to {addr}"))
                    );
                }
            }
        }
        let clients = Self {
            sessions: channels
                .iter()
                .cloned()
                .map(SessionServiceClient::new)
                .collect(),
            authorization: channels
                .iter()
                .cloned()
                .map(AuthorizationClient::new)
                .collect(),
            health: channels.into_iter().map(HealthClient::new).collect(),
        };
        loop {
            let answer = clients
                .health(0)
                .check(HealthCheckRequest {
                    service: "sessiond.v1.SessionService".into(),
                })
                .await;
            match answer {
                Ok(response) if response.get_ref().status() == ServingStatus::Serving => {
                    return Ok(clients);
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(response) => bail!("{addr} is {:?}, not SERVING", response.get_ref().status()),
                Err(status) => bail!("{addr} health check failed: {status}"),
            }
        }
    }

    pub fn session(&self, worker: usize) -> SessionServiceClient<Channel> {
        self.sessions[worker % self.sessions.len()].clone()
    }

    pub fn health(&self, worker: usize) -> HealthClient<Channel> {
        self.health[worker % self.health.len()].clone()
    }

    /// Envoy's `Authorization` service, on the same channels.
    pub fn authorization(&self, worker: usize) -> AuthorizationClient<Channel> {
        self.authorization[worker % self.authorization.len()].clone()
    }
}

/// How to drive a run.
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `Some`: open loop at this many calls per second.
    pub rate: Option<f64>,
}

/// What one kind of call did in a run.
#[derive(Clone)]
pub struct Tally {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            ok: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn record(&mut self, latency: Duration, result: Result<(), String>) {
        self.latency.saturating_record(
            u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        match result {
            Ok(()) => self.ok += 1,
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }
}

/// The result of a measured run: one tally per kind of call, and the wall time the calls took.
pub struct Outcome {
    pub kinds: Vec<Tally>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn empty(kinds: usize) -> anyhow::Result<Self> {
        Ok(Self {
            kinds: (0..kinds)
                .map(|_| Tally::new())
                .collect::<anyhow::Result<_>>()?,
            elapsed: Duration::ZERO,
        })
    }

    /// All kinds together.
    pub fn total(&self) -> anyhow::Result<Tally> {
        let mut total = Tally::new()?;
        for tally in &self.kinds {
            total.merge(tally)?;
        }
        Ok(total)
    }

    /// One kind alone, with the run's wall time.
    pub fn kind(&self, index: usize) -> Option<Self> {
        Some(Self {
            kinds: vec![self.kinds.get(index)?.clone()],
            elapsed: self.elapsed,
        })
    }

    /// Calls answered (successfully or not) per second of wall time.
    pub fn throughput(&self) -> f64 {
        let calls: u64 = self.kinds.iter().map(|t| t.ok + t.errors).sum();
        if self.elapsed.is_zero() {
            0.0
        } else {
            calls as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Adds another run of the same work (revoke-user's rounds).
    pub fn absorb(&mut self, other: &Self) -> anyhow::Result<()> {
        for (mine, theirs) in self.kinds.iter_mut().zip(&other.kinds) {
            mine.merge(theirs)?;
        }
        self.elapsed += other.elapsed;
        Ok(())
    }
}

/// Warms up, then measures `work` under `load`.
pub async fn run(
    clients: &Clients,
    work: &Arc<Work>,
    states: Vec<WorkerState>,
    load: &Load,
) -> anyhow::Result<Outcome> {
    let states = if load.warmup.is_zero() {
        states
    } else {
        drive(
            clients,
            work,
            states,
            load.concurrency,
            load.warmup,
            load.rate,
        )
        .await?
        .1
    };
    Ok(drive(
        clients,
        work,
        states,
        load.concurrency,
        load.duration,
        load.rate,
    )
    .await?
    .0)
}

/// Warms up, then measures `work` and the no-op `baseline` closed-loop in `rounds` alternating
/// slices (baseline first) that together last `load.duration` each. On a shared machine whose
/// speed drifts from second to second, the two then see the same machine, and their ratio is
/// steadier than that of two runs one after the other. Returns (work, baseline).
pub async fn run_paired(
    clients: &Clients,
    work: &Arc<Work>,
    states: Vec<WorkerState>,
    baseline: &Arc<Work>,
    load: &Load,
    rounds: u32,
) -> anyhow::Result<(Outcome, Outcome)> {
    let concurrency = load.concurrency;
    let mut states = drive(clients, work, states, concurrency, load.warmup, None)
        .await?
        .1;
    let slice = load.duration / rounds.max(1);
    let mut measured = Outcome::empty(work.kinds().len())?;
    let mut base = Outcome::empty(baseline.kinds().len())?;
    let mut base_states = Vec::new();
    for _ in 0..rounds.max(1) {
        let (outcome, next) =
            drive(clients, baseline, base_states, concurrency, slice, None).await?;
        base.absorb(&outcome)?;
        base_states = next;
        let (outcome, next) = drive(clients, work, states, concurrency, slice, None).await?;
        measured.absorb(&outcome)?;
        states = next;
    }
    Ok((measured, base))
}

/// Runs `work` until `duration` has passed or the work is exhausted, and hands the worker states
/// back for the next run.
pub async fn drive(
    clients: &Clients,
    work: &Arc<Work>,
    states: Vec<WorkerState>,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<(Outcome, Vec<WorkerState>)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut states = states;
    states.resize_with(concurrency, WorkerState::default);

    let ticks = rate.map(|rate| spawn_ticker(rate, start, deadline));
    let mut workers = Vec::with_capacity(concurrency);
    for (index, state) in states.into_iter().enumerate() {
        let work = Arc::clone(work);
        let clients = clients.clone();
        let ticks = ticks.clone();
        let kinds = work.kinds().len();
        workers.push(tokio::spawn(async move {
            let mut tallies = (0..kinds)
                .map(|_| Tally::new())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut state = state;
            loop {
                // When this call was due: now (closed loop), or its tick (open loop).
                let due = match &ticks {
                    None if Instant::now() >= deadline => break,
                    None => Instant::now(),
                    Some(ticks) => match ticks.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                };
                match work.call(&clients, index, &mut state).await {
                    Step::Exhausted => break,
                    Step::Done { kind, result } => {
                        if let Some(tally) = tallies.get_mut(kind) {
                            tally.record(due.elapsed(), result);
                        }
                    }
                }
            }
            anyhow::Ok((tallies, state))
        }));
    }

    let mut outcome = Outcome::empty(work.kinds().len())?;
    let mut states = Vec::with_capacity(concurrency);
    for worker in workers {
        let (tallies, state) = worker.await??;
        for (mine, theirs) in outcome.kinds.iter_mut().zip(&tallies) {
            mine.merge(theirs)?;
        }
        states.push(state);
    }
    outcome.elapsed = start.elapsed();
    Ok((outcome, states))
}

type Ticks = Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// A thread that makes one call due every `1/rate` seconds from `start` until `deadline`. A plain
/// thread sleeps with microsecond precision, where tokio's timer wheel has a millisecond's, which
/// would add up to a millisecond of made-up latency to each call.
fn spawn_ticker(rate: f64, start: Instant, deadline: Instant) -> Ticks {
    let (sender, receiver) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate);
    std::thread::spawn(move || {
        let mut n: u32 = 0;
        loop {
            let due = start + interval * n;
            if due >= deadline {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if sender.send(due).is_err() {
                break;
            }
            n = n.saturating_add(1);
        }
    });
    Arc::new(Mutex::new(receiver))
}
