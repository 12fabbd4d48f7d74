//! Vacuuming the task table as fast as claims turn it over.
//!
//! A claim walks the due-task index from its front, where the entries of
//! rows claimed a moment ago lie until a vacuum removes them: PostgreSQL
//! marks such entries dead during a scan only when their index page has not
//! changed since it was read, which, with enqueues landing on the same pages,
//! it rarely has. Autovacuum visits a table at most once a minute (by
//! default), so a busy queue would make every claim walk over thousands of
//! claimed rows. The store therefore runs `VACUUM` on its task table itself
//! after every [`VACUUM_EVERY`] claimed tasks: one at a time per process,
//! skipped when another host's vacuum holds the table, and never where the
//! role does not own the table (PostgreSQL would only warn and vacuum
//! nothing); a failed vacuum is tried again after as many claims.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgPool;

/// How many claimed tasks make a vacuum worth its scan of the table.
pub(crate) const VACUUM_EVERY: u64 = 2_000;

/// The count of tasks claimed since the last vacuum, and whether one runs.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    claimed: AtomicU64,
    running: AtomicBool,
    /// Whether this role may vacuum the table, once asked: `Some(false)`
    /// when it does not own it (PostgreSQL would only warn and vacuum
    /// nothing), and autovacuum alone keeps the table then.
    allowed: Mutex<Option<bool>>,
}

/// Whether the current role may vacuum `table`: it owns it, or is a member
/// of the role that does (a superuser is a member of every role).
async fn may_vacuum(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_has_role(relowner, 'MEMBER') FROM pg_class WHERE oid = $1::regclass")
        .bind(table)
        .fetch_one(pool)
        .await
}

impl Upkeep {
    /// Counts `claimed` tasks, and starts a vacuum of `table` on `pool` in
    /// the background when enough were claimed since the last one.
    pub(crate) fn claimed(self: &Arc<Self>, claimed: usize, pool: &PgPool, table: &str) {
        let total = self.claimed.fetch_add(claimed as u64, Ordering::Relaxed) + claimed as u64;
        if total < VACUUM_EVERY || self.allowed() == Some(false) {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.claimed.store(0, Ordering::Relaxed);
        let (upkeep, pool, table) = (self.clone(), pool.clone(), table.to_owned());
        tokio::spawn(async move {
            upkeep.vacuum(&pool, &table).await;
            upkeep.running.store(false, Ordering::Release);
        });
    }

    /// Whether the role may vacuum, if known yet.
    fn allowed(&self) -> Option<bool> {
        *self.allowed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One vacuum, after learning once whether the role may run it. An
    /// error (a lost connection, a timeout) is logged and the next one is
    /// tried after as many claims again.
    async fn vacuum(&self, pool: &PgPool, table: &str) {
        if self.allowed().is_none() {
            match may_vacuum(pool, table).await {
                Ok(allowed) => {
                    *self.allowed.lock().unwrap_or_else(|e| e.into_inner()) = Some(allowed);
                    if !allowed {
                        tracing::info!(
                            table,
                            "this role does not own the task table; leaving it to autovacuum"
                        );
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot learn whether the task table may be vacuumed; trying later");
                    return;
                }
            }
        }
        // Index cleanup forced: left to itself, a vacuum may skip the
        // indexes when few of the table's pages hold dead rows, which is
        // the index entries this vacuum is for.
        let sql = format!("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {table}");
        if let Err(error) = sqlx::raw_sql(&sql).execute(pool).await {
            tracing::warn!(%error, "cannot vacuum the task table now; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    fn url() -> String {
        std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
    }

    /// Waits until the background vacuum of `upkeep` is done.
    async fn settled(upkeep: &Upkeep) {
        for _ in 0..500 {
            if !upkeep.running.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the vacuum never ended");
    }

    /// A role that does not own the table stops trying (PostgreSQL only
    /// warns it); a transient error does not; the owner vacuums.
    #[tokio::test]
    async fn only_a_role_that_may_not_vacuum_stops_trying() {
        let Ok(owner) = PgPoolOptions::new().max_connections(2).connect(&url()).await else {
            assert!(
                std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "no PostgreSQL at {}",
                url()
            );
            return;
        };
        let schema = format!("omniq_upkeep{}", std::process::id());
        let table = format!("\"{schema}\".tasks");
        for sql in [
            format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            format!("CREATE SCHEMA \"{schema}\""),
            format!("CREATE TABLE {table} (id int)"),
            "DO $$ BEGIN CREATE ROLE omniq_not_owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                .to_owned(),
            format!("GRANT USAGE ON SCHEMA \"{schema}\" TO omniq_not_owner"),
            format!("GRANT SELECT ON {table} TO omniq_not_owner"),
        ] {
            sqlx::raw_sql(&sql).execute(&owner).await.unwrap();
        }
        let stranger_url = match url().split_once("://") {
            Some((scheme, rest)) => {
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://omniq_not_owner@{rest}")
            }
            None => panic!("a URL with a scheme"),
        };
        let stranger = PgPoolOptions::new()
            .max_connections(2)
            .connect(&stranger_url)
            .await
            .unwrap();

        let refused = Arc::new(Upkeep::default());
        refused.claimed(VACUUM_EVERY as usize, &stranger, &table);
        settled(&refused).await;
        assert_eq!(refused.allowed(), Some(false));

        // A pool that fails (closed here) is a transient error: asked again later.
        let closed = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url())
            .await
            .unwrap();
        closed.close().await;
        let transient = Arc::new(Upkeep::default());
        transient.claimed(VACUUM_EVERY as usize, &closed, &table);
        settled(&transient).await;
        assert_eq!(transient.allowed(), None);

        let allowed = Arc::new(Upkeep::default());
        allowed.claimed(VACUUM_EVERY as usize, &owner, &table);
        settled(&allowed).await;
        assert_eq!(allowed.allowed(), Some(true));

        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&owner)
            .await
            .unwrap();
    }
}
