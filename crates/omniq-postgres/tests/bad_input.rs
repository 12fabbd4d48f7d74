//! Bad input gets a clear error and nothing is written: an unreachable
//! server (named without its password), another program's schema, a schema
//! written by a newer OmniQ, a schema name too long.

mod common;

use common::{fresh_schema, url, DropSchema};
use omniq_core::{Error, Storage};
use omniq_postgres::PostgresStorage;
use sqlx::Connection as _;

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = PostgresStorage::connect(&format!("postgres://ada:hunter2@127.0.0.1:{port}/test"), "omniq")
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains(&format!("postgres://ada:***@127.0.0.1:{port}/test")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// A server that refuses the login (here: a role it does not know, as a
/// wrong password would be on a server that checks them) is a clear error
/// naming the URL without its password.
#[tokio::test]
async fn a_refused_login_is_named_without_its_password() {
    if !common::available().await {
        return;
    }
    let base = url();
    let Some(rest) = base.strip_prefix("postgres://") else {
        return;
    };
    let host = rest.rsplit('@').next().unwrap_or(rest);
    let refused = PostgresStorage::connect(&format!("postgres://omniq_nobody:hunter2@{host}"), "omniq")
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("cannot connect to postgres://omniq_nobody:***@"),
        "{text}"
    );
    assert!(text.contains("omniq_nobody"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

async fn raw() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&url()).await.unwrap()
}

#[tokio::test]
async fn another_programs_schema_is_refused_untouched() {
    if !common::available().await {
        return;
    }
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let mut conn = raw().await;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".invoices (id int PRIMARY KEY)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let refused = PostgresStorage::connect(&url(), &schema).await.unwrap_err();
    assert!(matches!(refused, Error::Incompatible { .. }), "{refused}");
    assert!(refused.to_string().contains("invoices"), "{refused}");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
            .bind(&schema)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["invoices"], "nothing was written");
}

#[tokio::test]
async fn a_newer_schema_version_is_refused_untouched() {
    if !common::available().await {
        return;
    }
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = PostgresStorage::connect(&url(), &schema).await.unwrap();
    assert_eq!(store.counts().await.unwrap().total(), 0);
    drop(store);
    let mut conn = raw().await;
    sqlx::query(&format!(
        "UPDATE \"{schema}\".omniq_meta SET value = '99' WHERE key = 'schema_version'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let refused = PostgresStorage::connect(&url(), &schema).await.unwrap_err();
    assert!(matches!(refused, Error::Incompatible { .. }), "{refused}");
    assert!(refused.to_string().contains("newer"), "{refused}");
    let version: String = sqlx::query_scalar(&format!(
        "SELECT value FROM \"{schema}\".omniq_meta WHERE key = 'schema_version'"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(version, "99");
}

#[tokio::test]
async fn a_schema_name_past_postgres_limit_is_refused() {
    let refused = PostgresStorage::connect(&url(), &"s".repeat(64))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidConfig { .. }), "{refused}");
}
