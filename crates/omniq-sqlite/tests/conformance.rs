//! Runs the shared conformance suite against `SqliteStorage`.

use std::process::ExitCode;
use std::sync::Arc;

use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::{Durability, TaskId};
use omniq_sqlite::SqliteStorage;

struct Sqlite;

#[omniq_core::async_trait]
impl Factory for Sqlite {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn open(&self) -> Fresh {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = SqliteStorage::open_path(dir.path().join("omniq.db"), Durability::Normal)
            .await
            .expect("open the database");
        Fresh::new(Arc::new(store), dir)
    }

    fn can_damage(&self) -> bool {
        true
    }

    async fn damage(&self, fresh: &Fresh, id: TaskId) {
        use sqlx::Connection as _;
        let dir: &tempfile::TempDir = fresh.guard().expect("the database's folder");
        let url = format!("sqlite://{}", dir.path().join("omniq.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        // Arguments nested deeper than a record may be read back.
        let deep = format!("[{}1{}]", "[".repeat(200), "]".repeat(200));
        let done = sqlx::query("UPDATE tasks SET args = ?1 WHERE id = ?2")
            .bind(deep)
            .bind(id.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        conn.close().await.unwrap();
    }
}

fn main() -> ExitCode {
    conformance::run_main(Sqlite)
}
