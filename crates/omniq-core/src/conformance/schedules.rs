//! Scenarios of stored schedules: storing, listing, pausing and removing
//! them, and firing a tick once across concurrent callers.

use time::OffsetDateTime;

use super::scenarios::{at, make, new, T0};
use super::Scenario;
use crate::error::Error;
use crate::queue::Enqueued;
use crate::schedule::{tick_key, Schedule, ScheduledTask};
use crate::settings::Settings;
use crate::storage::{ListQuery, Storage};
use crate::task::{Task, TaskStatus};

scenarios![
    schedules_are_stored_listed_paused_and_removed,
    a_tick_fires_once_and_moves_the_schedule_on,
    a_paused_or_removed_schedule_fires_nothing,
    concurrent_fires_of_one_tick_store_one_task,
    a_tick_whose_key_is_held_records_the_holder,
];

fn schedule(name: &str, next_run: OffsetDateTime) -> Schedule {
    Schedule {
        name: name.into(),
        expression: "0 0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        task: ScheduledTask::from_new_task(&new("report.nightly").queue("reports").priority(2)),
        catch_up: false,
        paused: false,
        next_run,
        last_run: None,
        last_task: None,
    }
}

fn tick_task(schedule: &Schedule, due: OffsetDateTime) -> Task {
    schedule
        .task
        .for_tick(&schedule.name, due, &Settings::default(), due)
        .unwrap()
}

async fn schedules_are_stored_listed_paused_and_removed(store: &dyn Storage) {
    assert!(store.schedules().await.unwrap().is_empty());
    let nightly = schedule("nightly", at(3_600_000));
    let hourly = schedule("hourly ✓", at(60_000));
    store.put_schedule(nightly.clone()).await.unwrap();
    store.put_schedule(hourly.clone()).await.unwrap();
    assert_eq!(
        store.schedules().await.unwrap(),
        [hourly.clone(), nightly.clone()]
    );
    // Putting a name again replaces it.
    let mut changed = nightly.clone();
    changed.expression = "0 30 4 * * *".into();
    changed.catch_up = true;
    store.put_schedule(changed.clone()).await.unwrap();
    assert_eq!(
        store.schedules().await.unwrap(),
        [hourly.clone(), changed.clone()]
    );
    // Pausing changes the flag only.
    assert!(store.set_schedule_paused("nightly", true).await.unwrap());
    let paused = store.schedules().await.unwrap().pop().unwrap();
    assert_eq!(
        paused,
        Schedule {
            paused: true,
            ..changed.clone()
        }
    );
    assert!(store.set_schedule_paused("nightly", false).await.unwrap());
    assert!(!store.set_schedule_paused("nobody", true).await.unwrap());
    // Removing.
    assert!(store.remove_schedule("hourly ✓").await.unwrap());
    assert!(!store.remove_schedule("hourly ✓").await.unwrap());
    assert_eq!(store.schedules().await.unwrap(), [changed]);
    // Names out of range are refused, and nothing is stored.
    for bad in ["", "tab\there", &"x".repeat(129)] {
        let refused = store.put_schedule(schedule(bad, at(1))).await;
        assert!(
            matches!(refused, Err(Error::InvalidConfig { .. })),
            "{bad:?}: {refused:?}"
        );
    }
    assert_eq!(store.schedules().await.unwrap().len(), 1);
}

async fn a_tick_fires_once_and_moves_the_schedule_on(store: &dyn Storage) {
    let due = at(60_000);
    let next = at(120_000);
    let nightly = schedule("nightly", due);
    store.put_schedule(nightly.clone()).await.unwrap();
    let task = tick_task(&nightly, due);
    let fired = store
        .fire_schedule("nightly", due, next, task.clone())
        .await
        .unwrap();
    assert_eq!(
        fired,
        Some(Enqueued {
            id: task.id,
            duplicate: false
        })
    );
    let stored = store.get(task.id).await.unwrap();
    assert_eq!(stored.status, TaskStatus::Pending);
    assert_eq!(
        stored.unique_key.as_deref(),
        Some(tick_key("nightly", due).as_str())
    );
    assert_eq!((stored.queue.as_str(), stored.priority), ("reports", 2));
    let after = store.schedules().await.unwrap().pop().unwrap();
    assert_eq!(
        (after.next_run, after.last_run, after.last_task),
        (next, Some(due), Some(task.id))
    );
    // The same tick again (another process that saw it due): nothing.
    let again = tick_task(&nightly, due);
    assert_eq!(
        store
            .fire_schedule("nightly", due, next, again.clone())
            .await
            .unwrap(),
        None
    );
    assert!(matches!(store.get(again.id).await, Err(Error::NotFound { .. })));
    // A missed tick is skipped: the schedule moves on, nothing is enqueued;
    // a second skip of the same tick changes nothing.
    let before = store.counts().await.unwrap().total();
    assert!(store.skip_schedule("nightly", next, at(150_000)).await.unwrap());
    assert!(!store.skip_schedule("nightly", next, at(150_000)).await.unwrap());
    assert_eq!(store.counts().await.unwrap().total(), before);
    let skipped = store.schedules().await.unwrap().pop().unwrap();
    assert_eq!(
        (skipped.next_run, skipped.last_task),
        (at(150_000), Some(task.id))
    );
    let next = at(150_000);
    // The next tick fires.
    let later = tick_task(&nightly, next);
    let fired = store
        .fire_schedule("nightly", next, at(180_000), later.clone())
        .await
        .unwrap();
    assert_eq!(fired.map(|f| f.id), Some(later.id));
}

async fn a_paused_or_removed_schedule_fires_nothing(store: &dyn Storage) {
    let due = at(60_000);
    let nightly = schedule("nightly", due);
    store.put_schedule(nightly.clone()).await.unwrap();
    store.set_schedule_paused("nightly", true).await.unwrap();
    let task = tick_task(&nightly, due);
    assert_eq!(
        store
            .fire_schedule("nightly", due, at(120_000), task.clone())
            .await
            .unwrap(),
        None
    );
    store.remove_schedule("nightly").await.unwrap();
    assert_eq!(
        store
            .fire_schedule("nightly", due, at(120_000), task.clone())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.counts().await.unwrap().total(), 0);
    // A finished record is history, not a tick's task.
    store.put_schedule(nightly.clone()).await.unwrap();
    let mut done = make(new("x"), T0);
    done.cancel(T0).unwrap();
    let refused = store.fire_schedule("nightly", due, at(120_000), done).await;
    assert!(matches!(refused, Err(Error::Conflict { .. })), "{refused:?}");
    assert_eq!(store.schedules().await.unwrap()[0].next_run, due);
}

/// Several processes that see one tick due fire it at once: one task.
async fn concurrent_fires_of_one_tick_store_one_task(store: &dyn Storage) {
    let due = at(60_000);
    let nightly = schedule("nightly", due);
    store.put_schedule(nightly.clone()).await.unwrap();
    let tasks: Vec<Task> = (0..8).map(|_| tick_task(&nightly, due)).collect();
    let fired = futures::future::join_all(
        tasks
            .iter()
            .map(|task| store.fire_schedule("nightly", due, at(120_000), task.clone())),
    )
    .await;
    let winners: Vec<Enqueued> = fired.into_iter().filter_map(|f| f.unwrap()).collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = store.list(ListQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, winners[0].id);
}

/// A live task already holds the tick's key (the tick fired before, and its
/// schedule was put back): the tick moves on and records that task.
async fn a_tick_whose_key_is_held_records_the_holder(store: &dyn Storage) {
    let due = at(60_000);
    let nightly = schedule("nightly", due);
    let holder = tick_task(&nightly, due);
    store.enqueue(vec![holder.clone()]).await.unwrap();
    store.put_schedule(nightly.clone()).await.unwrap();
    let fired = store
        .fire_schedule("nightly", due, at(120_000), tick_task(&nightly, due))
        .await
        .unwrap();
    assert_eq!(
        fired,
        Some(Enqueued {
            id: holder.id,
            duplicate: true
        })
    );
    assert_eq!(store.counts().await.unwrap().total(), 1);
    let after = store.schedules().await.unwrap().pop().unwrap();
    assert_eq!((after.next_run, after.last_task), (at(120_000), Some(holder.id)));
}
