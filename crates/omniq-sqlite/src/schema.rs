//! The database layout, how an OmniQ database is recognised, and the migrations
//! that bring an older one forward.

use std::path::Path;

use omniq_core::{Error, Result};
use sqlx::{Connection, Executor, Row, SqliteConnection};

use crate::sql_error;

/// `PRAGMA application_id` of every OmniQ database: "OmnQ" in ASCII. A database
/// without it is some other program's, and is refused untouched.
pub const APPLICATION_ID: i32 = 0x4F6D_6E51;

/// One migration per schema version: `MIGRATIONS[i]` takes a database from
/// version `i` to `i + 1`. Released migrations are never edited, only appended.
pub const MIGRATIONS: &[&str] = &[
    // v1: the five tables of the layout.
    r#"
    CREATE TABLE tasks (
        id          TEXT PRIMARY KEY NOT NULL,
        func_path   TEXT NOT NULL,
        args        TEXT NOT NULL,
        kwargs      TEXT NOT NULL,
        status      TEXT NOT NULL
                    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        eta         INTEGER NOT NULL,
        interval_ns INTEGER,
        max_retries INTEGER NOT NULL,
        timeout_ns  INTEGER,
        attempts    INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        started_at  INTEGER,
        finished_at INTEGER,
        series      TEXT
    ) WITHOUT ROWID;
    CREATE TABLE results (
        id    TEXT PRIMARY KEY NOT NULL,
        value TEXT,
        error TEXT
    ) WITHOUT ROWID;
    CREATE TABLE pending (
        id  TEXT PRIMARY KEY NOT NULL,
        eta INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX pending_due ON pending (eta, id);
    CREATE TABLE running (
        id         TEXT PRIMARY KEY NOT NULL,
        worker_id  TEXT NOT NULL,
        token      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE completed (
        id          TEXT PRIMARY KEY NOT NULL,
        status      TEXT NOT NULL,
        finished_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // v2: indexes for listing by status, cancelling a series, finding expired
    // leases and purging old results without scanning.
    r#"
    CREATE INDEX tasks_status ON tasks (status, id);
    CREATE INDEX tasks_series ON tasks (series) WHERE series IS NOT NULL;
    CREATE INDEX running_expiry ON running (expires_at);
    CREATE INDEX completed_finished ON completed (finished_at);
    "#,
    // v3: `task_rows` shows each task whole; writing a row to it updates all five
    // tables inside SQLite. Saving no longer goes through it (bound multi-row
    // INSERTs measured faster than its trigger, see rows.rs); purging still
    // deletes through it.
    r#"
    CREATE VIEW task_rows AS
    SELECT t.id, t.func_path, t.args, t.kwargs, t.status, t.eta, t.interval_ns, t.max_retries,
           t.timeout_ns, t.attempts, t.created_at, t.updated_at, t.started_at, t.finished_at, t.series,
           r.value, r.error, rn.worker_id, rn.token, rn.expires_at, 0 AS is_new
    FROM tasks t LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id;

    CREATE TRIGGER task_rows_write INSTEAD OF INSERT ON task_rows BEGIN
        SELECT RAISE(ABORT, 'omniq: a task with this id already exists')
        WHERE NEW.is_new AND EXISTS (SELECT 1 FROM tasks WHERE id = NEW.id);
        REPLACE INTO tasks (id, func_path, args, kwargs, status, eta, interval_ns, max_retries,
                            timeout_ns, attempts, created_at, updated_at, started_at, finished_at, series)
        VALUES (NEW.id, NEW.func_path, NEW.args, NEW.kwargs, NEW.status, NEW.eta, NEW.interval_ns,
                NEW.max_retries, NEW.timeout_ns, NEW.attempts, NEW.created_at, NEW.updated_at,
                NEW.started_at, NEW.finished_at, NEW.series);
        DELETE FROM pending WHERE id = NEW.id AND NOT NEW.is_new;
        DELETE FROM running WHERE id = NEW.id AND NOT NEW.is_new;
        DELETE FROM completed WHERE id = NEW.id AND NOT NEW.is_new;
        DELETE FROM results WHERE id = NEW.id AND NOT NEW.is_new;
        INSERT INTO pending (id, eta) SELECT NEW.id, NEW.eta WHERE NEW.status = 'pending';
        INSERT INTO running (id, worker_id, token, expires_at)
            SELECT NEW.id, NEW.worker_id, NEW.token, NEW.expires_at WHERE NEW.status = 'running';
        INSERT INTO completed (id, status, finished_at)
            SELECT NEW.id, NEW.status, NEW.finished_at
            WHERE NEW.status IN ('completed', 'failed', 'cancelled');
        INSERT INTO results (id, value, error)
            SELECT NEW.id, NEW.value, NEW.error WHERE NEW.value IS NOT NULL OR NEW.error IS NOT NULL;
    END;

    CREATE TRIGGER task_rows_delete INSTEAD OF DELETE ON task_rows BEGIN
        DELETE FROM tasks WHERE id = OLD.id;
        DELETE FROM pending WHERE id = OLD.id;
        DELETE FROM running WHERE id = OLD.id;
        DELETE FROM completed WHERE id = OLD.id;
        DELETE FROM results WHERE id = OLD.id;
    END;
    "#,
    // v4: queues, priorities and unique keys. Earlier tasks land in `default`
    // with priority 0. `pending` carries the claim order of each queue
    // (priority, eta, id) in `pending_claim`, which a claim walks one priority
    // level at a time. The partial unique index is what makes a unique key
    // atomic across processes: at most one pending or running task per key.
    // `task_rows` shows the new columns; its insert trigger, which saving no
    // longer used, is gone, since its REPLACE would delete the holder of a
    // unique key instead of failing.
    r#"
    ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN unique_key TEXT;
    CREATE UNIQUE INDEX tasks_unique_live ON tasks (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');
    ALTER TABLE pending ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE pending ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    DROP INDEX pending_due;
    CREATE INDEX pending_claim ON pending (queue, priority, eta, id);
    CREATE TABLE paused_queues (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;

    DROP TRIGGER task_rows_write;
    DROP TRIGGER task_rows_delete;
    DROP VIEW task_rows;
    CREATE VIEW task_rows AS
    SELECT t.id, t.func_path, t.args, t.kwargs, t.status, t.eta, t.interval_ns, t.max_retries,
           t.timeout_ns, t.attempts, t.created_at, t.updated_at, t.started_at, t.finished_at, t.series,
           t.queue, t.priority, t.unique_key,
           r.value, r.error, rn.worker_id, rn.token, rn.expires_at
    FROM tasks t LEFT JOIN results r ON r.id = t.id LEFT JOIN running rn ON rn.id = t.id;
    CREATE TRIGGER task_rows_delete INSTEAD OF DELETE ON task_rows BEGIN
        DELETE FROM tasks WHERE id = OLD.id;
        DELETE FROM pending WHERE id = OLD.id;
        DELETE FROM running WHERE id = OLD.id;
        DELETE FROM completed WHERE id = OLD.id;
        DELETE FROM results WHERE id = OLD.id;
    END;
    "#,
    // v5: the running attempt's progress, kept with its claim in `running`,
    // so it goes when the task stops running.
    r#"
    ALTER TABLE running ADD COLUMN progress TEXT;
    "#,
    // v6: schedules, each a JSON record under its name.
    r#"
    CREATE TABLE schedules (name TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;
    "#,
    // v7: the pools' heartbeats, each a JSON record under its worker id; the
    // last turn taken at each store-wide chore; finished tasks by status and
    // age, for pruning the oldest of one status.
    r#"
    CREATE TABLE workers (
        id         TEXT PRIMARY KEY NOT NULL,
        record     TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE turns (chore TEXT PRIMARY KEY NOT NULL, last_at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX completed_status ON completed (status, finished_at);
    "#,
    // v8: each task's failed attempts, `{"errors": [...], "dropped": n}`,
    // NULL for a task that never failed.
    r#"
    ALTER TABLE tasks ADD COLUMN attempt_errors TEXT;
    "#,
    // v9: a unique key's window (`unique_for`) and the task's meta map, each
    // JSON or NULL. Finished tasks with a window are found by key through a
    // partial index, which holds no row of a task enqueued without one.
    r#"
    ALTER TABLE tasks ADD COLUMN unique_window TEXT;
    ALTER TABLE tasks ADD COLUMN meta TEXT;
    CREATE INDEX tasks_unique_window ON tasks (unique_key) WHERE unique_window IS NOT NULL;
    "#,
    // v10: flow control. A task's concurrency key (in `pending` too, for the
    // claim) and its snoozes; the
    // unfinished tasks of each key in id order, which a claim of a queue with
    // a per-key limit counts (`tasks_key_order`: failed tasks are in it for
    // the queues that hold a key's window on failure); each queue's settings
    // as JSON; the rate buckets, by queue and key ('' for the queue's own).
    r#"
    ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;
    ALTER TABLE tasks ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pending ADD COLUMN concurrency_key TEXT;
    CREATE INDEX tasks_key_order ON tasks (queue, concurrency_key, id)
        WHERE concurrency_key IS NOT NULL AND status IN ('pending', 'running', 'failed');
    CREATE TABLE queue_limits (name TEXT PRIMARY KEY NOT NULL, limits TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE rate_buckets (
        queue TEXT NOT NULL,
        key   TEXT NOT NULL,
        tat   INTEGER NOT NULL,
        PRIMARY KEY (queue, key)
    ) WITHOUT ROWID;
    "#,
];

/// What a connection that only reads runs on a database of an older
/// `version`, so the reads of this build work on it unchanged: temporary
/// views (which take precedence over the database's own tables of the same
/// name) add the columns later versions added, with the values a migration
/// would give: before version 4, queues, priorities and unique keys (and an
/// empty table stands for the paused queues); before version 5, progress;
/// before version 6, an empty table stands for the schedules; before
/// version 7, for the heartbeats; before version 8, no task has failed
/// attempts on record; before version 9, no task has a key window or meta;
/// before version 10, no task has a concurrency key or snoozes, and empty
/// tables stand for the queue limits and rate buckets.
pub fn older_as_current(version: i64) -> String {
    let mut sql = String::new();
    // One view stands for `tasks`, with every column added since.
    let mut added = Vec::new();
    if version < 4 {
        added.push("'default' AS queue, 0 AS priority, NULL AS unique_key");
    }
    if version < 8 {
        added.push("NULL AS attempt_errors");
    }
    if version < 9 {
        added.push("NULL AS unique_window, NULL AS meta");
    }
    if version < 10 {
        added.push("NULL AS concurrency_key, 0 AS snoozes");
    }
    if !added.is_empty() {
        sql.push_str(&format!(
            "CREATE TEMP VIEW IF NOT EXISTS tasks AS SELECT *, {} FROM main.tasks; ",
            added.join(", ")
        ));
    }
    if version < 4 {
        sql.push_str(
            "CREATE TEMP VIEW IF NOT EXISTS pending AS \
                 SELECT *, 'default' AS queue, 0 AS priority FROM main.pending; \
             CREATE TEMP TABLE IF NOT EXISTS paused_queues (name TEXT PRIMARY KEY NOT NULL); ",
        );
    }
    if version < 5 {
        sql.push_str(
            "CREATE TEMP VIEW IF NOT EXISTS running AS SELECT *, NULL AS progress FROM main.running; ",
        );
    }
    if version < 6 {
        sql.push_str("CREATE TEMP TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL);");
    }
    if version < 7 {
        sql.push_str(
            "CREATE TEMP TABLE IF NOT EXISTS workers \
             (id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL, expires_at INTEGER NOT NULL);",
        );
    }
    if version < 10 {
        sql.push_str(
            "CREATE TEMP TABLE IF NOT EXISTS queue_limits (name TEXT PRIMARY KEY NOT NULL, limits TEXT NOT NULL); \
             CREATE TEMP TABLE IF NOT EXISTS rate_buckets \
             (queue TEXT NOT NULL, key TEXT NOT NULL, tat INTEGER NOT NULL, PRIMARY KEY (queue, key));",
        );
    }
    sql
}

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Checks that the database at `path` is an OmniQ database this build can use,
/// creating the schema in an empty one and migrating an older one, all inside
/// one `BEGIN IMMEDIATE` transaction so concurrent openers do it once. A file
/// that is not a SQLite database, another program's database, or one written by
/// a newer OmniQ is refused and left untouched.
pub async fn prepare(conn: &mut SqliteConnection, path: &Path) -> Result<i64> {
    let incompatible = |reason: String| Error::Incompatible {
        path: path.to_path_buf(),
        reason,
    };
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("26") => {
            incompatible("the file is not a SQLite database".into())
        }
        other => sql_error(other),
    })?;
    let (app_id, version, objects) = header(&mut tx, path).await?;
    let from = match (app_id, objects) {
        (0, 0) => 0,
        (APPLICATION_ID, _) => version,
        _ => {
            return Err(incompatible(format!(
                "not an OmniQ database (application_id {app_id:#x}, {objects} schema objects); \
                 point OMNIQ_DB_PATH at another file"
            )))
        }
    };
    if from > CURRENT_VERSION {
        return Err(incompatible(format!(
            "written by a newer OmniQ (schema version {from}; this build knows up to {CURRENT_VERSION}); \
             upgrade OmniQ to open it"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        (&mut *tx).execute(*migration).await.map_err(sql_error)?;
        tracing::info!(db = %path.display(), version = index + 1, "migrated the OmniQ schema");
    }
    if from < CURRENT_VERSION {
        let stamp =
            format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {CURRENT_VERSION};");
        (&mut *tx).execute(stamp.as_str()).await.map_err(sql_error)?;
    }
    tx.commit().await.map_err(sql_error)?;
    Ok(from)
}

/// Checks, without writing, that the database at `path` is an OmniQ database
/// this build can read: written by this build or an older one. Returns its
/// schema version.
pub async fn check_readable(conn: &mut SqliteConnection, path: &Path) -> Result<i64> {
    let incompatible = |reason: String| Error::Incompatible {
        path: path.to_path_buf(),
        reason,
    };
    let (app_id, version, _) = header(conn, path).await?;
    if app_id != APPLICATION_ID {
        return Err(incompatible(format!(
            "not an OmniQ database (application_id {app_id:#x}); point OMNIQ_DB_PATH at another file"
        )));
    }
    if version > CURRENT_VERSION {
        return Err(incompatible(format!(
            "written by a newer OmniQ (schema version {version}; this build knows up to {CURRENT_VERSION}); \
             upgrade OmniQ to open it"
        )));
    }
    Ok(version)
}

/// What identifies a database: its `application_id`, its `user_version`
/// (the schema version) and how many schema objects it has. A file that is
/// not a SQLite database is an [`Error::Incompatible`] naming `path`.
async fn header(conn: &mut SqliteConnection, path: &Path) -> Result<(i32, i64, i64)> {
    let read = async {
        let app_id: i32 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut *conn)
            .await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *conn)
            .await?;
        let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_schema")
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>((app_id, version, objects))
    }
    .await;
    match read {
        Ok(header) => Ok(header),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("26") => Err(Error::Incompatible {
            path: path.to_path_buf(),
            reason: "the file is not a SQLite database".into(),
        }),
        Err(other) => Err(sql_error(other)),
    }
}

/// The schema version recorded in a database.
pub async fn version(conn: &mut SqliteConnection) -> Result<i64> {
    let row = sqlx::query("PRAGMA user_version")
        .fetch_one(conn)
        .await
        .map_err(sql_error)?;
    row.try_get(0).map_err(sql_error)
}
