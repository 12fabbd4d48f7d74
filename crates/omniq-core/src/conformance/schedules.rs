//! Scenarios of stored schedules: storing, listing, pausing and removing
//! them, and firing a tick once across concurrent callers.

use time::OffsetDateTime;

use super::scenarios::{at, make, new, T0};
use super::Scenario;
use crate::error::Error;
use crate::queue::Enqueued;
use crate::schedule::{tick_key, PutSchedule, Schedule, ScheduledTask};
use crate::settings::Settings;
use crate::storage::{ListQuery, Storage};
use crate::task::{Task, TaskStatus};

scenarios![
    schedules_are_stored_listed_paused_and_removed,
    a_tick_fires_once_and_moves_the_schedule_on,
    a_paused_or_removed_schedule_fires_nothing,
    concurrent_fires_of_one_tick_store_one_task,
    a_tick_whose_key_is_held_records_the_holder,
    updating_a_schedule_keeps_what_others_changed,
    an_update_racing_a_fire_never_undoes_the_tick,
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
    store
        .put_schedule(hourly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
    assert_eq!(
        store.schedules().await.unwrap(),
        [hourly.clone(), nightly.clone()]
    );
    // Putting a name again replaces it.
    let mut changed = nightly.clone();
    changed.expression = "0 30 4 * * *".into();
    changed.catch_up = true;
    store
        .put_schedule(changed.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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
        let refused = store
            .put_schedule(schedule(bad, at(1)), PutSchedule::Replace)
            .await;
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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
    store
        .put_schedule(nightly.clone(), PutSchedule::Replace)
        .await
        .unwrap();
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

/// `PutSchedule::Update` (every process's start) keeps the tick fired, the
/// pause and the last run another process stored; a changed expression
/// takes the new next tick; `KeepExisting` leaves the stored one alone.
async fn updating_a_schedule_keeps_what_others_changed(store: &dyn Storage) {
    let due = at(60_000);
    let nightly = schedule("nightly", due);
    let first = store
        .put_schedule(nightly.clone(), PutSchedule::Update)
        .await
        .unwrap();
    assert_eq!((first.schedule.clone(), first.existed), (nightly.clone(), false));
    let fired = store
        .fire_schedule("nightly", due, at(120_000), tick_task(&nightly, due))
        .await
        .unwrap()
        .unwrap();
    assert!(store.set_schedule_paused("nightly", true).await.unwrap());

    // The same expression again, with a next tick computed before the fire.
    let mut again = nightly.clone();
    again.catch_up = true;
    let answer = store.put_schedule(again, PutSchedule::Update).await.unwrap();
    assert!(answer.existed);
    let kept = Schedule {
        catch_up: true,
        paused: true,
        next_run: at(120_000),
        last_run: Some(due),
        last_task: Some(fired.id),
        ..nightly.clone()
    };
    assert_eq!(answer.schedule, kept);
    assert_eq!(store.schedules().await.unwrap(), std::slice::from_ref(&kept));

    // A new expression starts from its own next tick, still paused.
    let mut changed = nightly.clone();
    changed.expression = "0 30 4 * * *".into();
    changed.next_run = at(500_000);
    let answer = store
        .put_schedule(changed.clone(), PutSchedule::Update)
        .await
        .unwrap();
    let moved = Schedule {
        next_run: at(500_000),
        expression: changed.expression.clone(),
        catch_up: false,
        ..kept
    };
    assert_eq!(answer.schedule, moved);

    // Keep leaves it as it is; Replace stores what it is given.
    let other = schedule("nightly", at(9_000));
    let answer = store
        .put_schedule(other.clone(), PutSchedule::KeepExisting)
        .await
        .unwrap();
    assert_eq!((answer.schedule, answer.existed), (moved.clone(), true));
    assert_eq!(store.schedules().await.unwrap(), [moved]);
    let answer = store
        .put_schedule(other.clone(), PutSchedule::Replace)
        .await
        .unwrap();
    assert_eq!((answer.schedule, answer.existed), (other.clone(), true));
    assert_eq!(store.schedules().await.unwrap(), [other]);
}

/// A process that starts (and updates its schedule) while another fires the
/// schedule's tick: in either order, the schedule ends on the next tick, so
/// the tick never fires twice.
async fn an_update_racing_a_fire_never_undoes_the_tick(store: &dyn Storage) {
    for round in 0..12u64 {
        let name = format!("race {round}");
        let due = at(60_000 + round);
        let next = at(120_000 + round);
        let nightly = schedule(&name, due);
        store
            .put_schedule(nightly.clone(), PutSchedule::Replace)
            .await
            .unwrap();
        let fire = store.fire_schedule(&name, due, next, tick_task(&nightly, due));
        let update = store.put_schedule(nightly.clone(), PutSchedule::Update);
        let (fired, updated) = match round % 2 {
            0 => futures::future::join(fire, update).await,
            _ => {
                let (updated, fired) = futures::future::join(update, fire).await;
                (fired, updated)
            }
        };
        assert!(fired.unwrap().is_some(), "round {round}: the tick fires");
        updated.unwrap();
        let stored = store.schedules().await.unwrap();
        let stored = stored.iter().find(|s| s.name == name).unwrap();
        assert_eq!(stored.next_run, next, "round {round}: the fire was undone");
    }
}
