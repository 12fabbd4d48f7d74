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
//! and skipped when another host's vacuum holds the table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::postgres::PgPool;

/// How many claimed tasks make a vacuum worth its scan of the table.
pub(crate) const VACUUM_EVERY: u64 = 2_000;

/// The count of tasks claimed since the last vacuum, and whether one runs.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    claimed: AtomicU64,
    running: AtomicBool,
    /// Set once a vacuum was refused (the role does not own the table):
    /// autovacuum alone keeps it then.
    refused: AtomicBool,
}

impl Upkeep {
    /// Counts `claimed` tasks, and starts a vacuum of `table` on `pool` in
    /// the background when enough were claimed since the last one.
    pub(crate) fn claimed(self: &Arc<Self>, claimed: usize, pool: &PgPool, table: &str) {
        let total = self.claimed.fetch_add(claimed as u64, Ordering::Relaxed) + claimed as u64;
        if total < VACUUM_EVERY || self.refused.load(Ordering::Relaxed) {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.claimed.store(0, Ordering::Relaxed);
        let (upkeep, pool) = (self.clone(), pool.clone());
        // Index cleanup forced: left to itself, a vacuum may skip the
        // indexes when few of the table's pages hold dead rows, which is
        // the index entries this vacuum is for.
        let sql = format!("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {table}");
        tokio::spawn(async move {
            // A role that does not own the table gets a warning from the
            // server and vacuums nothing; any error stops the tries.
            if let Err(error) = sqlx::raw_sql(&sql).execute(&pool).await {
                upkeep.refused.store(true, Ordering::Relaxed);
                tracing::warn!(%error, "cannot vacuum the task table; leaving it to autovacuum");
            }
            upkeep.running.store(false, Ordering::Release);
        });
    }
}
