//! What the router tests share: a store of each backend seeded with every
//! status (and a paused, limited queue), and requests sent to the router
//! through tower's `oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use omniq_core::{
    ClaimRequest, Durability, Finish, MemoryStorage, NewTask, Outcome, Settings, Storage, TaskError, TaskId,
};
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceExt;

pub const XSS: &str = "<script>alert('owned')</script>";

/// Ids of the seeded tasks, one per status.
pub struct Seeded {
    pub failed: TaskId,
    pub completed: TaskId,
    pub pending: TaskId,
    pub running: TaskId,
}

pub async fn seed(store: &dyn Storage) -> Seeded {
    let now = OffsetDateTime::now_utc();
    let new = |task: NewTask| task.into_task(&Settings::default(), now).unwrap();
    let tasks = vec![
        new(NewTask::with_payload("email.send", &json!({"to": XSS}))
            .unwrap()
            .max_retries(0)),
        new(NewTask::new("report.build")
            .queue("reports")
            .priority(3)
            .unique_key("report:monthly")
            .unique_for(Duration::from_secs(3600))
            .meta("note", XSS)),
        new(NewTask::new("cleanup").unique_key("cleanup:daily")),
        new(NewTask::new("cancel.me")),
        new(NewTask::new("runs.long")),
        new(NewTask::new("later").eta(now + Duration::from_secs(3600))),
    ];
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    store.enqueue(tasks).await.unwrap();
    store.cancel(ids[3], now).await.unwrap();
    let mut claimed = Vec::new();
    for queue in ["default", "reports"] {
        claimed.extend(
            store
                .claim(ClaimRequest {
                    queue: queue.into(),
                    worker_id: "web-test".into(),
                    limit: 10,
                    lease_for: Duration::from_secs(600),
                    now,
                })
                .await
                .unwrap(),
        );
    }
    let token = |id: TaskId| {
        claimed
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .lease
            .as_ref()
            .unwrap()
            .token
    };
    store
        .finish(
            vec![
                Finish {
                    id: ids[0],
                    token: token(ids[0]),
                    outcome: Outcome::Fail {
                        error: TaskError::new("handler", format!("bad address {XSS}"), 1, false),
                    },
                },
                Finish {
                    id: ids[1],
                    token: token(ids[1]),
                    outcome: Outcome::Complete {
                        result: json!({"pages": 12}),
                    },
                },
            ],
            now,
        )
        .await
        .unwrap();
    let report = omniq_core::Progress::new(0.25, format!("step 1 of 4 {XSS}"), now).unwrap();
    let lease = omniq_core::LeaseRef {
        id: ids[4],
        token: token(ids[4]),
    };
    assert!(store.set_progress(lease, report).await.unwrap());
    store.set_paused("reports", true).await.unwrap();
    let limits = omniq_core::QueueLimits {
        limit: Some(3),
        per_key: Some(1),
        rate: Some("20/s".parse().unwrap()),
        ..Default::default()
    };
    store.set_queue_limits("reports", limits).await.unwrap();
    let beat = |id: &str, host: &str, last_seen: OffsetDateTime| omniq_core::WorkerBeat {
        worker_id: id.into(),
        host: host.into(),
        pid: 77,
        version: "9.9.9".into(),
        queues: vec![("default".into(), 4), ("reports".into(), 1)],
        running: 2,
        done: omniq_core::upkeep::WorkerCounts {
            completed: 40,
            failed: 3,
            retried: 5,
        },
        started_at: last_seen,
        last_seen,
        expires_at: last_seen + Duration::from_secs(20),
    };
    store.beat(beat("web-test", XSS, now)).await.unwrap();
    store
        .beat(beat("gone-worker", "host-b", now - Duration::from_secs(60)))
        .await
        .unwrap();
    Seeded {
        failed: ids[0],
        completed: ids[1],
        pending: ids[5],
        running: ids[4],
    }
}

/// A backend's name, a store of it, and what keeps the store alive (its
/// folder, its schema).
pub type Backend = (&'static str, Arc<dyn Storage>, Box<dyn std::any::Any + Send>);

/// A store of each backend, each with its guard (the folder it lives in);
/// PostgreSQL's in a schema of its own, where the test server answers.
pub async fn stores() -> Vec<Backend> {
    let file_dir = tempfile::tempdir().unwrap();
    let sqlite_dir = tempfile::tempdir().unwrap();
    let file = omniq_file::FileStorage::open_path(file_dir.path(), Durability::Normal)
        .await
        .unwrap();
    let sqlite =
        omniq_sqlite::SqliteStorage::open_path(sqlite_dir.path().join("omniq.db"), Durability::Normal)
            .await
            .unwrap();
    let mut stores: Vec<Backend> = vec![
        ("memory", Arc::new(MemoryStorage::new()), Box::new(())),
        ("file", Arc::new(file), Box::new(file_dir)),
        ("sqlite", Arc::new(sqlite), Box::new(sqlite_dir)),
    ];
    if let Some((postgres, guard)) = postgres().await {
        stores.push(("postgres", Arc::new(postgres), Box::new(guard)));
    }
    stores
}

/// A store in a fresh PostgreSQL schema, dropped with its guard, or `None` where no server answers; with
/// `OMNIQ_REQUIRE_POSTGRES=1` a missing server fails the test.
pub async fn postgres() -> Option<(omniq_postgres::PostgresStorage, DropSchema)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url =
        std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
    let schema = format!(
        "omniq_w{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    match omniq_postgres::PostgresStorage::connect_with(&url, &schema, 4).await {
        Ok(store) => Some((store, DropSchema(url, schema))),
        Err(error) => {
            assert!(
                std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "no PostgreSQL at {url}: {error}"
            );
            eprintln!("no PostgreSQL at {url} ({error}); the dashboard is tested on the other backends");
            None
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::ACCEPT, "text/html")
        .body(Body::empty())
        .unwrap()
}

pub fn post_form(path: &str, form: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

/// The CSRF token a page's confirmation form carries.
pub fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 32].to_owned()
}

/// Drops a test's PostgreSQL schema when dropped, on a thread of its own (a
/// drop cannot wait for the database).
pub struct DropSchema(String, String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}
