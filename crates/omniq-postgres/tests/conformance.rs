//! Runs the shared conformance suite against `PostgresStorage`: each
//! scenario in a schema of its own (dropped afterwards), so they run in
//! parallel on one database. Where no server answers, the suite says so and
//! passes, except with `OMNIQ_REQUIRE_POSTGRES=1` (as `.ci/run` sets).

mod common;

use std::process::ExitCode;
use std::sync::Arc;

use common::{fresh_schema, url, DropSchema};
use omniq_core::conformance::{self, Factory, Fresh};
use omniq_core::TaskId;
use omniq_postgres::PostgresStorage;

struct Postgres;

#[omniq_core::async_trait]
impl Factory for Postgres {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn open(&self) -> Fresh {
        let schema = fresh_schema();
        let store = PostgresStorage::connect_with(&url(), &schema, 4)
            .await
            .expect("connect to PostgreSQL");
        Fresh::new(Arc::new(store), DropSchema(schema))
    }

    fn can_damage(&self) -> bool {
        true
    }

    async fn damage(&self, fresh: &Fresh, id: TaskId) {
        use sqlx::Connection as _;
        let DropSchema(schema) = fresh.guard().expect("the store's schema");
        let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
        // A record as a newer build might write it.
        let done = sqlx::query(&format!(
            "UPDATE \"{schema}\".tasks SET record = json_build_object('id', id, 'written_by', 'a newer build') \
             WHERE id = $1"
        ))
        .bind(id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(done.rows_affected(), 1);
        conn.close().await.unwrap();
    }
}

fn main() -> ExitCode {
    let available = std::panic::catch_unwind(|| {
        tokio::runtime::Runtime::new()
            .map(|runtime| runtime.block_on(common::available()))
            .unwrap_or(false)
    });
    match available {
        Ok(true) => conformance::run_main(Postgres),
        Ok(false) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
