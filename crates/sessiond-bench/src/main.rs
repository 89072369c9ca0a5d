//! `sessiond-bench`: a load generator for sessiond over real gRPC.
//!
//! For each scenario it reports throughput, latency percentiles (HdrHistogram) and errors, next to
//! the throughput of the no-op RPC `grpc.health.v1.Health/Check` measured in the same run on the
//! same server at the same concurrency. See `crates/sessiond-bench/README.md`.
//!
//! ```sh
//! cargo run --release -p sessiond-bench -- --scenario validate-warm --scenario create
//! cargo run --release -p sessiond-bench -- --scenario validate-warm --rate 5000
//! ```

mod cold;
mod noise;
mod report;
mod runner;
mod work;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use tokio::time::Instant;

// The load generator shares the machine with the server it measures: the less it spends per
// call, the more the figures say about the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::{
    report::{Row, print_table},
    runner::{Clients, Load, Outcome},
    work::{Mix, Pick, Work},
};

/// What to load sessiond with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Validate of one warm token, over and over.
    ValidateWarm,
    /// Envoy's Check (`envoy.service.auth.v3.Authorization/Check`) of a request bearing one warm
    /// token: the gateway's path, to set beside validate-warm.
    CheckWarm,
    /// Validate spread over `--sessions` sessions.
    ValidateSpread,
    /// validate-spread, labelled for a server started with SESSIOND_LOCAL_CACHE=off.
    ValidateNoLocalCache,
    /// Validate of tokens minted for sessions sampled from `--database-url`, each used once, so
    /// every call misses every cache (needs `--database-url` and `--signing-key-file`).
    ValidateCold,
    /// CreateSession, each call for a new user.
    Create,
    /// Refresh: each worker rotates its own session's token chain.
    Refresh,
    /// RevokeUserSessions of a fresh user holding `--sessions-per-user` sessions.
    RevokeUser,
    /// A mix of validate, refresh, create and revoke-user (`--mix`).
    Mix,
    /// validate-warm, validate-spread, create, refresh, revoke-user, mix, and validate-cold when
    /// `--database-url` and `--signing-key-file` are given.
    All,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::ValidateWarm => "validate-warm",
            Self::CheckWarm => "check-warm",
            Self::ValidateSpread => "validate-spread",
            Self::ValidateNoLocalCache => "validate-no-local-cache",
            Self::ValidateCold => "validate-cold",
            Self::Create => "create",
            Self::Refresh => "refresh",
            Self::RevokeUser => "revoke-user",
            Self::Mix => "mix",
            Self::All => "all",
        }
    }
}

/// Load generator for sessiond: throughput and latency per scenario, against the no-op
/// Health/Check measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "sessiond-bench", version)]
struct Args {
    /// sessiond's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,

    /// Scenario to run; repeat the flag for several, in order.
    #[arg(long = "scenario", value_enum, default_values_t = [Scenario::All])]
    scenarios: Vec<Scenario>,

    /// Requests in flight (closed loop: workers each waiting for their answer; open loop: the most
    /// calls outstanding at once).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,

    /// How long each measured run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Unmeasured load before each measured run.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// HTTP/2 connections (tonic channels) to spread the workers over.
    #[arg(long, default_value_t = 2)]
    connections: usize,

    /// Sessions created for validate-spread, validate-no-local-cache and mix.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,

    /// How validate-spread picks the next session.
    #[arg(long, value_enum, default_value_t = Pick::Random)]
    pick: Pick,

    /// Sessions the user holds when revoke-user signs it out.
    #[arg(long, default_value_t = 10)]
    sessions_per_user: usize,

    /// Weights of the mix scenario.
    #[arg(long, default_value = "validate=90,refresh=5,create=4,revoke=1", value_parser = Mix::parse)]
    mix: Mix,

    /// Open loop: send this many requests per second on a fixed schedule, timing each from its
    /// scheduled send (no coordinated omission), instead of the closed loop.
    #[arg(long, conflicts_with = "rate_of_peak")]
    rate: Option<f64>,

    /// After each closed-loop run, run the scenario again open-loop at this fraction of the
    /// throughput just measured (0.5: latency at half the peak).
    #[arg(long)]
    rate_of_peak: Option<f64>,

    /// Skip the Health/Check baseline.
    #[arg(long)]
    no_baseline: bool,

    /// Closed loop: split each scenario's run into this many slices, each after a slice of the
    /// no-op, and take its `x noop` ratio from those paired slices (steadier on a noisy machine).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,

    /// Also write the results as JSON to this file ("-": standard output, after the table).
    #[arg(long)]
    json: Option<PathBuf>,

    /// How long to wait for sessiond to answer SERVING before giving up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait_ready: Duration,

    /// Only wait until sessiond answers SERVING, then exit.
    #[arg(long)]
    ready_only: bool,

    /// Create one session, print its access token, and exit (for HTTP load tools such as wrk,
    /// which send it through a proxy: `crates/sessiond-bench/gateways.sh`).
    #[arg(long, conflicts_with = "ready_only")]
    print_token: bool,

    /// Worker threads of the client's runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,

    /// validate-cold: the Postgres database sessiond serves from, to sample sessions from.
    #[arg(long)]
    database_url: Option<String>,

    /// validate-cold: the Ed25519 PEM key sessiond signs with (its SESSIOND_SIGNING_KEY_FILE).
    #[arg(long)]
    signing_key_file: Option<PathBuf>,

    /// validate-cold: sessiond's SESSIOND_ISSUER.
    #[arg(long, default_value = "sessiond")]
    issuer: String,

    /// validate-cold: sessiond's SESSIOND_AUDIENCE.
    #[arg(long, default_value = "sessiond")]
    audience: String,

    /// validate-cold: how many sessions to sample (each is validated at most once).
    #[arg(long, default_value_t = 50_000)]
    cold_sample: usize,

    /// Also send this many Refresh calls per second of random, well-formed refresh tokens, from
    /// the start of the first scenario to the end of the last, on a connection of their own.
    #[arg(long)]
    refresh_noise: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    if args.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0)
        || args.rate_of_peak.is_some_and(|f| f.is_nan() || f <= 0.0)
    {
        bail!("--rate and --rate-of-peak must be positive");
    }
    if args
        .refresh_noise
        .is_some_and(|rate| rate.is_nan() || rate <= 0.0)
    {
        bail!("--refresh-noise must be positive");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let clients = Clients::connect(&args.addr, args.connections, args.wait_ready).await?;
    if args.ready_only {
        println!("{} is SERVING", args.addr);
        return Ok(());
    }
    if args.print_token {
        let prefix = format!("bench-token-{}", std::process::id());
        for token in work::create_tokens(&clients, &prefix, 1, 1).await? {
            println!("{token}");
        }
        return Ok(());
    }
    let scenarios = expand(&args)?;
    let command = command_line();
    println!("# {command}");
    println!(
        "# addr={} concurrency={} connections={} duration={} warmup={} mode={} client-threads={}",
        args.addr,
        args.concurrency,
        args.connections,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup),
        match (args.rate, args.rate_of_peak) {
            (Some(rate), _) => format!("open-loop {rate} req/s"),
            (None, Some(fraction)) => format!("closed, then open-loop at {fraction} x peak"),
            (None, None) => "closed-loop".to_owned(),
        },
        args.threads.map_or_else(
            || format!(
                "{} (cores)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            |n| n.to_string()
        ),
    );

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut rows = Vec::new();
    let mut noop = None;
    if !args.no_baseline {
        let work = Arc::new(Work::Health);
        let outcome = measure(&args, &clients, &work, args.concurrency, args.rate).await?;
        noop = Some(outcome.throughput());
        rows.push(Row::new(
            "health-noop (Health/Check)",
            mode(&args, args.rate),
            &outcome,
            None,
        ));
    }

    let noise = match args.refresh_noise {
        Some(rate) => {
            let own = Clients::connect(&args.addr, 1, args.wait_ready).await?;
            println!("# refresh-noise: {rate} random-token Refresh/s during the scenarios");
            Some(noise::RefreshNoise::start(own.session(0), rate))
        }
        None => None,
    };
    for scenario in scenarios {
        eprintln!("## {}: preparing", scenario.name());
        let rows_before = rows.len();
        let result = run_scenario(&args, &clients, scenario, &run_id, noop, &mut rows).await;
        if let Err(error) = result {
            eprintln!("## {}: failed: {error:#}", scenario.name());
            rows.truncate(rows_before);
            rows.push(Row::failed(scenario.name(), &format!("{error:#}")));
        }
    }

    if let Some(noise) = noise {
        println!("# refresh-noise answers: {:?}", noise.stop().await);
    }
    println!();
    print_table(&rows);
    if let Some(path) = &args.json {
        report::write_json(
            path,
            &command,
            &args.addr,
            args.concurrency,
            args.connections,
            noop,
            &rows,
        )?;
    }
    Ok(())
}

async fn run_scenario(
    args: &Args,
    clients: &Clients,
    scenario: Scenario,
    run_id: &str,
    noop: Option<f64>,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let name = scenario.name();
    let prefix = format!("bench-{run_id}-{name}");
    if scenario == Scenario::RevokeUser {
        let outcome = work::revoke_user_rounds(
            clients,
            &prefix,
            args.sessions_per_user,
            args.concurrency,
            args.duration,
        )
        .await?;
        let label = format!("{name} (K={})", args.sessions_per_user);
        rows.push(Row::new(
            &label,
            format!("rounds c={}", args.concurrency),
            &outcome,
            noop,
        ));
        return Ok(());
    }
    let work = Arc::new(match scenario {
        Scenario::ValidateWarm => Work::validate(
            work::create_tokens(clients, &prefix, 1, args.concurrency).await?,
            Pick::RoundRobin,
        ),
        Scenario::CheckWarm => Work::Check {
            tokens: Arc::new(work::create_tokens(clients, &prefix, 1, args.concurrency).await?),
        },
        Scenario::ValidateSpread | Scenario::ValidateNoLocalCache => Work::validate(
            work::create_tokens(clients, &prefix, args.sessions, args.concurrency).await?,
            args.pick,
        ),
        Scenario::ValidateCold => {
            let (Some(url), Some(key)) = (&args.database_url, &args.signing_key_file) else {
                bail!("validate-cold needs --database-url and --signing-key-file");
            };
            let started = Instant::now();
            let tokens =
                cold::mint_tokens(url, key, &args.issuer, &args.audience, args.cold_sample).await?;
            eprintln!(
                "## validate-cold: minted {} tokens for sampled sessions in {:.1?}",
                tokens.len(),
                started.elapsed()
            );
            Work::validate_once(tokens)
        }
        Scenario::Create => Work::create(prefix.clone()),
        Scenario::Refresh => Work::Refresh,
        Scenario::Mix => Work::mix(
            work::create_tokens(clients, &prefix, args.sessions, args.concurrency).await?,
            args.mix,
            // Not `prefix`: a new user named like a pool user would replace its session.
            format!("{prefix}-new"),
        ),
        Scenario::RevokeUser | Scenario::All => bail!("unreachable scenario {name}"),
    });
    let label = match scenario {
        Scenario::ValidateSpread | Scenario::ValidateNoLocalCache => {
            format!("{name} (N={}, {})", args.sessions, args.pick.name())
        }
        Scenario::Mix => format!("{name} ({})", args.mix),
        _ => name.to_owned(),
    };
    let (mut outcome, paired_noop) = measure_with(args, clients, &work, &prefix, args.rate).await?;
    let noop = paired_noop.or(noop);
    rows.push(Row::new(&label, mode(args, args.rate), &outcome, noop));
    push_kinds(rows, &work, &outcome, noop);
    if let Some(fraction) = args.rate_of_peak {
        let rate = outcome.throughput() * fraction;
        eprintln!(
            "## {name}: open loop at {fraction} x {:.0} = {rate:.0} req/s",
            outcome.throughput()
        );
        outcome = measure_with(args, clients, &work, &prefix, Some(rate))
            .await?
            .0;
        rows.push(Row::new(
            &format!("{label} @ {fraction} x peak"),
            mode(args, Some(rate)),
            &outcome,
            noop,
        ));
        push_kinds(rows, &work, &outcome, noop);
        if !args.no_baseline {
            // The floor under that latency: the no-op at the same rate, on the same machine.
            let health = Arc::new(Work::Health);
            let floor = measure(args, clients, &health, args.concurrency, Some(rate)).await?;
            rows.push(Row::new(
                &format!("health-noop @ {fraction} x {name} peak"),
                mode(args, Some(rate)),
                &floor,
                None,
            ));
        }
    }
    Ok(())
}

/// Sub-rows for a scenario of several kinds of call (mix).
fn push_kinds(rows: &mut Vec<Row>, work: &Work, outcome: &Outcome, noop: Option<f64>) {
    let kinds = work.kinds();
    if kinds.len() > 1 {
        for (index, kind) in kinds.iter().enumerate() {
            if let Some(part) = outcome.kind(index) {
                rows.push(Row::new(&format!("  {kind}"), String::new(), &part, noop));
            }
        }
    }
}

/// Prepares per-worker state (refresh chains) and measures `work`; closed-loop, also the no-op in
/// slices paired with it, whose throughput it returns.
async fn measure_with(
    args: &Args,
    clients: &Clients,
    work: &Arc<Work>,
    prefix: &str,
    rate: Option<f64>,
) -> anyhow::Result<(Outcome, Option<f64>)> {
    let states = work::worker_states(clients, work, prefix, args.concurrency).await?;
    let load = Load {
        concurrency: args.concurrency,
        warmup: args.warmup,
        duration: args.duration,
        rate,
    };
    if args.no_baseline || rate.is_some() {
        return Ok((runner::run(clients, work, states, &load).await?, None));
    }
    let baseline = Arc::new(Work::Health);
    let (outcome, noop) =
        runner::run_paired(clients, work, states, &baseline, &load, args.rounds).await?;
    Ok((outcome, Some(noop.throughput())))
}

async fn measure(
    args: &Args,
    clients: &Clients,
    work: &Arc<Work>,
    concurrency: usize,
    rate: Option<f64>,
) -> anyhow::Result<Outcome> {
    let load = Load {
        concurrency,
        warmup: args.warmup,
        duration: args.duration,
        rate,
    };
    let states = work::worker_states(clients, work, "bench-noop", concurrency).await?;
    runner::run(clients, work, states, &load).await
}

fn mode(args: &Args, rate: Option<f64>) -> String {
    match rate {
        Some(rate) => format!("open {rate:.0}/s"),
        None => format!("closed c={}", args.concurrency),
    }
}

/// The scenarios to run, with `all` expanded.
fn expand(args: &Args) -> anyhow::Result<Vec<Scenario>> {
    let cold_ready = args.database_url.is_some() && args.signing_key_file.is_some();
    let mut out = Vec::new();
    for &scenario in &args.scenarios {
        if scenario == Scenario::All {
            out.extend([
                Scenario::ValidateWarm,
                Scenario::ValidateSpread,
                Scenario::Create,
                Scenario::Refresh,
                Scenario::RevokeUser,
                Scenario::Mix,
            ]);
            if cold_ready {
                out.push(Scenario::ValidateCold);
            }
        } else {
            out.push(scenario);
        }
    }
    if out.is_empty() {
        bail!("no scenario to run");
    }
    Ok(out)
}

/// The command line, quoted so it can be pasted back into a shell.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
