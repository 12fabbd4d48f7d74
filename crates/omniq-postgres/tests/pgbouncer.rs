//! The poll-only mode through a real PgBouncer with its default settings
//! (session mode): opening, enqueueing, claiming (on the claims' own
//! connections) and finishing all work. A PgBouncer refuses startup
//! parameters it does not know, as the claims' `synchronous_commit` once was.
//!
//! The test starts its own PgBouncer (Debian's `pgbouncer`) in front of the
//! test server on a free port. Where none is installed it says so and
//! passes, except with `OMNIQ_REQUIRE_PGBOUNCER=1` (as `.ci/run` sets).

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{fresh_schema, DropSchema};
use omniq_core::{ClaimRequest, Finish, FinishOutcome, NewTask, Outcome, Settings, Storage};
use omniq_postgres::{ConnectOptions, PostgresStorage};
use time::OffsetDateTime;

/// A PgBouncer process, stopped when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test server's host and port, from the test URL.
fn server() -> (String, String) {
    let url = common::url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.to_owned()),
        None => (host.to_owned(), "5432".to_owned()),
    }
}

/// Starts PgBouncer with its default pool mode in front of the test server, or
/// `None` where it is not installed.
fn start() -> Option<Bouncer> {
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists());
    let Some(binary) = binary else {
        assert!(
            std::env::var("OMNIQ_REQUIRE_PGBOUNCER").as_deref() != Ok("1"),
            "pgbouncer is not installed, which OMNIQ_REQUIRE_PGBOUNCER=1 forbids"
        );
        eprintln!("pgbouncer is not installed; skipping");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (host, server_port) = server();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let users = format!("\"{user}\" \"\"\n\"root\" \"\"\n\"postgres\" \"\"\n");
    std::fs::write(dir.path().join("users.txt"), users).unwrap();
    let config = format!(
        "[databases]\n* = host={host} port={server_port}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {}\n",
        dir.path().join("users.txt").display()
    );
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini, config).unwrap();
    // PgBouncer refuses to run as root: run it as the server's own user.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut permissions = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(dir.path(), permissions).unwrap();
    // Its own `-u` switches user, so the process started is PgBouncer
    // itself, which the drop stops.
    let mut command = Command::new(binary);
    if is_root {
        command.args(["-u", "postgres"]);
    }
    let child = command.arg(&ini).spawn().expect("start pgbouncer");
    let bouncer = Bouncer {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(bouncer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pgbouncer did not start listening on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_only_mode_works_through_pgbouncer() {
    if !common::available().await {
        return;
    }
    let Some(bouncer) = start() else { return };
    let database = common::url()
        .rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or("test").to_owned())
        .unwrap_or_else(|| "test".into());
    let url = format!("postgres://127.0.0.1:{}/{database}?sslmode=disable", bouncer.port);
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store = PostgresStorage::connect_options(
        ConnectOptions::new(&url)
            .schema(schema.as_str())
            .connections(4)
            .listen(false),
    )
    .await
    .expect("open through pgbouncer");
    let now = OffsetDateTime::now_utc();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            NewTask::new("t")
                .args(vec![i.into()])
                .into_task(&Settings::default(), now)
                .unwrap()
        })
        .collect();
    store.enqueue(tasks).await.expect("enqueue through pgbouncer");
    let mut done = 0;
    for _ in 0..10 {
        let claimed = store
            .claim(ClaimRequest {
                worker_id: "w".into(),
                queue: omniq_core::DEFAULT_QUEUE.into(),
                limit: 5,
                lease_for: Duration::from_secs(30),
                now: OffsetDateTime::now_utc(),
            })
            .await
            .expect("claim through pgbouncer");
        if claimed.is_empty() {
            break;
        }
        let finishes = claimed
            .iter()
            .map(|t| Finish {
                id: t.id,
                token: t.lease.as_ref().unwrap().token,
                outcome: Outcome::Complete {
                    result: serde_json::json!(1),
                },
            })
            .collect();
        let answers = store
            .finish(finishes, OffsetDateTime::now_utc())
            .await
            .expect("finish");
        done += answers
            .iter()
            .filter(|a| matches!(a, FinishOutcome::Applied { .. }))
            .count();
    }
    assert_eq!(done, 20);
    assert_eq!(store.counts().await.unwrap().completed, 20);
}
