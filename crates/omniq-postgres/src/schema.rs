//! The layout in PostgreSQL, how an OmniQ schema is recognised, and the
//! migrations that bring an older one forward, under a transaction-scoped
//! advisory lock so hosts starting together migrate once.
//!
//! One task table with a status column and partial indexes (a status change
//! is one row update, not a move between tables). The whole record is kept as
//! `json` (byte-exact, unlike `jsonb`), beside the columns queries need.

use omniq_core::{Error, Result};
use sqlx::{Executor, Postgres, Row, Transaction};

/// One migration per schema version: `MIGRATIONS[i]` takes a schema from
/// version `i` to `i + 1`. `{s}` is the quoted schema name. Released
/// migrations are never edited, only appended.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE {s}.tasks (
        id            text COLLATE "C" PRIMARY KEY,
        status        text NOT NULL
                      CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        queue         text NOT NULL,
        priority      smallint NOT NULL,
        eta           bigint NOT NULL,
        unique_key    text,
        series        text COLLATE "C",
        finished_at   bigint,
        lease_expires bigint,
        record        json NOT NULL
    );
    CREATE INDEX tasks_due ON {s}.tasks (queue, priority DESC, eta, id) WHERE status = 'pending';
    CREATE UNIQUE INDEX tasks_unique_live ON {s}.tasks (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');
    CREATE INDEX tasks_status ON {s}.tasks (status, id);
    CREATE INDEX tasks_queue ON {s}.tasks (queue, status);
    CREATE INDEX tasks_series ON {s}.tasks (series) WHERE series IS NOT NULL;
    CREATE INDEX tasks_expiry ON {s}.tasks (lease_expires) WHERE status = 'running';
    CREATE INDEX tasks_finished ON {s}.tasks (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE {s}.paused_queues (name text PRIMARY KEY);
"#,
    // Version 2: the claim made by the one-statement claim, replayed on the
    // record when the row is read (`rows::read`); every whole write clears it.
    // Views under the seed's names, for users who look with SQL.
    // Autovacuum is asked to visit the table after 1,000 changed rows rather
    // than a fifth of the table, as a queue's table turns over all the time.
    r#"
    ALTER TABLE {s}.tasks ADD COLUMN claim json;
    ALTER TABLE {s}.tasks SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.05);
    CREATE VIEW {s}.pending AS
        SELECT id, record->>'func_path' AS func_path, queue, priority,
               to_timestamp(eta / 1e9) AS eta, unique_key, record
        FROM {s}.tasks WHERE status = 'pending';
    CREATE VIEW {s}.running AS
        SELECT id, record->>'func_path' AS func_path, queue, priority,
               COALESCE(claim->>'worker', record->'lease'->>'worker_id') AS worker_id,
               to_timestamp(lease_expires / 1e9) AS lease_expires, record
        FROM {s}.tasks WHERE status = 'running';
    CREATE VIEW {s}.completed AS
        SELECT id, record->>'func_path' AS func_path, queue,
               to_timestamp(finished_at / 1e9) AS finished_at, record->'result' AS result, record
        FROM {s}.tasks WHERE status = 'completed';
    CREATE VIEW {s}.results AS
        SELECT id, status, record->'result' AS result, record->'error' AS error,
               to_timestamp(finished_at / 1e9) AS finished_at
        FROM {s}.tasks WHERE status IN ('completed', 'failed', 'cancelled');
"#,
    // Version 3: schedules, each a JSON record under its name.
    r#"
    CREATE TABLE {s}.schedules (name text PRIMARY KEY, record json NOT NULL);
"#,
    // Version 4: the pools' heartbeats, each a JSON record under its worker
    // id; the last turn taken at each store-wide chore; finished tasks by
    // status and age, for pruning the oldest of one status (the index holds
    // finished rows only, so claims and enqueues never update it).
    r#"
    CREATE TABLE {s}.workers (id text PRIMARY KEY, record json NOT NULL, expires_at bigint NOT NULL);
    CREATE TABLE {s}.turns (chore text PRIMARY KEY, last_at bigint NOT NULL);
    DROP INDEX {s}.tasks_finished;
    CREATE INDEX tasks_finished ON {s}.tasks (status, finished_at) WHERE finished_at IS NOT NULL;
"#,
    // Version 5: finished tasks whose unique key is held over a period
    // (`unique_for`), found by key. The window itself is in the record; the
    // index holds no row of a task enqueued without one.
    r#"
    CREATE INDEX tasks_unique_window ON {s}.tasks (unique_key)
        WHERE unique_key IS NOT NULL AND (record -> 'unique_window') IS NOT NULL;
"#,
    // Version 6: flow control. Each task's concurrency key in a column of
    // its own (read out of the record, a `\u0000` anywhere in a payload
    // would stop PostgreSQL); the unfinished tasks of each key in id order, which a claim of a queue with a per-key limit counts
    // (failed ones are in it for the queues that hold a key's window on
    // failure); each queue's settings, whose row a limited claim locks; the
    // rate buckets, by queue and key ('' for the queue's own).
    r#"
    ALTER TABLE {s}.tasks ADD COLUMN concurrency_key text;
    CREATE INDEX tasks_key_order ON {s}.tasks (queue, concurrency_key, id)
        WHERE concurrency_key IS NOT NULL AND status IN ('pending', 'running', 'failed');
    CREATE TABLE {s}.queue_limits (name text PRIMARY KEY, limits json NOT NULL);
    CREATE TABLE {s}.rate_buckets (
        queue text NOT NULL,
        key   text NOT NULL,
        tat   bigint NOT NULL,
        PRIMARY KEY (queue, key)
    );
"#,
];

/// The refusal of `schema`, saying why.
fn incompatible(schema: &str, reason: String) -> Error {
    Error::Incompatible {
        path: format!("postgres schema {schema}").into(),
        reason,
    }
}

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// `name` quoted as an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the schema in an empty (or missing) one, migrates an older one, and
/// refuses one written by a newer OmniQ or holding another program's tables,
/// changing nothing then, all in `tx`, which the caller commits. Returns the
/// version found.
pub async fn prepare(tx: &mut Transaction<'static, Postgres>, schema: String) -> Result<i64> {
    let schema = schema.as_str();
    let s = quote(schema);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('omniq:' || $1))")
        .bind(schema.to_owned())
        .execute(&mut **tx)
        .await
        .map_err(crate::sql_error)?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
            .bind(schema.to_owned())
            .fetch_all(&mut **tx)
            .await
            .map_err(crate::sql_error)?;
    let from = if tables.iter().any(|t| t == "omniq_meta") {
        let row = sqlx::query(&format!(
            "SELECT value FROM {s}.omniq_meta WHERE key = 'schema_version'"
        ))
        .fetch_optional(&mut **tx)
        .await
        .map_err(crate::sql_error)?;
        let text: String = match row {
            Some(row) => row.try_get(0).map_err(crate::sql_error)?,
            None => {
                return Err(incompatible(
                    schema,
                    "its omniq_meta table records no schema version".into(),
                ))
            }
        };
        text.parse::<i64>()
            .map_err(|_| incompatible(schema, format!("its schema version {text:?} is not a number")))?
    } else if tables.is_empty() {
        0
    } else {
        return Err(incompatible(
            schema,
            format!(
                "it holds tables of another program ({}); choose another schema with OMNIQ_PG_SCHEMA",
                tables.join(", ")
            ),
        ));
    };
    if from > CURRENT_VERSION {
        return Err(incompatible(
            schema,
            format!(
            "written by a newer OmniQ (schema version {from}; this build knows up to {CURRENT_VERSION}); \
             upgrade OmniQ to use it"
        ),
        ));
    }
    if from == 0 {
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE {s}.omniq_meta (key text PRIMARY KEY, value text NOT NULL); \
             INSERT INTO {s}.omniq_meta VALUES ('schema_version', '0')"
        );
        (&mut **tx)
            .execute(create.as_str())
            .await
            .map_err(crate::sql_error)?;
    }
    let steps: Vec<String> = MIGRATIONS
        .iter()
        .skip(from as usize)
        .map(|migration| migration.replace("{s}", &s))
        .collect();
    for (step, sql) in steps.iter().enumerate() {
        (&mut **tx)
            .execute(sql.as_str())
            .await
            .map_err(crate::sql_error)?;
        tracing::info!(
            schema,
            version = from as usize + step + 1,
            "migrated the OmniQ schema"
        );
    }
    if from < CURRENT_VERSION {
        sqlx::query(&format!(
            "UPDATE {s}.omniq_meta SET value = $1 WHERE key = 'schema_version'"
        ))
        .bind(CURRENT_VERSION.to_string())
        .execute(&mut **tx)
        .await
        .map_err(crate::sql_error)?;
    }
    Ok(from)
}

/// Checks, writing nothing, that `schema` holds OmniQ's tables at this
/// build's version: for a store opened only to read.
pub async fn check(tx: &mut Transaction<'static, Postgres>, schema: String) -> Result<()> {
    let s = quote(&schema);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{s}.omniq_meta"))
        .fetch_one(&mut **tx)
        .await
        .map_err(crate::sql_error)?;
    if exists.is_none() {
        return Err(incompatible(&schema, "it holds no OmniQ store".into()));
    }
    let version: String = sqlx::query_scalar(&format!(
        "SELECT value FROM {s}.omniq_meta WHERE key = 'schema_version'"
    ))
    .fetch_one(&mut **tx)
    .await
    .map_err(crate::sql_error)?;
    if version != CURRENT_VERSION.to_string() {
        return Err(incompatible(
            &schema,
            format!(
                "its schema version is {version}, this build's {CURRENT_VERSION}; open it to write once \
                 (an older one is migrated) or use a matching OmniQ"
            ),
        ));
    }
    Ok(())
}
