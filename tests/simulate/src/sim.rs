//! The simulated deployment: nodes that each start a tick of the real engine on the
//! schedule (a second or less after its time, as the cron host does), sharing one store
//! and one AWS, every tick with a clock and an AWS client of its own as in the component.

use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use concourse_sts::aws::AwsClient;
use concourse_sts::clock::{Clock, TimeSource};
use concourse_sts::settings::Settings;
use concourse_sts::tick::Engine;
use futures::executor::{LocalPool, LocalSpawner};
use futures::task::LocalSpawnExt;

use crate::aws::AwsModel;
use crate::chance::Chance;
use crate::memory::Owner;
use crate::recorder::Recorder;
use crate::store::SharedStore;
use crate::timeline::{self, Timeline};

/// Everything the nodes share.
pub struct Sim {
    pub timeline: Rc<Timeline>,
    /// The true time when the simulation begins (teams are registered then).
    pub epoch: DateTime<Utc>,
    pub settings: Settings,
    pub store: SharedStore,
    pub aws: Rc<AwsModel>,
    pub recorder: Recorder,
    pub seed: u64,
    pub schedule: Schedule,
}

/// When ticks start.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub period: Duration,
    /// Schedule times in the run: the first at the start.
    pub firings: u64,
    pub nodes: usize,
}

/// A node's time: the true time (its wall clock is right), the virtual monotonic clock
/// and the seed's chance.
struct NodeTime {
    timeline: Rc<Timeline>,
    epoch: DateTime<Utc>,
    chance: Chance,
}

impl TimeSource for NodeTime {
    fn wall(&self) -> DateTime<Utc> {
        let now = self.epoch + chrono::Duration::from_std(self.timeline.now()).expect("in range");
        // As the component reads it: to the millisecond.
        now.duration_trunc(chrono::Duration::milliseconds(1))
            .unwrap_or(now)
    }

    fn monotonic(&self) -> Duration {
        self.timeline.now()
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> {
        self.timeline.sleep(duration)
    }

    fn random_fraction(&self) -> f64 {
        self.chance.fraction()
    }
}

/// Runs the whole schedule on every node, to the end of the last tick.
pub fn run(sim: Rc<Sim>) {
    let mut pool = LocalPool::new();
    for node in 0..sim.schedule.nodes {
        let driver = drive(sim.clone(), node, pool.spawner());
        pool.spawner().spawn_local(driver).expect("the pool runs");
    }
    timeline::run(&mut pool, &sim.timeline);
}

/// One node's cron host: a tick at every schedule time, started up to a second late.
async fn drive(sim: Rc<Sim>, node: usize, spawner: LocalSpawner) {
    let schedule = sim.schedule;
    let late = Chance::new(sim.seed, 100 + node as u64);
    for firing in 0..schedule.firings {
        let start = schedule.period * firing as u32 + Duration::from_secs_f64(late.fraction());
        sim.timeline.sleep_until(start).await;
        let sequence = firing as usize * schedule.nodes + node;
        let owner = Owner::tick(sequence);
        let tick = owner.charge(tick(sim.clone(), node, sequence, owner));
        spawner.spawn_local(tick).expect("the pool runs");
    }
}

/// One tick, set up as the component sets it up.
async fn tick(sim: Rc<Sim>, node: usize, sequence: usize, owner: Owner) {
    let time = NodeTime {
        timeline: sim.timeline.clone(),
        epoch: sim.epoch,
        chance: Chance::new(sim.seed, 1_000 + sequence as u64),
    };
    let clock = Clock::new(time);
    let settings = &sim.settings;
    let client = AwsClient::new(
        &*sim.aws,
        &clock,
        settings.identity.clone(),
        &settings.region,
        settings.endpoints.clone(),
    );
    let id = format!("node{node}-{sequence:05}");
    let engine = Engine {
        client: &client,
        clock: &clock,
        store: &sim.store,
        sink: &sim.recorder,
        rules: &settings.rules,
        tick: &id,
        vault: None,
    };
    let result = engine.run_tick().await;
    sim.recorder.tick_ended(owner.peak_bytes(), &result);
}
