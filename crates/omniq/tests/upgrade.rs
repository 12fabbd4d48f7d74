//! Stores written by the release before queues existed (`fixtures/release-0.1`:
//! a file store and a SQLite database made by that release's code, with a
//! task in every status, an interval series and a running task whose lease
//! ran out) open and run under this build: their tasks land in the
//! `default` queue with priority 0.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use omniq::core::{ClaimRequest, Finish, Outcome};
use omniq::{Durability, FileStorage, NewTask, Settings, SqliteStorage, Storage, TaskStatus, DEFAULT_QUEUE};
use serde_json::json;
use time::OffsetDateTime;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-0.1")
}

/// A copy of the fixture, so the test changes only the copy.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn runs_as_before(store: Arc<dyn Storage>) {
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.running,
            counts.completed,
            counts.failed,
            counts.cancelled
        ),
        (4, 1, 1, 1, 1)
    );
    let all = store.list(Default::default()).await.unwrap();
    assert_eq!(all.len(), 8);
    assert!(all
        .iter()
        .all(|t| t.queue == DEFAULT_QUEUE && t.priority == 0 && t.unique_key.is_none()));
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].queue, DEFAULT_QUEUE);
    assert_eq!(stats[0].counts, counts);

    // Two hours on, the fixture's next interval occurrence (due an hour
    // after it was written) is due whenever the test runs. The running
    // task's lease ran out long ago: the lease pass takes it.
    let now = OffsetDateTime::now_utc() + Duration::from_secs(7200);
    assert_eq!(store.requeue_expired(now).await.unwrap().len(), 1);
    let due = store
        .claim(ClaimRequest {
            queue: DEFAULT_QUEUE.into(),
            worker_id: "upgraded".into(),
            limit: 10,
            lease_for: Duration::from_secs(30),
            now,
        })
        .await
        .unwrap();
    let names: std::collections::BTreeSet<&str> = due.iter().map(|t| t.func_path.as_str()).collect();
    assert!(names.contains("waits") && names.contains("repeats"), "{names:?}");
    assert!(
        !names.contains("later"),
        "a task due in twenty years is not claimed"
    );
    let finishes = due
        .iter()
        .map(|t| Finish {
            id: t.id,
            token: t.lease.as_ref().unwrap().token,
            outcome: Outcome::Complete { result: json!("ran") },
        })
        .collect();
    let answers = store.finish(finishes, now).await.unwrap();
    assert!(answers
        .iter()
        .all(|a| matches!(a, omniq::core::FinishOutcome::Applied { .. })));
    // The interval series goes on, in the default queue.
    let next = store
        .list(omniq::ListQuery {
            status: Some(TaskStatus::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(next
        .iter()
        .any(|t| t.func_path == "repeats" && t.queue == DEFAULT_QUEUE));

    // New tasks use what the old store did not have.
    let keyed = NewTask::new("new")
        .queue("emails")
        .priority(3)
        .unique_key("k")
        .into_task(&Settings::default(), now)
        .unwrap();
    let answer = store.enqueue(vec![keyed.clone()]).await.unwrap();
    assert!(!answer[0].duplicate);
    let again = NewTask::new("new")
        .unique_key("k")
        .into_task(&Settings::default(), now)
        .unwrap();
    assert_eq!(store.enqueue(vec![again]).await.unwrap()[0].id, keyed.id);
    store.set_paused("emails", true).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), ["emails"]);
}

#[tokio::test]
async fn a_file_store_of_the_previous_release_opens_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("store");
    copy_dir(&fixture().join("file"), &base);
    assert!(
        !base.join("format").exists(),
        "the fixture predates the format stamp"
    );
    {
        let read_only = FileStorage::open_read_only(&base, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read_only.counts().await.unwrap().total(), 8);
    }
    assert!(!base.join("format").exists(), "reading does not stamp the store");
    let store = Arc::new(FileStorage::open_path(&base, Durability::Normal).await.unwrap());
    assert_eq!(std::fs::read_to_string(base.join("format")).unwrap().trim(), "2");
    runs_as_before(store).await;
    // And it opens again, stamped.
    let store = FileStorage::open_path(&base, Durability::Normal).await.unwrap();
    assert_eq!(store.paused().await.unwrap(), ["emails"]);
}

#[tokio::test]
async fn a_sqlite_database_of_the_previous_release_opens_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("omniq.db");
    std::fs::copy(fixture().join("omniq.db"), &db).unwrap();
    {
        let read_only = SqliteStorage::open_read_only(&db, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read_only.schema_version().await.unwrap(), 3);
        let listed = read_only.list(Default::default()).await.unwrap();
        assert_eq!(listed.len(), 8);
        assert!(listed.iter().all(|t| t.queue == DEFAULT_QUEUE));
        assert_eq!(read_only.queue_stats().await.unwrap().len(), 1);
        assert!(read_only.paused().await.unwrap().is_empty());
        assert!(read_only
            .next_due(&[DEFAULT_QUEUE.into()])
            .await
            .unwrap()
            .is_some());
    }
    let store = Arc::new(SqliteStorage::open_path(&db, Durability::Normal).await.unwrap());
    assert_eq!(
        store.schema_version().await.unwrap(),
        omniq::sqlite_schema_version()
    );
    runs_as_before(store).await;
}

/// A store stamped by a newer build is refused, untouched.
#[tokio::test]
async fn a_file_store_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("store");
    copy_dir(&fixture().join("file"), &base);
    std::fs::write(base.join("format"), "99\n").unwrap();
    let refused = FileStorage::open_path(&base, Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(refused, omniq::Error::Incompatible { .. }), "{refused}");
    assert!(refused.to_string().contains("newer"), "{refused}");
    assert_eq!(std::fs::read_to_string(base.join("format")).unwrap(), "99\n");
}
