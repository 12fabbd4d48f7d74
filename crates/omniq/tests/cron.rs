//! Cron schedules through the public API: ticks fired by a pool on a fake
//! clock, downtime skipped or caught up once, three processes' pools on one
//! store producing one task per tick, and bad input named.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use omniq::cron::CronSchedule;
use omniq::{
    BackendKind, Error, HandlerError, Job, MemoryStorage, OmniQ, PoolConfig, Registry, Settings, Storage,
    TaskContext, TokioClock,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Serialize, Deserialize)]
struct Report {
    kind: String,
}

impl Job for Report {
    const NAME: &'static str = "report.build";
    type Output = String;
    type Error = HandlerError;

    async fn run(self, _ctx: TaskContext) -> Result<String, HandlerError> {
        Ok(format!("{} report", self.kind))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.job::<Report>();
    registry
}

/// The tick keys of the tasks `store` holds, with how many tasks hold each.
async fn ticks(store: &dyn Storage) -> HashMap<String, usize> {
    let mut keys = HashMap::new();
    for task in store.list(Default::default()).await.unwrap() {
        *keys.entry(task.unique_key.unwrap_or_default()).or_insert(0) += 1;
    }
    keys
}

#[tokio::test(start_paused = true)]
async fn a_pool_fires_each_tick_on_a_fake_clock() {
    let storage = Arc::new(MemoryStorage::new());
    let q = OmniQ::with_storage(storage.clone(), Settings::default());
    let clock = Arc::new(TokioClock::new());
    let schedule = q
        .schedule("every-10s", "*/10 * * * * *", &Report { kind: "short".into() })
        .unwrap()
        .create()
        .await
        .unwrap();
    let pool = q.worker(registry()).clock(clock.clone()).start().unwrap();
    let start = schedule.next_run;
    // The fake clock runs on to 1 s past the fifth tick (start, +10 ... +40).
    let until = start + Duration::from_secs(41) - omniq::Clock::now(&*clock);
    tokio::time::sleep(Duration::try_from(until).unwrap()).await;
    let fired = ticks(&*storage).await;
    let expected: Vec<String> = (0..5)
        .map(|i| omniq::core::schedule::tick_key("every-10s", start + Duration::from_secs(10 * i)))
        .collect();
    for key in &expected {
        assert_eq!(fired.get(key), Some(&1), "{key} in {fired:?}");
    }
    assert_eq!(fired.len(), 5, "{fired:?}");
    let stored = q.schedules().await.unwrap().pop().unwrap();
    assert_eq!(stored.next_run, start + Duration::from_secs(50));
    let last = stored.last_task.expect("the last tick's task");
    q.wait_result(last, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        q.job_result::<Report>(last).await.unwrap().as_deref(),
        Some("short report")
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

/// A wall clock that starts at a chosen moment and moves with tokio's
/// (paused) clock.
#[derive(Debug)]
struct FakeWall {
    start: OffsetDateTime,
    origin: tokio::time::Instant,
}

impl omniq::Clock for FakeWall {
    fn now(&self) -> OffsetDateTime {
        self.start + self.origin.elapsed()
    }
}

/// Runs a pool on a fake clock from `from` to `until`, with schedule `name`
/// of `expression` in Berlin; answers the ticks it fired, in order.
async fn berlin_ticks(
    name: &str,
    expression: &str,
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> Vec<String> {
    let storage = Arc::new(MemoryStorage::new());
    let q = OmniQ::with_storage(storage.clone(), Settings::default());
    let mut schedule = q
        .schedule(name, expression, &Report { kind: "dst".into() })
        .unwrap()
        .timezone("Europe/Berlin")
        .create()
        .await
        .unwrap();
    schedule.next_run = CronSchedule::parse(expression, "Europe/Berlin")
        .unwrap()
        .next_after(from)
        .unwrap();
    storage
        .put_schedule(schedule, omniq::PutSchedule::Replace)
        .await
        .unwrap();
    let clock = Arc::new(FakeWall {
        start: from,
        origin: tokio::time::Instant::now(),
    });
    let config = PoolConfig {
        poll_interval: Duration::from_secs(3600),
        requeue_every: Duration::from_secs(3600),
        ..PoolConfig::default()
    };
    // The ticks are read after days of fake time: keep them.
    let pool = q
        .worker(registry())
        .config(config)
        .retention(omniq::Retention::FOREVER)
        .clock(clock)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::try_from(until - from).unwrap()).await;
    pool.shutdown(Duration::from_secs(5)).await;
    let mut fired: Vec<String> = ticks(&*storage).await.into_keys().collect();
    fired.sort();
    fired
}

#[tokio::test(start_paused = true)]
async fn a_pool_on_a_fake_clock_fires_each_local_time_once_across_berlins_dst_changes() {
    use time::macros::datetime;
    let key = |name: &str, at: OffsetDateTime| omniq::core::schedule::tick_key(name, at);
    // Spring: 02:30 does not exist on 29 March 2026; that day's tick runs at 03:00 CEST.
    let spring = berlin_ticks(
        "spring",
        "0 30 2 * * *",
        datetime!(2026-03-27 12:00 UTC),
        datetime!(2026-03-29 12:00 UTC),
    )
    .await;
    assert_eq!(
        spring,
        [
            key("spring", datetime!(2026-03-28 01:30 UTC)),
            key("spring", datetime!(2026-03-29 01:00 UTC)),
        ]
    );
    // Autumn: 02:00-02:59 happen twice on 25 October 2026; an hourly job runs
    // at 02:00 once.
    let autumn = berlin_ticks(
        "autumn",
        "0 0 * * * *",
        datetime!(2026-10-24 22:30 UTC),
        datetime!(2026-10-25 02:30 UTC),
    )
    .await;
    assert_eq!(
        autumn,
        [
            key("autumn", datetime!(2026-10-24 23:00 UTC)), // 01:00 CEST
            key("autumn", datetime!(2026-10-25 00:00 UTC)), // 02:00 CEST
            key("autumn", datetime!(2026-10-25 02:00 UTC)), // 03:00 CET
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn downtime_is_skipped_by_default_and_caught_up_once_when_asked() {
    for catch_up in [false, true] {
        let storage = Arc::new(MemoryStorage::new());
        let q = OmniQ::with_storage(storage.clone(), Settings::default());
        let mut schedule = q
            .schedule(
                "hourly",
                "0 0 * * * *",
                &Report {
                    kind: "hourly".into(),
                },
            )
            .unwrap()
            .catch_up(catch_up)
            .create()
            .await
            .unwrap();
        // As if no pool had run for a day: the stored next tick is long past.
        let now = OffsetDateTime::now_utc();
        let missed = CronSchedule::parse("0 0 * * * *", "UTC")
            .unwrap()
            .next_after(now - Duration::from_secs(86_400))
            .unwrap();
        schedule.next_run = missed;
        storage
            .put_schedule(schedule, omniq::PutSchedule::Replace)
            .await
            .unwrap();

        let pool = q
            .worker(registry())
            .clock(Arc::new(TokioClock::new()))
            .start()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let fired = ticks(&*storage).await;
        match catch_up {
            // 24 ticks missed: none runs.
            false => assert!(fired.is_empty(), "{fired:?}"),
            // One task for them all, as the latest missed tick.
            true => {
                let latest = CronSchedule::parse("0 0 * * * *", "UTC")
                    .unwrap()
                    .latest_at_or_before(now)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    fired,
                    HashMap::from([(omniq::core::schedule::tick_key("hourly", latest), 1)])
                );
                let stored = q.schedules().await.unwrap().pop().unwrap();
                assert_eq!(stored.last_run, Some(latest));
            }
        }
        let stored = q.schedules().await.unwrap().pop().unwrap();
        assert!(stored.next_run > now, "the schedule moved past the downtime");
        pool.shutdown(Duration::from_secs(5)).await;
    }
}

/// Three processes' pools, each with a store of its own on one folder or
/// database file, fire a schedule of one tick a second: each tick is one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_produce_one_task_per_tick() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::builder()
            .backend(backend)
            .base_dir(dir.path())
            .build()
            .unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(OmniQ::open(settings.clone()).await.unwrap());
        }
        clients[0]
            .schedule("each-second", "* * * * * *", &Report { kind: "tick".into() })
            .unwrap()
            .create()
            .await
            .unwrap();
        let config = PoolConfig {
            poll_interval: Duration::from_millis(50),
            ..PoolConfig::default()
        };
        let pools: Vec<_> = clients
            .iter()
            .map(|q| q.worker(registry()).config(config.clone()).start().unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        for pool in pools {
            pool.shutdown(Duration::from_secs(5)).await;
        }
        let fired = ticks(&**clients[0].storage()).await;
        assert!(fired.len() >= 2, "{backend:?}: {fired:?}");
        assert!(fired.values().all(|n| *n == 1), "{backend:?}: {fired:?}");
        assert!(fired.keys().all(|k| k.starts_with("schedule:each-second:")));
    }
}

#[tokio::test]
async fn schedules_are_listed_paused_removed_and_bad_ones_refused() {
    let q = OmniQ::with_storage(Arc::new(MemoryStorage::new()), Settings::default());
    for (name, expression, timezone, what) in [
        ("", "0 0 * * *", "UTC", "schedule name"),
        ("x", "every day", "UTC", "cron expression"),
        ("x", "0 0 * * *", "Moon/Base", "timezone"),
    ] {
        let refused = q
            .schedule(name, expression, &Report { kind: "x".into() })
            .unwrap()
            .timezone(timezone)
            .create()
            .await;
        match refused {
            Err(Error::InvalidConfig { name, .. }) => assert_eq!(name, what),
            other => panic!("{other:?}"),
        }
    }
    let made = q
        .schedule("nightly", "0 0 3 * * *", &Report { kind: "night".into() })
        .unwrap()
        .timezone("Europe/Berlin")
        .create()
        .await
        .unwrap();
    assert!(q.pause_schedule("nightly").await.unwrap());
    // Creating it again, as every process does at start, keeps its state.
    let again = q
        .schedule("nightly", "0 0 3 * * *", &Report { kind: "night".into() })
        .unwrap()
        .timezone("Europe/Berlin")
        .create()
        .await
        .unwrap();
    assert!(again.paused);
    assert_eq!(again.next_run, made.next_run);
    assert_eq!(again.task.queue.as_deref(), Some("default"));
    assert!(q.resume_schedule("nightly").await.unwrap());
    assert!(q.remove_schedule("nightly").await.unwrap());
    assert!(q.schedules().await.unwrap().is_empty());
    assert!(!q.pause_schedule("nightly").await.unwrap());
}

/// A schedule that leaves retries and timeout unset (stored by another
/// program, or migrated) gives tick tasks the defaults of the settings the
/// pool's client was opened with, not the built-in ones.
#[tokio::test(start_paused = true)]
async fn tick_tasks_take_the_clients_defaults_for_what_the_schedule_leaves_unset() {
    let storage = Arc::new(MemoryStorage::new());
    let settings = Settings::builder()
        .default_max_retries(7)
        .default_timeout(Some(Duration::from_secs(42)))
        .build()
        .unwrap();
    let q = OmniQ::with_storage(storage.clone(), settings);
    let mut schedule = q
        .schedule("bare", "* * * * * *", &Report { kind: "bare".into() })
        .unwrap()
        .create()
        .await
        .unwrap();
    schedule.task.max_retries = None;
    schedule.task.timeout = None;
    storage
        .put_schedule(schedule, omniq::PutSchedule::Replace)
        .await
        .unwrap();
    let pool = q
        .worker(Registry::new())
        .clock(Arc::new(TokioClock::new()))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pool.shutdown(Duration::from_secs(1)).await;
    let tasks = storage.list(Default::default()).await.unwrap();
    assert!(!tasks.is_empty(), "the schedule fired");
    for task in tasks {
        assert_eq!(
            (task.max_retries, task.timeout),
            (7, Some(Duration::from_secs(42)))
        );
    }
}
