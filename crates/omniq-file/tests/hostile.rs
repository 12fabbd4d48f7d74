//! The file store against hostile folders: planted links, foreign files in
//! `tmp/`, a lock held by a stopped process, records that lost their entries,
//! names no OmniQ wrote, and the permissions of what it creates.

use std::fs::{self, File};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use omniq_core::{ClaimRequest, Durability, Error, NewTask, Settings, Storage, StorageExt, TaskStatus};
use omniq_file::FileStorage;
use time::OffsetDateTime;

async fn open(dir: &Path) -> FileStorage {
    FileStorage::open_path(dir, Durability::Normal).await.unwrap()
}

async fn claim_all(store: &FileStorage) -> Vec<omniq_core::Task> {
    store
        .claim(ClaimRequest {
            queue: omniq_core::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit: 100,
            lease_for: Duration::from_secs(30),
            now: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap()
}

/// Makes `path` look last changed an hour ago.
fn age(path: &Path) {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

#[tokio::test]
async fn opening_removes_only_its_own_abandoned_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    // A project whose own `tmp/` folder the store's base happens to hold.
    fs::create_dir(dir.path().join("tmp")).unwrap();
    let users = dir.path().join("tmp/build-cache.bin");
    fs::write(&users, b"the user's file").unwrap();
    age(&users);
    drop(open(dir.path()).await);
    assert!(users.exists(), "a file OmniQ did not name was removed");

    let abandoned = dir.path().join("tmp/omniq-tmp.1.2.task.json");
    fs::write(&abandoned, b"{").unwrap();
    age(&abandoned);
    drop(open(dir.path()).await);
    assert!(!abandoned.exists(), "OmniQ's own abandoned file stays");
    assert!(users.exists());
}

#[tokio::test]
async fn a_symlinked_tmp_folder_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("omniq-tmp.1.2.x");
    fs::write(&victim, b"keep").unwrap();
    age(&victim);
    fs::create_dir(dir.path().join("store")).unwrap();
    symlink(elsewhere.path(), dir.path().join("store/tmp")).unwrap();
    let refused = FileStorage::open_path(dir.path().join("store"), Durability::Normal).await;
    match refused {
        Err(Error::Corrupt { path, reason }) => {
            assert!(path.ends_with("tmp"), "{path:?}");
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
}

#[tokio::test]
async fn writes_never_follow_planted_links() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let settings = Settings::default();
    let victim_entry = outside.path().join("entry-target");
    fs::write(&victim_entry, b"precious").unwrap();

    // A pending entry replaced by a link: the claim must not write its lease
    // through it.
    let id = store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    let entry = fs::read_dir(dir.path().join("pending"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(&entry).unwrap();
    symlink(&victim_entry, &entry).unwrap();
    let claimed = claim_all(&store).await;
    assert_eq!(fs::read(&victim_entry).unwrap(), b"precious");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    assert_eq!(store.get(id).await.unwrap().status, TaskStatus::Running);
    drop(store);

    // A link in place of the journal is removed on open; its target is not
    // truncated.
    let victim_intent = outside.path().join("intent-target");
    fs::write(&victim_intent, b"precious").unwrap();
    fs::remove_file(dir.path().join("intent.json")).unwrap();
    symlink(&victim_intent, dir.path().join("intent.json")).unwrap();
    let store = open(dir.path()).await;
    store
        .enqueue_many(vec![NewTask::new("t"), NewTask::new("t")], &settings)
        .await
        .unwrap();
    assert_eq!(fs::read(&victim_intent).unwrap(), b"precious");
    assert!(!fs::symlink_metadata(dir.path().join("intent.json"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A dangling link exactly where a new task's entry goes: the enqueue is
    // refused naming the link, its target is never created, and
    // `check --repair` removes the link so the enqueue then succeeds.
    let dangling = outside.path().join("never-created");
    let next = omniq_core::TaskId::new();
    let eta = time::macros::datetime!(2030-01-01 0:00 UTC);
    let task = NewTask::new("t")
        .id(next)
        .eta(eta)
        .into_task(&settings, OffsetDateTime::now_utc())
        .unwrap();
    let key = (eta.unix_timestamp_nanos() - i128::from(i64::MIN)) as u64;
    let link = dir.path().join(format!("pending/{key:020}-{next}"));
    symlink(&dangling, &link).unwrap();
    let refused = store.enqueue(vec![task.clone()]).await.unwrap_err();
    assert!(refused.to_string().contains("symbolic link"), "{refused}");
    assert!(!dangling.exists());
    let report = store.check(true).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("symbolic link")),
        "{:?}",
        report.problems
    );
    assert!(fs::symlink_metadata(&link).is_err(), "the link is gone");
    store.enqueue(vec![task]).await.unwrap();
    assert!(!dangling.exists());
    assert!(fs::metadata(&link).unwrap().is_file());
}

#[tokio::test]
async fn files_and_folders_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("store");
    let store = open(&base).await;
    let settings = Settings::default();
    let id = store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    store
        .enqueue_many(vec![NewTask::new("t"), NewTask::new("t")], &settings)
        .await
        .unwrap();
    claim_all(&store).await;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&base), 0o700);
    for folder in ["tasks", "pending", "running", "completed", "tmp", "quarantine"] {
        assert_eq!(mode(&base.join(folder)), 0o700, "{folder}");
    }
    for file in [
        "lock",
        "intent.json",
        &format!("tasks/task-{id}.json"),
        &format!("running/{id}"),
    ] {
        assert_eq!(mode(&base.join(file)), 0o600, "{file}");
    }
}

#[tokio::test]
async fn a_setgid_store_folder_is_shared_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("shared");
    fs::create_dir(&base).unwrap();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o2770)).unwrap();
    let store = open(&base).await;
    let id = store
        .enqueue_one(NewTask::new("t"), &Settings::default())
        .await
        .unwrap();
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&base.join("tasks")), 0o2770);
    assert_eq!(mode(&base.join(format!("tasks/task-{id}.json"))), 0o660);
    assert_eq!(mode(&base.join("lock")), 0o660);
}

#[tokio::test]
async fn a_held_lock_fails_after_the_timeout_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).await);
    // Another open of the lock file, as a stopped process would hold it.
    let holder = File::options().write(true).open(dir.path().join("lock")).unwrap();
    holder.lock().unwrap();
    let started = std::time::Instant::now();
    let refused = FileStorage::open_with(dir.path(), Durability::Normal, Duration::from_millis(200)).await;
    let message = refused.unwrap_err().to_string();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        message.contains(&dir.path().join("lock").display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("process {}", std::process::id())),
        "{message}"
    );
    // Let go, and the next open gets in.
    holder.unlock().unwrap();
    FileStorage::open_with(dir.path(), Durability::Normal, Duration::from_millis(200))
        .await
        .expect("the lock is free again");
}

#[tokio::test]
async fn a_lock_released_while_waiting_is_taken_at_once() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).await);
    let holder = File::options().write(true).open(dir.path().join("lock")).unwrap();
    holder.lock().unwrap();
    let path = dir.path().to_path_buf();
    let opening = tokio::spawn(async move {
        FileStorage::open_with(&path, Durability::Normal, Duration::from_secs(60)).await
    });
    tokio::task::yield_now().await;
    holder.unlock().unwrap();
    opening.await.unwrap().expect("opened once the lock came free");
}

#[tokio::test]
async fn quarantined_records_are_visible_to_check_get_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let settings = Settings::default();
    let ids = store
        .enqueue_many((0..3).map(|_| NewTask::new("t")).collect(), &settings)
        .await
        .unwrap();
    fs::write(
        dir.path().join(format!("tasks/task-{}.json", ids[1])),
        b"{\"id\": 7",
    )
    .unwrap();
    // A worker's claim meets the damaged record.
    assert_eq!(claim_all(&store).await.len(), 2);
    let counts = store.counts().await.unwrap();
    let listed = store.list(Default::default()).await.unwrap();
    assert_eq!(counts.total(), listed.len() as u64, "counts agree with the list");
    match store.get(ids[1]).await {
        Err(Error::Corrupt { path, .. }) => assert!(path.to_string_lossy().contains("quarantine")),
        other => panic!("expected the quarantined record, got {other:?}"),
    }
    let report = store.check(false).await.unwrap();
    assert!(!report.is_healthy());
    assert_eq!(report.held.len(), 1);
    assert!(
        report.held[0].reason.contains("not a readable task record"),
        "{:?}",
        report.held
    );
    assert!(report.held[0].when.is_some());
}

#[tokio::test]
async fn records_that_lost_their_entries_are_found_by_the_lease_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = store
        .enqueue_one(NewTask::new("t"), &Settings::default())
        .await
        .unwrap();
    for entry in fs::read_dir(dir.path().join("pending")).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert!(claim_all(&store).await.is_empty());
    store.requeue_expired(OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(store.counts().await.unwrap().pending, 1);
    let claimed = claim_all(&store).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
}

#[tokio::test]
async fn names_no_omniq_wrote_never_panic_and_repair_moves_them_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // 57 bytes with a two-byte character across byte 20.
    let odd = format!("0000000000000000000é{}", "x".repeat(36));
    assert_eq!(odd.len(), 57);
    fs::write(dir.path().join("completed").join(&odd), b"").unwrap();
    assert_eq!(store.purge(OffsetDateTime::now_utc()).await.unwrap(), 0);
    let report = store.check(true).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("not an entry")),
        "{:?}",
        report.problems
    );
    assert!(!dir.path().join("completed").join(&odd).exists());
    assert_eq!(store.purge(OffsetDateTime::now_utc()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_read_only_store_reports_damage_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = store
        .enqueue_many((0..3).map(|_| NewTask::new("t")).collect(), &Settings::default())
        .await
        .unwrap();
    drop(store);
    let record = dir.path().join(format!("tasks/task-{}.json", ids[0]));
    fs::write(&record, b"[").unwrap();
    let reader = FileStorage::open_read_only(dir.path(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reader.list(Default::default()).await.unwrap().len(), 2);
    let damaged = reader.damaged().await.unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].id, ids[0].to_string());
    assert_eq!(damaged[0].location, record);
    assert!(record.exists(), "a read-only store moved the record");
    assert_eq!(fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 0);
    assert!(matches!(
        reader.enqueue_one(NewTask::new("t"), &Settings::default()).await,
        Err(Error::Unsupported(_))
    ));
}
