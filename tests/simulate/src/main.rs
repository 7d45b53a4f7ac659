//! `scripts/simulate`: a day (or more) of the real engine at a platform's scale.
//! `tick::Engine`, with its load, plan, execute, record and lease code unchanged, runs on
//! a virtual clock ([`timeline`]) against a model of AWS ([`aws`]: latency, the published
//! request quotas answered with throttling, injected faults) and an in-memory store
//! ([`store`]), on several nodes that tick on one schedule. Teams are registered all at
//! once at the start. It prints a summary on stderr and, as its last line on stdout, one
//! JSON object of figures ([`report`]).

mod aws;
mod chance;
mod figures;
mod memory;
mod quota;
mod recorder;
mod report;
mod sim;
mod store;
mod timeline;
mod world;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use concourse_sts::settings::{Settings, Variables};
use concourse_sts::sink::Sink;
use concourse_sts::store::KeyValue;
use concourse_sts::timing::MIN_REWRITE_INTERVAL;

use aws::{AwsModel, Network, Owned, Ownership, Quotas, Service};
use chance::Chance;
use recorder::Recorder;
use sim::{Schedule, Sim};
use store::SharedStore;
use timeline::Timeline;

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

/// AWS's shortest session.
const SHORTEST_SESSION: u32 = 900;

#[derive(Parser)]
#[command(about = "A simulated day of the concourse-sts engine against a model of AWS")]
struct Args {
    /// Accounts registered at the start.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Teams they are spread over.
    #[arg(long, default_value_t = 2_000)]
    teams: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Nodes ticking on the same schedule, sharing the store.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency of every AWS request, there and back, in ms.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// The share of AWS requests that fail on the way.
    #[arg(long, default_value_t = 0.01)]
    fault_rate: f64,
    /// The schedule's period in seconds (spin.toml's `0 */5 * * * *`: 300).
    #[arg(long, default_value_t = 300)]
    period_s: u64,
    /// An application variable, as `SPIN_VARIABLE_*` would set it (repeatable), e.g.
    /// `--var secret_sink=ssm`.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    variables: Vec<String>,
}

/// The application variables of the simulated deployment.
struct SimVariables(HashMap<String, String>);

impl Variables for SimVariables {
    fn get(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.0.get(name).filter(|v| !v.is_empty()).cloned())
    }
}

/// The settings every node reads: static rotator keys and an endpoint of the model's,
/// the component's defaults for the rest, and `--var`s over them.
fn settings(pairs: &[String]) -> anyhow::Result<Settings> {
    let mut variables: HashMap<String, String> = [
        ("aws_access_key_id", "AKIASIMULATEDROTATOR"),
        ("aws_secret_access_key", "simulated-rotator-secret"),
        ("aws_endpoint_url", "https://aws.simulated"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--var {pair}: expected NAME=VALUE"))?;
        variables.insert(name.to_owned(), value.to_owned());
    }
    Settings::from_variables(&SimVariables(variables))
}

/// Every secret of every account, in every sink, with its owner. The model is AWS's:
/// Vault is not simulated.
fn owned_secrets(settings: &Settings, accounts: &[world::Account]) -> anyhow::Result<Ownership> {
    let rules = &settings.rules;
    let sinks = rules.sink.sinks().iter().map(|sink| match sink {
        Sink::SecretsManager => Ok(Service::SecretsManager),
        Sink::ParameterStore => Ok(Service::ParameterStore),
        Sink::Vault => anyhow::bail!(
            "the simulator models AWS only: secret_sink {} lists vault",
            rules.sink
        ),
    });
    let sinks: Vec<Service> = sinks.collect::<anyhow::Result<_>>()?;
    let mut owned = Vec::new();
    let mut per_account = 0;
    for (number, account) in accounts.iter().enumerate() {
        let names = rules
            .template
            .render(&account.team, &account.name)
            .names(rules.secret_format);
        per_account = sinks.len() * names.len();
        for (s, service) in sinks.iter().enumerate() {
            for (n, name) in names.iter().enumerate() {
                let owner = Owned {
                    account: number as u32,
                    index: (s * names.len() + n) as u8,
                };
                owned.push(((*service, name.clone()), owner));
            }
        }
    }
    Ok(Ownership {
        secrets: owned,
        per_account,
    })
}

fn build(args: &Args) -> anyhow::Result<(Rc<Sim>, Vec<world::Account>)> {
    let settings = settings(&args.variables)?;
    let rules = &settings.rules;
    let shortest = (rules.timing.rotate_before_expiry + MIN_REWRITE_INTERVAL).as_secs() as u32;
    let registered = world::register(
        args.teams,
        args.accounts,
        shortest.max(SHORTEST_SESSION),
        &Chance::new(args.seed, 0),
    );
    let store = SharedStore::default();
    store.set_many(&registered.documents)?;
    let timeline = Rc::new(Timeline::default());
    let epoch: DateTime<Utc> = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")?.into();
    let network = Network {
        latency: Duration::from_millis(args.latency_ms),
        fault_rate: args.fault_rate,
        request_timeout: rules.request_timeout,
    };
    let ownership = owned_secrets(&settings, &registered.accounts)?;
    let aws = Rc::new(AwsModel::new(
        timeline.clone(),
        epoch,
        network,
        Quotas::default(),
        args.seed,
        ownership,
    ));
    let recorder = Recorder::new(aws.clone(), epoch, &registered.accounts);
    let period = Duration::from_secs(args.period_s);
    let schedule = Schedule {
        period,
        firings: (args.hours * 3600.0 / period.as_secs_f64()).ceil() as u64,
        nodes: args.nodes,
    };
    let sim = Sim {
        timeline,
        epoch,
        settings,
        store,
        aws,
        recorder,
        seed: args.seed,
        schedule,
    };
    Ok((Rc::new(sim), registered.accounts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load_at_start = report::load_average();
    let started = Instant::now();
    let (sim, accounts) = build(&args)?;
    let commits_before = sim.store.usage();
    sim::run(sim.clone());
    let run = report::Run {
        args: &args,
        sim: &sim,
        accounts: &accounts,
        registration: commits_before,
        wall: started.elapsed(),
        load_at_start,
    };
    let (figures, missed) = report::figures(&run);
    for line in report::summary(&figures, &missed) {
        eprintln!("{line}");
    }
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}
