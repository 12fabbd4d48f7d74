//! What is specific to the SQLite backend: the file layout and pragmas, how
//! foreign, corrupt, newer and older databases are handled, and persistence.

use std::path::Path;

use omniq_core::{Durability, Error, NewTask, Settings, Storage, StorageExt, TaskStatus};
use omniq_sqlite::schema::{APPLICATION_ID, CURRENT_VERSION, MIGRATIONS};
use omniq_sqlite::SqliteStorage;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

async fn raw(path: &Path) -> sqlx::SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap()
}

/// A database at schema `version`, as the release that wrote it left it,
/// holding one pending task (`old.job`).
async fn older_database(path: &Path, version: usize) {
    let mut conn = raw(path).await;
    for migration in &MIGRATIONS[..version] {
        conn.execute(*migration).await.unwrap();
    }
    conn.execute(
        format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {version}").as_str(),
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO tasks VALUES ('0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f', 'old.job', '[1]', '{}', 'pending', \
         0, NULL, 3, NULL, 0, 0, 0, NULL, NULL, NULL); \
         INSERT INTO pending VALUES ('0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f', 0);",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn layout_has_the_five_tables_the_paused_queues_the_schedules_and_the_upkeep_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    store
        .enqueue_one(NewTask::new("t"), &Settings::default())
        .await
        .unwrap();
    assert_eq!(store.pragma("journal_mode").await.unwrap(), "wal");
    assert_eq!(store.schema_version().await.unwrap(), CURRENT_VERSION);
    assert_eq!(store.integrity_check().await.unwrap(), vec!["ok".to_string()]);
    drop(store);

    let mut conn = raw(&path).await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        tables,
        [
            "completed",
            "paused_queues",
            "pending",
            "queue_limits",
            "rate_buckets",
            "results",
            "running",
            "schedules",
            "tasks",
            "turns",
            "workers"
        ]
    );
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        mode, "wal",
        "WAL is a property of the file, seen by every connection"
    );
}

#[tokio::test]
async fn durability_sets_and_checks_synchronous() {
    let dir = tempfile::tempdir().unwrap();
    let normal = SqliteStorage::open_path(dir.path().join("n.db"), Durability::Normal)
        .await
        .unwrap();
    assert_eq!(normal.pragma("synchronous").await.unwrap(), "1");
    let full = SqliteStorage::open_path(dir.path().join("f.db"), Durability::Full)
        .await
        .unwrap();
    assert_eq!(full.pragma("synchronous").await.unwrap(), "2");
}

#[tokio::test]
async fn settings_choose_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::builder()
        .base_dir(dir.path().join("data"))
        .build()
        .unwrap();
    let store = SqliteStorage::open(&settings).await.unwrap();
    assert_eq!(store.path(), dir.path().join("data/omniq.db"));
    let custom = Settings::builder()
        .base_dir(dir.path())
        .db_path(dir.path().join("elsewhere/custom.db"))
        .build()
        .unwrap();
    SqliteStorage::open(&custom).await.unwrap();
    assert!(dir.path().join("elsewhere/custom.db").exists());
    let msgpack = Settings::builder()
        .base_dir(dir.path())
        .serializer(omniq_core::Serializer::MsgPack)
        .build()
        .unwrap();
    let err = SqliteStorage::open(&msgpack).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { ref name, .. } if name == "OMNIQ_SERIALIZER"),
        "{err}"
    );
}

#[tokio::test]
async fn tasks_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    let id = store
        .enqueue_one(
            NewTask::with_payload("t", &serde_json::json!({"k": [1, 2]})).unwrap(),
            &Settings::default(),
        )
        .await
        .unwrap();
    let before = store.get(id).await.unwrap();
    drop(store);
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), before);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let garbage = b"this is a text file, certainly not SQLite\n".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStorage::open_path(&path, Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[tokio::test]
async fn another_programs_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = raw(&path).await;
    conn.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'ada');",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStorage::open_path(&path, Durability::Normal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an OmniQ database"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn a_database_from_a_newer_omniq_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    drop(SqliteStorage::open_path(&path, Durability::Normal).await.unwrap());
    let mut conn = raw(&path).await;
    conn.execute(format!("PRAGMA user_version = {}", CURRENT_VERSION + 1).as_str())
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStorage::open_path(&path, Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("newer OmniQ"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn an_older_database_is_migrated_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    // A version 1 database with a task in it, as the first release wrote it.
    older_database(&path, 1).await;

    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), CURRENT_VERSION);
    let id = "0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f".parse().unwrap();
    let task = store.get(id).await.unwrap();
    assert_eq!(
        (task.func_path.as_str(), task.status),
        ("old.job", TaskStatus::Pending)
    );
    let indexes: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_schema WHERE name = 'tasks_series'")
        .fetch_one(&mut raw(&path).await)
        .await
        .unwrap();
    assert_eq!(indexes, 1, "the version 2 migration ran");
}

#[tokio::test]
async fn an_unwritable_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    // A path below a regular file can never be created, even by root.
    let err = SqliteStorage::open_path(file.join("omniq.db"), Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn a_damaged_row_is_reported_as_corrupt_and_the_rest_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    let settings = Settings::default();
    let damaged = store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    let sound = store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();

    // Someone edits the database by hand and breaks one payload.
    let mut conn = raw(&path).await;
    sqlx::query("UPDATE tasks SET args = '[1, 2' WHERE id = ?1")
        .bind(damaged.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    match store.get(damaged).await {
        Err(Error::Corrupt { path: at, reason }) => {
            assert_eq!(at, path);
            assert!(
                reason.contains(&damaged.to_string()) && reason.contains("args"),
                "{reason}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(store.get(sound).await.unwrap().status, TaskStatus::Pending);
}

/// Claims and finishes that reach the writer together go to SQLite as one
/// command; a finish that meets an interval task, or a stale lease, must still
/// get its own right answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sent_together_are_each_answered_rightly() {
    use omniq_core::{ClaimRequest, Finish, FinishOutcome, Outcome};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
            .await
            .unwrap(),
    );
    let now = time::OffsetDateTime::now_utc();
    let settings = Settings::default();
    let mut tasks: Vec<_> = (0..300)
        .map(|i| {
            NewTask::new("plain")
                .args(vec![serde_json::json!(i)])
                .into_task(&settings, now)
                .unwrap()
        })
        .collect();
    tasks.push(
        NewTask::new("tick")
            .interval(Duration::from_secs(3600))
            .into_task(&settings, now)
            .unwrap(),
    );
    store.enqueue(tasks).await.unwrap();

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut applied = Vec::new();
                loop {
                    let claimed = store
                        .claim(ClaimRequest {
                            queue: omniq_core::DEFAULT_QUEUE.into(),
                            worker_id: format!("w{w}"),
                            limit: 3,
                            lease_for: Duration::from_secs(60),
                            now,
                        })
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        return applied;
                    }
                    let mut finishes: Vec<Finish> = claimed
                        .iter()
                        .map(|t| Finish {
                            id: t.id,
                            token: t.lease.as_ref().unwrap().token,
                            outcome: Outcome::Complete {
                                result: t.args.first().cloned().unwrap_or_default(),
                            },
                        })
                        .collect();
                    // A finish of a task nobody holds is refused, whatever it rides with.
                    finishes.push(Finish {
                        id: omniq_core::TaskId::new(),
                        token: omniq_core::LeaseToken::new(),
                        outcome: Outcome::Complete {
                            result: serde_json::json!(null),
                        },
                    });
                    let answers = store.finish(finishes.clone(), now).await.unwrap();
                    assert_eq!(answers.last(), Some(&FinishOutcome::LeaseLost));
                    for (finish, answer) in finishes.iter().zip(&answers).take(claimed.len()) {
                        assert!(matches!(answer, FinishOutcome::Applied { .. }), "{answer:?}");
                        applied.push((finish.id, answer.clone()));
                    }
                }
            })
        })
        .collect();
    let mut applied = Vec::new();
    for worker in workers {
        applied.extend(worker.await.unwrap());
    }
    assert_eq!(applied.len(), 301, "every task once");
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.completed, counts.pending, counts.running), (301, 1, 0));
    for (id, answer) in applied {
        let task = store.get(id).await.unwrap();
        assert_eq!(task.status, TaskStatus::Completed);
        match task.func_path.as_str() {
            "tick" => assert!(
                matches!(answer, FinishOutcome::Applied { next: Some(_), .. }),
                "{answer:?}"
            ),
            _ => assert_eq!(task.result, task.args.first().cloned()),
        }
    }
}

/// A change that fails inside a command shared with others (here a finish
/// refused by a trigger another tool added) is undone with its group; nothing
/// is lost, and each change can be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_change_among_others_loses_nothing() {
    use omniq_core::{ClaimRequest, Finish, FinishOutcome, Outcome};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    let settings = Settings::default();
    for _ in 0..2 {
        store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    }
    let now = time::OffsetDateTime::now_utc();
    let request = || ClaimRequest {
        queue: omniq_core::DEFAULT_QUEUE.into(),
        worker_id: "w".into(),
        limit: 1,
        lease_for: Duration::from_secs(60),
        now,
    };
    let first = store.claim(request()).await.unwrap().pop().unwrap();
    let finish = Finish {
        id: first.id,
        token: first.lease.as_ref().unwrap().token,
        outcome: Outcome::Complete {
            result: serde_json::json!("done"),
        },
    };

    let mut conn = raw(&path).await;
    conn.execute(
        format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON completed WHEN NEW.id = '{}' \
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
            first.id
        )
        .as_str(),
    )
    .await
    .unwrap();

    // Sent together, so the writer may run them as one command.
    let (finished, claimed) = tokio::join!(store.finish(vec![finish.clone()], now), store.claim(request()));
    let error = finished.unwrap_err().to_string();
    assert!(error.contains("refused by a trigger"), "{error}");
    let counts = store.counts().await.unwrap();
    match claimed {
        Ok(tasks) => {
            assert_eq!(tasks.len(), 1);
            assert_eq!((counts.pending, counts.running), (0, 2));
        }
        // Undone with the group: the second task is still waiting.
        Err(_) => assert_eq!((counts.pending, counts.running), (1, 1)),
    }
    assert_eq!(store.get(first.id).await.unwrap().status, TaskStatus::Running);

    conn.execute("DROP TRIGGER refuse").await.unwrap();
    let answers = store.finish(vec![finish], now).await.unwrap();
    assert!(matches!(answers[0], FinishOutcome::Applied { .. }), "{answers:?}");
    assert_eq!(
        store.get(first.id).await.unwrap().result,
        Some(serde_json::json!("done"))
    );
}

/// A row that cannot be read (written by hand, or by a build that let a
/// payload too deep to read back through) must not strand the tasks claimed
/// with it, nor stop the lease pass, listing or counting for the whole store.
#[tokio::test]
async fn an_unreadable_row_takes_no_other_task_down() {
    use omniq_core::{ClaimRequest, ListQuery};
    use time::OffsetDateTime;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    let settings = Settings::default();
    let ids = store
        .enqueue_many(
            (0..3).map(|_| NewTask::new("t").max_retries(0)).collect(),
            &settings,
        )
        .await
        .unwrap();
    let bad = ids[1];
    let deep = format!("[{}1{}]", "[".repeat(200), "]".repeat(200));
    let mut conn = raw(&path).await;
    sqlx::query("UPDATE tasks SET args = ?1 WHERE id = ?2")
        .bind(&deep)
        .bind(bad.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let now = OffsetDateTime::now_utc();
    let claimed = store
        .claim(ClaimRequest {
            queue: omniq_core::DEFAULT_QUEUE.into(),
            worker_id: "w".into(),
            limit: 3,
            lease_for: std::time::Duration::from_secs(1),
            now,
        })
        .await
        .expect("the claim answers with the readable tasks");
    let mut claimed_ids: Vec<_> = claimed.iter().map(|t| t.id).collect();
    claimed_ids.sort();
    assert_eq!(claimed_ids, [ids[0], ids[2]]);
    assert_eq!(store.list(ListQuery::default()).await.unwrap().len(), 2);
    assert_eq!(store.counts().await.unwrap().running, 3);

    let later = now + std::time::Duration::from_secs(5);
    let mut requeued = store
        .requeue_expired(later)
        .await
        .expect("the lease pass goes on");
    requeued.sort();
    assert_eq!(requeued, [ids[0], ids[2]]);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.failed, counts.running), (3, 0), "{counts:?}");
    let mut conn = raw(&path).await;
    let error: String = sqlx::query_scalar("SELECT error FROM results WHERE id = ?1")
        .bind(bad.to_string())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(error.contains("unreadable") && error.contains("args"), "{error}");
    assert!(matches!(store.get(bad).await, Err(Error::Corrupt { .. })));
    let damaged = store.damaged().await.unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].id, bad.to_string());
    assert!(damaged[0].reason.contains("args"), "{:?}", damaged[0]);
}

/// A panic inside the writer answers its change with an error; later writes
/// in the process still work.
#[tokio::test]
async fn the_writer_outlives_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
        .await
        .unwrap();
    let settings = Settings::default();
    store.enqueue_one(NewTask::new("t"), &settings).await.unwrap();
    assert!(matches!(
        store.panic_in_writer().await,
        Err(Error::Backend { .. })
    ));
    let id = store
        .enqueue_one(NewTask::new("t"), &settings)
        .await
        .expect("the writer goes on");
    assert_eq!(store.get(id).await.unwrap().status, TaskStatus::Pending);
    assert_eq!(store.counts().await.unwrap().pending, 2);
}

/// Overwrites part of a database file, as a failing disk might.
fn damage(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&[0xAB; 8192]).unwrap();
}

#[tokio::test]
async fn a_damaged_file_is_named_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    store
        .enqueue_many(
            (0..200).map(|_| NewTask::new("t")).collect(),
            &Settings::default(),
        )
        .await
        .unwrap();
    // Fold the WAL into the file, so the damage hits the tasks.
    let mut conn = raw(&path).await;
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await.unwrap();
    conn.close().await.unwrap();
    drop(store);
    damage(&path);

    let found = omniq_sqlite::integrity_check_file(&path).await.unwrap();
    assert_ne!(found, ["ok"], "SQLite saw nothing wrong");
    let failed = match SqliteStorage::open_path(&path, Durability::Normal).await {
        Err(error) => error,
        Ok(store) => match store.list(Default::default()).await {
            Err(error) => error,
            Ok(_) => store.counts().await.unwrap_err(),
        },
    };
    match failed {
        Error::Corrupt { path: at, reason } | Error::Incompatible { path: at, reason } => {
            assert_eq!(at, path);
            assert!(
                reason.contains("backup") || reason.contains("another file"),
                "{reason}"
            );
        }
        other => panic!("the error does not name the file: {other:?}"),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_journal_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store/omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    store
        .enqueue_one(NewTask::new("t"), &Settings::default())
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.path().join("store")), 0o700);
    for file in ["omniq.db", "omniq.db-wal", "omniq.db-shm"] {
        assert_eq!(mode(&dir.path().join("store").join(file)), 0o600, "{file}");
    }
}

/// Opening to read changes nothing: an older database keeps its version and
/// every byte, and changes are refused.
#[tokio::test]
async fn a_read_only_open_leaves_an_older_database_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    older_database(&path, 2).await;
    let files = |dir: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        all.sort();
        all
    };
    let before = files(dir.path());

    let store = SqliteStorage::open_read_only(&path, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 2);
    assert_eq!(store.counts().await.unwrap().pending, 1);
    assert_eq!(store.list(Default::default()).await.unwrap().len(), 1);
    assert!(store
        .next_due(&[omniq_core::DEFAULT_QUEUE.into()])
        .await
        .unwrap()
        .is_some());
    assert!(store.damaged().await.unwrap().is_empty());
    assert!(matches!(
        store.enqueue_one(NewTask::new("t"), &Settings::default()).await,
        Err(Error::Unsupported(_))
    ));
    drop(store);
    assert_eq!(files(dir.path()), before, "a read changed the database");
}

/// A burst bigger than the WAL's size limit (64 MB) does not leave the WAL
/// file that long: once a checkpoint has copied it back, the next write cuts
/// it back to the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_cut_back_after_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omniq.db");
    let store = SqliteStorage::open_path(&path, Durability::Normal).await.unwrap();
    let settings = Settings::default();
    let big = "x".repeat(100_000);
    // About 100 MB in one transaction: the WAL must hold all of it at once.
    let tasks = (0..1_000)
        .map(|_| NewTask::new("t").args(vec![serde_json::json!(big)]))
        .collect();
    store.enqueue_many(tasks, &settings).await.unwrap();
    let wal = dir.path().join("omniq.db-wal");
    let after_burst = std::fs::metadata(&wal).unwrap().len();
    assert!(
        after_burst > 90 << 20,
        "the burst went through the WAL: {after_burst}"
    );
    // Commits after the checkpoint reuse the WAL from its start and cut it back.
    for _ in 0..3 {
        store.enqueue_one(NewTask::new("small"), &settings).await.unwrap();
    }
    let now = std::fs::metadata(&wal).unwrap().len();
    assert!(now <= 64 << 20, "the WAL stayed {now} bytes long");
}
