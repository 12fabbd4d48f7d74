//! What is specific to the file backend: the layout on disk, corrupt and
//! foreign files, ids that try to leave the folder, and recovery from a crash
//! between any two file-system steps of every change.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use omniq_core::{
    ClaimRequest, Durability, Error, NewTask, Outcome, Settings, Storage, StorageExt, Task, TaskError,
    TaskId, TaskStatus,
};
use omniq_file::FileStorage;
use serde_json::json;
use time::macros::datetime;
use time::OffsetDateTime;

const T0: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

fn at(ms: u64) -> OffsetDateTime {
    T0 + Duration::from_millis(ms)
}

async fn open(dir: &Path) -> FileStorage {
    FileStorage::open_path(dir, Durability::Normal).await.unwrap()
}

async fn enqueue(store: &FileStorage, tasks: Vec<NewTask>) -> Vec<TaskId> {
    let tasks: Vec<Task> = tasks
        .into_iter()
        .map(|t| t.into_task(&Settings::default(), T0).unwrap())
        .collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    store.enqueue(tasks).await.unwrap();
    ids
}

async fn claim(store: &FileStorage, limit: usize, now: OffsetDateTime) -> Vec<Task> {
    store
        .claim(ClaimRequest {
            queue: omniq_core::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit,
            lease_for: Duration::from_secs(30),
            now,
        })
        .await
        .unwrap()
}

async fn finish(
    store: &FileStorage,
    task: &Task,
    outcome: Outcome,
    now: OffsetDateTime,
) -> omniq_core::Result<()> {
    store.finish_one(task, outcome, now).await.map(|_| ())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn the_layout_is_readable_and_counts_are_folder_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = enqueue(
        &store,
        (0..5).map(|i| NewTask::new("t").args(vec![json!(i)])).collect(),
    )
    .await;
    let claimed = claim(&store, 2, T0).await;
    finish(
        &store,
        &claimed[0],
        Outcome::Complete {
            result: json!("done"),
        },
        at(1),
    )
    .await
    .unwrap();

    // `ls pending | wc -l` is the pending count, and so on for every status.
    assert_eq!(count(&dir.path().join("pending")), 3);
    assert_eq!(count(&dir.path().join("running")), 1);
    assert_eq!(count(&dir.path().join("completed")), 1);
    assert_eq!(count(&dir.path().join("tasks")), 5);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.pending, counts.running, counts.completed), (3, 1, 1));

    // Records are plain JSON a person can read.
    let record =
        std::fs::read_to_string(dir.path().join(format!("tasks/task-{}.json", claimed[0].id))).unwrap();
    let value: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(value["status"], "completed");
    assert_eq!(value["result"], "done");
    assert_eq!(value["func_path"], "t");
    // The running entry carries the lease.
    let lease = std::fs::read_to_string(dir.path().join(format!("running/{}", claimed[1].id))).unwrap();
    let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["worker_id"], "w");
    assert!(ids.contains(&claimed[1].id));
    assert!(std::fs::read(dir.path().join("intent.json"))
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test]
async fn a_corrupt_record_is_quarantined_and_the_rest_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = enqueue(&store, (0..4).map(|_| NewTask::new("t")).collect()).await;
    let bad = ids[1];
    let record = dir.path().join(format!("tasks/task-{bad}.json"));
    std::fs::write(&record, b"{\"id\": \"truncated").unwrap();

    // A direct read says what is wrong and where the file went.
    let err = store.get(bad).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("quarantine"), "{err}");
    assert!(!record.exists());
    // The record, and the file holding why it was moved.
    let quarantined: Vec<_> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .collect();
    assert_eq!(quarantined.len(), 2);

    // Every other task is claimed and finished as usual.
    let claimed = claim(&store, 10, T0).await;
    let claimed_ids: Vec<TaskId> = claimed.iter().map(|t| t.id).collect();
    assert_eq!(claimed_ids, vec![ids[0], ids[2], ids[3]]);
    for task in &claimed {
        finish(&store, task, Outcome::Complete { result: json!(1) }, at(1))
            .await
            .unwrap();
    }
    assert_eq!(store.counts().await.unwrap().completed, 3);
    assert_eq!(
        store.counts().await.unwrap().pending,
        0,
        "the corrupt task's entry is gone too"
    );
}

#[tokio::test]
async fn a_corrupt_record_found_by_a_claim_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = enqueue(&store, (0..3).map(|_| NewTask::new("t")).collect()).await;
    std::fs::write(
        dir.path().join(format!("tasks/task-{}.json", ids[0])),
        [0xff, 0xfe, 0x00],
    )
    .unwrap();
    let claimed = claim(&store, 10, T0).await;
    assert_eq!(claimed.len(), 2);
    // The record and the file holding why it was moved.
    assert_eq!(count(&dir.path().join("quarantine")), 2);
    match store.get(ids[0]).await {
        Err(Error::Corrupt { path, reason }) => {
            assert!(path.starts_with(dir.path().join("quarantine")), "{path:?}");
            assert!(reason.contains("not a readable task record"), "{reason}");
        }
        other => panic!("expected the quarantined record, got {other:?}"),
    }
}

#[tokio::test]
async fn foreign_files_and_hostile_names_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), b"secret").unwrap();
    let id = TaskId::new();
    // A record that is a link to a file outside the store: it is not a task, and
    // quarantining it moves the link, never the file it points to.
    std::os::unix::fs::symlink(outside.path(), dir.path().join(format!("tasks/task-{id}.json"))).unwrap();
    std::fs::write(dir.path().join(format!("pending/00000000000000000000-{id}")), b"").unwrap();
    std::fs::write(dir.path().join("pending/..%2f..%2fetc%2fpasswd"), b"").unwrap();
    std::fs::write(dir.path().join("tasks/task-../../x.json.txt"), b"").unwrap_or(());
    std::fs::write(dir.path().join("tasks/notes.txt"), b"hello").unwrap();

    assert!(claim(&store, 10, T0).await.is_empty());
    assert_eq!(std::fs::read(outside.path()).unwrap(), b"secret");
    assert_eq!(store.counts().await.unwrap().pending, 0);
    assert!(store.list(Default::default()).await.unwrap().is_empty());
    for bad in ["../../etc/passwd", "..", "task-x", ""] {
        assert!(
            matches!(TaskId::parse(bad), Err(Error::InvalidId { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn full_durability_flushes_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let normal = open(&dir.path().join("normal")).await;
    enqueue(&normal, vec![NewTask::new("t")]).await;
    assert_eq!(normal.fsync_count(), 0);
    let full = FileStorage::open_path(dir.path().join("full"), Durability::Full)
        .await
        .unwrap();
    enqueue(&full, vec![NewTask::new("t")]).await;
    let after_enqueue = full.fsync_count();
    assert!(
        after_enqueue >= 3,
        "record file, its folder and the entry's folder: {after_enqueue}"
    );
    let claimed = claim(&full, 1, T0).await;
    finish(&full, &claimed[0], Outcome::Complete { result: json!(1) }, at(1))
        .await
        .unwrap();
    assert!(full.fsync_count() > after_enqueue);
}

#[tokio::test]
async fn an_intent_cut_short_is_a_change_that_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = enqueue(&store, vec![NewTask::new("t"), NewTask::new("t")]).await;
    drop(store);
    // A process killed while writing the intent of a claim leaves part of it.
    let intent = format!(r#"{{"save":[{{"id":"{}","status":"runn"#, ids[0]);
    std::fs::write(dir.path().join("intent.json"), intent).unwrap();

    let store = open(dir.path()).await;
    assert_consistent(dir.path());
    assert_eq!(store.counts().await.unwrap().pending, 2);
    assert_eq!(claim(&store, 10, T0).await.len(), 2);
}

#[tokio::test]
async fn settings_open_the_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::builder()
        .base_dir(dir.path().join("q"))
        .build()
        .unwrap();
    let store = FileStorage::open(&settings).await.unwrap();
    store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    assert_eq!(count(&dir.path().join("q/pending")), 1);
    let msgpack = Settings::builder()
        .base_dir(dir.path())
        .serializer(omniq_core::Serializer::MsgPack)
        .build()
        .unwrap();
    assert!(matches!(
        FileStorage::open(&msgpack).await,
        Err(Error::InvalidConfig { .. })
    ));
}

#[tokio::test]
async fn an_unusable_base_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = FileStorage::open_path(file.join("store"), Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

// ---- crashes between steps ----

/// The changes whose every crash point is tested, each set up on a fresh store.
#[derive(Clone, Copy, Debug)]
enum Change {
    EnqueueOne,
    EnqueueBatch,
    Claim,
    Complete,
    RetryLater,
    CompleteInterval,
    CancelPending,
    CancelRunning,
    RetryFailed,
    Purge,
    RequeueExpired,
    Renew,
}

const CHANGES: [Change; 12] = [
    Change::EnqueueOne,
    Change::EnqueueBatch,
    Change::Claim,
    Change::Complete,
    Change::RetryLater,
    Change::CompleteInterval,
    Change::CancelPending,
    Change::CancelRunning,
    Change::RetryFailed,
    Change::Purge,
    Change::RequeueExpired,
    Change::Renew,
];

/// Sets up the store a change starts from; returns the tasks it works on.
async fn set_up(store: &FileStorage, change: Change) -> Vec<Task> {
    let ids = enqueue(
        store,
        vec![
            NewTask::new("a").max_retries(0).unique_key("ka"),
            NewTask::new("b")
                .interval(Duration::from_secs(60))
                .unique_key("kb"),
            // A priority other than 0 puts it in its entry's name.
            NewTask::new("c").priority(-1),
        ],
    )
    .await;
    match change {
        Change::EnqueueOne | Change::EnqueueBatch | Change::Claim | Change::CancelPending => {
            vec![store.get(ids[0]).await.unwrap()]
        }
        Change::Complete | Change::RetryLater | Change::CancelRunning | Change::Renew => {
            claim(store, 1, T0).await
        }
        Change::CompleteInterval => {
            let claimed = claim(store, 2, T0).await;
            vec![claimed[1].clone()]
        }
        Change::RetryFailed | Change::Purge => {
            let claimed = claim(store, 1, T0).await;
            let error = TaskError::new("handler", "boom", 1, true);
            finish(store, &claimed[0], Outcome::Fail { error }, at(1))
                .await
                .unwrap();
            vec![store.get(ids[0]).await.unwrap()]
        }
        Change::RequeueExpired => claim(store, 2, T0).await,
    }
}

async fn run(store: &FileStorage, change: Change, tasks: &[Task]) -> omniq_core::Result<()> {
    match change {
        Change::EnqueueOne => store
            .enqueue(vec![NewTask::new("d")
                .unique_key("kd")
                .into_task(&Settings::default(), T0)?])
            .await
            .map(drop),
        Change::EnqueueBatch => {
            let batch = (0..3)
                .map(|_| NewTask::new("e").into_task(&Settings::default(), T0))
                .collect::<omniq_core::Result<Vec<_>>>()?;
            store.enqueue(batch).await.map(drop)
        }
        Change::Claim => {
            store
                .claim(ClaimRequest {
                    queue: omniq_core::DEFAULT_QUEUE.into(),
                    worker_id: "w".into(),
                    limit: 2,
                    lease_for: Duration::from_secs(30),
                    now: at(5),
                })
                .await?;
            Ok(())
        }
        Change::Complete | Change::CompleteInterval => {
            finish(store, &tasks[0], Outcome::Complete { result: json!(1) }, at(5)).await
        }
        Change::RetryLater => {
            let error = TaskError::new("handler", "boom", 1, true);
            finish(store, &tasks[0], Outcome::Retry { error, at: at(9_000) }, at(5)).await
        }
        Change::CancelPending | Change::CancelRunning => store.cancel(tasks[0].id, at(5)).await.map(|_| ()),
        Change::RetryFailed => store.retry(tasks[0].id, at(5)).await,
        Change::Purge => store.purge(at(1_000)).await.map(|_| ()),
        Change::RequeueExpired => store.requeue_expired(at(60_000)).await.map(|_| ()),
        Change::Renew => {
            let lease = omniq_core::LeaseRef {
                id: tasks[0].id,
                token: tasks[0].lease.as_ref().unwrap().token,
            };
            store
                .renew(&[lease], Duration::from_secs(30), at(5))
                .await
                .map(|_| ())
        }
    }
}

/// What a store holds: the status of every task that existed before the change,
/// and how many new tasks there are per status.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    known: BTreeMap<TaskId, TaskStatus>,
    new: BTreeMap<TaskStatus, usize>,
}

async fn snapshot(store: &FileStorage, known: &[TaskId]) -> Snapshot {
    let mut snapshot = Snapshot {
        known: BTreeMap::new(),
        new: BTreeMap::new(),
    };
    for task in store.list(Default::default()).await.unwrap() {
        if known.contains(&task.id) {
            snapshot.known.insert(task.id, task.status);
        } else {
            *snapshot.new.entry(task.status).or_default() += 1;
        }
    }
    snapshot
}

/// Every record has exactly one entry, in its status's folder, under the right
/// name; no entry outlives its record except a pending one, which claims discard.
fn assert_consistent(dir: &Path) {
    assert!(
        std::fs::read(dir.join("intent.json"))
            .unwrap_or_default()
            .is_empty(),
        "the unfinished change was not replayed"
    );
    let mut records = HashMap::new();
    for entry in std::fs::read_dir(dir.join("tasks")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let task: Task = serde_json::from_slice(&bytes).expect("every record is whole JSON");
        records.insert(task.id, task);
    }
    let mut entries: HashMap<TaskId, Vec<(TaskStatus, String)>> = HashMap::new();
    for status in TaskStatus::ALL {
        for entry in std::fs::read_dir(dir.join(status.as_str())).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            // The id ends the name, or its part before the queue and priority.
            let base = name.split('~').next().unwrap();
            let id: TaskId = base[base.len() - 36..].parse().unwrap();
            entries.entry(id).or_default().push((status, name));
        }
    }
    for (id, task) in &records {
        let found = entries.remove(id).unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "task {id} ({}) has entries {found:?}",
            task.status
        );
        assert_eq!(
            found[0].0, task.status,
            "task {id}'s entry is in the wrong folder"
        );
    }
    for (id, stray) in entries {
        assert!(
            stray.iter().all(|(status, _)| *status == TaskStatus::Pending),
            "entry without a record for {id}: {stray:?}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every pending or running task with a unique key holds it: another
/// enqueue with the key is answered as its duplicate.
async fn assert_keys_held(store: &FileStorage, context: &str) {
    for task in store.list(Default::default()).await.unwrap() {
        let Some(key) = task.unique_key.clone() else {
            continue;
        };
        if !matches!(task.status, TaskStatus::Pending | TaskStatus::Running) {
            continue;
        }
        let again = NewTask::new("again")
            .unique_key(key)
            .into_task(&Settings::default(), T0)
            .unwrap();
        let answer = store.enqueue(vec![again]).await.unwrap();
        assert_eq!(
            answer,
            [omniq_core::Enqueued {
                id: task.id,
                duplicate: true
            }],
            "{context}: {task:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_is_repaired() {
    for change in CHANGES {
        let mut crash_points = 0;
        for step in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path()).await;
            let tasks = set_up(&store, change).await;
            let known: Vec<TaskId> = store
                .list(Default::default())
                .await
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect();
            let before = snapshot(&store, &known).await;
            // What the change leaves when it completes, from a copy of the folder.
            let clean = tempfile::tempdir().unwrap();
            copy_dir(dir.path(), clean.path());
            let clean_store = open(clean.path()).await;
            run(&clean_store, change, &tasks).await.unwrap();
            let after = snapshot(&clean_store, &known).await;

            store.crash_before_step(step);
            let result = run(&store, change, &tasks).await;
            if result.is_ok() {
                assert!(
                    step >= store.steps_taken(),
                    "{change:?}: succeeded despite a crash at step {step}"
                );
                break;
            }
            crash_points += 1;
            let err = result.unwrap_err();
            assert!(
                err.to_string().contains("simulated crash"),
                "{change:?} step {step}: {err}"
            );
            drop(store);

            // The next process to open the folder repairs it: the change happened
            // whole or not at all, and the store is consistent.
            let reopened = open(dir.path()).await;
            assert_consistent(dir.path());
            assert_keys_held(&reopened, &format!("{change:?} crashed before step {step}")).await;
            let now = snapshot(&reopened, &known).await;
            assert!(
                now == before || now == after,
                "{change:?} crashed before step {step}: {now:?}\nbefore: {before:?}\nafter: {after:?}"
            );
            // And work goes on: the dead process's claims expire, and everything
            // due can be claimed and finished.
            reopened.requeue_expired(at(10_000_000)).await.unwrap();
            for task in claim(&reopened, 100, at(10_000_000)).await {
                finish(
                    &reopened,
                    &task,
                    Outcome::Complete { result: json!(null) },
                    at(10_000_001),
                )
                .await
                .unwrap();
            }
            assert_consistent(dir.path());
            // Only the next occurrence of the interval task is left, not yet due.
            assert!(
                claim(&reopened, 100, at(10_000_000)).await.is_empty(),
                "{change:?} step {step}"
            );
            assert_eq!(
                reopened.counts().await.unwrap().running,
                0,
                "{change:?} step {step}"
            );
        }
        assert!(crash_points > 0, "{change:?} took no step at all");
    }
}

/// `check` finds a live task whose key file was deleted by hand, and
/// `--repair` writes it back; a key file left naming a finished task holds
/// nothing.
#[tokio::test]
async fn check_restores_a_missing_key_file_and_stale_ones_hold_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = enqueue(&store, vec![NewTask::new("k").unique_key("invoice:1")]).await;
    let keys = dir.path().join("keys");
    let files: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), ids[0].to_string());

    std::fs::remove_file(&files[0]).unwrap();
    let report = store.check(false).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("invoice:1")),
        "{:?}",
        report.problems
    );
    let report = store.check(true).await.unwrap();
    assert_eq!(report.repaired, 1);
    assert!(store.check(false).await.unwrap().problems.is_empty());
    let again = NewTask::new("k")
        .unique_key("invoice:1")
        .into_task(&Settings::default(), T0)
        .unwrap();
    assert_eq!(store.enqueue(vec![again]).await.unwrap()[0].id, ids[0]);

    // The key file outlives its task's end only if the process died between
    // the two writes; simulated here by writing it back by hand.
    store.cancel(ids[0], T0).await.unwrap();
    assert!(
        std::fs::read_dir(&keys).unwrap().next().is_none(),
        "the key is given up"
    );
    std::fs::write(&files[0], ids[0].to_string()).unwrap();
    let fresh = NewTask::new("k")
        .unique_key("invoice:1")
        .into_task(&Settings::default(), T0)
        .unwrap();
    let answer = store.enqueue(vec![fresh.clone()]).await.unwrap();
    assert!(!answer[0].duplicate);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), fresh.id.to_string());
}
