//! Runs the shared conformance suite against `SqliteStorage`.

use std::process::ExitCode;
use std::sync::Arc;

use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::Durability;
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
}

fn main() -> ExitCode {
    conformance::run_main(Sqlite)
}
