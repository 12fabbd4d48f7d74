//! What the PostgreSQL tests share: the server they use, whether it answers
//! (and what to do when it does not), and schemas of their own that are
//! dropped afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection as _;

/// The test server: `OMNIQ_TEST_DATABASE_URL`, else 127.0.0.1:5432, database `test`.
pub fn url() -> String {
    std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
}

/// Whether the server answers. Where it does not, says so on stderr, and
/// fails (panics) when `OMNIQ_REQUIRE_POSTGRES=1`, as in CI.
pub async fn available() -> bool {
    if sqlx::PgConnection::connect(&url()).await.is_ok() {
        return true;
    }
    let message = format!("no PostgreSQL answers at {}; skipping", url());
    assert!(
        std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "{message}, which OMNIQ_REQUIRE_POSTGRES=1 forbids"
    );
    eprintln!("{message}");
    false
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A schema name no other test of any process uses.
pub fn fresh_schema() -> String {
    format!(
        "omniq_t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops its schema when dropped, on a thread of its own (a drop cannot wait
/// for the database).
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url()).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}
