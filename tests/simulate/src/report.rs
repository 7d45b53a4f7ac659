//! The figures of a simulated run, as one JSON object, and the targets checked
//! against them.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::figures::{self, Spread};
use crate::sim::Sim;
use crate::store::Usage;
use crate::world::Account;
use crate::Args;

/// What a run was and what it left.
pub struct Run<'a> {
    pub args: &'a Args,
    pub sim: &'a Sim,
    pub accounts: &'a [Account],
    /// The store's counts after the registration, before the first tick.
    pub registration: Usage,
    pub wall: Duration,
    pub load_at_start: String,
}

/// The one-minute load average: figures of wall time mean little on a busy machine.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The process's peak resident memory (`VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

/// Every figure, and the targets missed.
pub fn figures(run: &Run<'_>) -> (Map<String, Value>, Vec<String>) {
    let mut figures = Map::new();
    parameters(run, &mut figures);
    quotas(run, &mut figures);
    credentials(run, &mut figures);
    versions(run, &mut figures);
    ticks(run, &mut figures);
    footprint(run, &mut figures);
    let missed = missed(&figures);
    figures.insert("targets_missed".into(), json!(missed));
    (figures, missed)
}

fn parameters(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let (args, rules) = (run.args, &run.sim.settings.rules);
    let pairs = [
        ("accounts", json!(args.accounts)),
        ("teams", json!(args.teams)),
        ("hours", json!(args.hours)),
        ("nodes", json!(args.nodes)),
        ("seed", json!(args.seed)),
        ("latency_ms", json!(args.latency_ms)),
        ("fault_rate", json!(args.fault_rate)),
        ("schedule_period_s", json!(args.period_s)),
        ("tick_budget_s", json!(rules.tick_budget.as_secs())),
        (
            "rotate_before_expiry_s",
            json!(rules.timing.rotate_before_expiry.as_secs()),
        ),
        ("secret_sink", json!(rules.sink.to_string())),
        ("secret_format", json!(rules.secret_format.as_str())),
        (
            "secretsmanager_writes_per_second",
            json!(rules.writes_per_second),
        ),
        ("ssm_writes_per_second", json!(rules.ssm_writes_per_second)),
        ("wall_s", json!(round(run.wall.as_secs_f64(), 1))),
        ("load_average_start", json!(run.load_at_start)),
        ("load_average_end", json!(load_average())),
    ];
    figures.extend(pairs.map(|(k, v)| (k.to_owned(), v)));
}

/// The highest rate each quota admitted in any second, and what it throttled.
fn quotas(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let limits = run.sim.aws.limits();
    let buckets = [
        ("put_secret_value", &limits.put_secret_value),
        ("create_secret", &limits.create_secret),
        ("sts", &limits.sts),
        ("put_parameter", &limits.put_parameter),
    ];
    let peak: Map<String, Value> = buckets
        .iter()
        .map(|(name, limit)| (name.to_string(), json!(limit.peak)))
        .collect();
    let throttled: Map<String, Value> = buckets
        .iter()
        .map(|(name, limit)| (name.to_string(), json!(limit.throttled)))
        .collect();
    let total: u64 = buckets.iter().map(|(_, limit)| limit.throttled).sum();
    figures.insert("max_requests_per_s".into(), Value::Object(peak));
    figures.insert("throttled_by_quota".into(), Value::Object(throttled));
    figures.insert("throttled_requests".into(), json!(total));
    figures.insert(
        "faults_injected".into(),
        json!(*run.sim.aws.faults.borrow()),
    );
}

/// The schedule's promise: credentials never below `rotate_before_expiry` − period − budget.
fn validity_floor(run: &Run<'_>) -> Duration {
    let rules = &run.sim.settings.rules;
    let period = Duration::from_secs(run.args.period_s);
    rules
        .timing
        .rotate_before_expiry
        .saturating_sub(period + rules.tick_budget)
}

/// How long a mass registration may take: every write at the component's pace, and
/// one period to the first tick.
fn first_rotation_target(run: &Run<'_>, per_account: usize) -> u64 {
    let rules = &run.sim.settings.rules;
    let pace = f64::from(rules.writes_per_second.max(1));
    let writes = (per_account * run.accounts.len()) as f64;
    (writes / pace).ceil() as u64 + run.args.period_s
}

/// What every account had stored: validity, expiry, first and later rotations.
fn credentials(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let holdings = run.sim.aws.holdings();
    let end = run.sim.timeline.now();
    let least = holdings.iter().filter_map(|h| h.least_validity).min();
    let expired = holdings
        .iter()
        .filter(|h| h.least_validity.is_some_and(|(ms, _)| ms <= 0))
        .count();
    let never = holdings
        .iter()
        .filter(|h| h.first_complete.is_none())
        .count();
    let last_first = holdings.iter().filter_map(|h| h.first_complete).max();
    let margin = run.sim.settings.rules.timing.rotate_before_expiry;
    let per_day: Vec<f64> = holdings
        .iter()
        .map(|h| figures::per_day(h.landings, end))
        .collect();
    let against: Vec<f64> = holdings
        .iter()
        .zip(run.accounts)
        .filter_map(|(h, account)| {
            let ideal = figures::ideal_interval_s(account.duration, margin);
            let renewals = h.landings.checked_sub(1)?;
            figures::against_ideal(renewals, h.second_complete?, h.last_complete?, ideal)
        })
        .collect();
    let rules = &run.sim.settings.rules;
    let names = rules
        .template
        .render("t", "a")
        .names(rules.secret_format)
        .len();
    let sets = rules.sink.sinks().len() * names;
    let pairs = [
        ("least_validity_s", json!(least.map(|(ms, _)| ms / 1000))),
        (
            "least_validity_at_s",
            json!(least.map(|(_, at)| at.as_secs())),
        ),
        ("validity_floor_s", json!(validity_floor(run).as_secs())),
        ("accounts_expired", json!(expired)),
        ("accounts_never_rotated", json!(never)),
        (
            "all_first_rotated_s",
            json!((never == 0).then(|| last_first.map(|d| d.as_secs()))),
        ),
        (
            "first_rotation_target_s",
            json!(first_rotation_target(run, sets)),
        ),
        ("rotations_per_day", Spread::json(Spread::of(per_day), 1)),
        (
            "rotations_against_ideal",
            Spread::json(Spread::of(against), 2),
        ),
    ];
    figures.extend(pairs.map(|(k, v)| (k.to_owned(), v)));
}

/// Versions per secret within ten minutes, and rotations counted twice.
fn versions(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let most = |outside_repairs| {
        let versions = run.sim.aws.versions(outside_repairs);
        versions
            .iter()
            .map(|times| figures::most_within(times, figures::REWRITE_WINDOW_MS))
            .max()
            .unwrap_or(0)
    };
    let log = run.sim.recorder.log();
    let pairs = [
        ("max_versions_per_10min", json!(most(false))),
        ("max_versions_per_10min_outside_repairs", json!(most(true))),
        ("repairs", json!(run.sim.aws.repairs())),
        ("rotated_twice", json!(log.rotated_twice.len())),
        ("rotations", json!(log.rotations)),
        ("failed_accounts", json!(log.failures)),
        ("attempts_failed", json!(log.attempts_failed)),
    ];
    figures.extend(pairs.map(|(k, v)| (k.to_owned(), v)));
}

/// Tick durations and deferrals, on the virtual clock.
fn ticks(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let log = run.sim.recorder.log();
    let elapsed: Vec<f64> = log.ticks.iter().map(|t| t.elapsed_ms as f64).collect();
    let spread = Spread::of(elapsed);
    let busy = log.ticks.iter().filter(|t| t.rotated > 0).count();
    let deferred: usize = log.ticks.iter().map(|t| t.deferred).sum();
    let most_deferred = log.ticks.iter().map(|t| t.deferred).max().unwrap_or(0);
    let pairs = [
        ("ticks", json!(log.ticks.len())),
        ("ticks_rotating", json!(busy)),
        (
            "tick_ms",
            json!({"median": spread.map(|s| s.median), "max": spread.map(|s| s.max)}),
        ),
        ("lease_busy", json!(log.lease_busy)),
        ("lease_lost", json!(log.lease_lost)),
        ("deferred", json!(deferred)),
        ("deferred_max_per_tick", json!(most_deferred)),
        ("tick_errors", json!(log.tick_errors)),
    ];
    figures.extend(pairs.map(|(k, v)| (k.to_owned(), v)));
}

/// State documents, store traffic and memory.
fn footprint(run: &Run<'_>, figures: &mut Map<String, Value>) {
    let states = run.sim.store.sizes("state/");
    let total: usize = states.iter().sum();
    let spread = Spread::of(states.iter().map(|s| *s as f64).collect());
    let usage = run.sim.store.usage();
    let log = run.sim.recorder.log();
    let ticks = log.tick_peak_bytes.len().max(1) as u64;
    let peak_heap = log.tick_peak_bytes.iter().max().copied().unwrap_or(0);
    let pairs = [
        ("state_bytes_per_team", Spread::json(spread, 0)),
        ("state_bytes_total", json!(total)),
        (
            "store_commits",
            json!(usage.commits - run.registration.commits),
        ),
        (
            "store_reads_per_tick",
            json!((usage.reads - run.registration.reads) / ticks),
        ),
        ("tick_heap_peak_mb", json!(round(peak_heap as f64 / 1e6, 1))),
        ("process_peak_rss_mb", json!(peak_rss_mb())),
    ];
    figures.extend(pairs.map(|(k, v)| (k.to_owned(), v)));
}

/// The targets for a simulated day that the figures miss.
fn missed(figures: &Map<String, Value>) -> Vec<String> {
    let number = |key: &str| figures[key].as_f64();
    let checks = [
        (
            "throttled_requests",
            number("throttled_requests") == Some(0.0),
            "0",
        ),
        (
            "accounts_expired",
            number("accounts_expired") == Some(0.0),
            "0",
        ),
        (
            "accounts_never_rotated",
            number("accounts_never_rotated") == Some(0.0),
            "0",
        ),
        (
            "least_validity_s",
            number("least_validity_s") >= number("validity_floor_s"),
            ">= validity_floor_s",
        ),
        (
            "max_versions_per_10min_outside_repairs",
            number("max_versions_per_10min_outside_repairs") <= Some(1.0),
            "<= 1",
        ),
        (
            "all_first_rotated_s",
            number("all_first_rotated_s").is_some()
                && number("all_first_rotated_s") <= number("first_rotation_target_s"),
            "<= first_rotation_target_s",
        ),
        ("rotated_twice", number("rotated_twice") == Some(0.0), "0"),
        (
            "tick_errors",
            figures["tick_errors"]
                .as_object()
                .is_some_and(Map::is_empty),
            "none",
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, met, _)| !met)
        .map(|(key, _, wanted)| format!("{key} {} (wanted {wanted})", figures[key]))
        .collect()
}

/// A few lines for a reader on stderr.
pub fn summary(figures: &Map<String, Value>, missed: &[String]) -> Vec<String> {
    let f = |key: &str| figures[key].to_string();
    let mut lines = vec![
        format!(
            "{} accounts in {} teams, {} h on {} nodes, seed {}: {} s of wall time (load {} at the start, {} at the end)",
            f("accounts"), f("teams"), f("hours"), f("nodes"), f("seed"), f("wall_s"),
            f("load_average_start"), f("load_average_end")
        ),
        format!(
            "  requests per second at most {}, throttled {}, faults injected {}",
            f("max_requests_per_s"), f("throttled_requests"), f("faults_injected")
        ),
        format!(
            "  least validity {} s at {} s (floor {} s), expired {}, all first rotated after {} s (target {} s)",
            f("least_validity_s"), f("least_validity_at_s"), f("validity_floor_s"), f("accounts_expired"),
            f("all_first_rotated_s"), f("first_rotation_target_s")
        ),
        format!(
            "  rotations a day {}, against the ideal {}, versions in 10 min at most {} ({} outside repairs), rotated twice {}",
            f("rotations_per_day"), f("rotations_against_ideal"), f("max_versions_per_10min"),
            f("max_versions_per_10min_outside_repairs"), f("rotated_twice")
        ),
        format!(
            "  ticks {} ({} rotating), ms {}, deferred {} (at most {} in a tick), state {} bytes, tick heap at most {} MB",
            f("ticks"), f("ticks_rotating"), f("tick_ms"), f("deferred"), f("deferred_max_per_tick"),
            f("state_bytes_total"), f("tick_heap_peak_mb")
        ),
    ];
    match missed.is_empty() {
        true => lines.push("  every target met".into()),
        false => lines.extend(missed.iter().map(|m| format!("  MISSED: {m}"))),
    }
    lines
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}
