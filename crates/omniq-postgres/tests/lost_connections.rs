//! Writes whose connection is lost after PostgreSQL applied them: a proxy
//! between the store and the server drops the connection instead of passing
//! on the server's "command complete" for the write. The store must learn
//! what happened (by the ids, the claim's name, the lease token) and answer
//! the truth: an enqueue that was stored is not a conflict, a claim that was
//! made hands over its tasks, a finish that was applied is not a lost lease.
//!
//! The interleaving each test pins down: the server runs and commits the
//! write; its answer is lost; the store reads back on a new connection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fresh_schema, url, DropSchema};
use omniq_core::{
    ClaimRequest, Enqueued, Finish, FinishOutcome, NewTask, Outcome, Settings, Storage, Task, TaskError,
    TaskStatus,
};
use omniq_postgres::{ConnectOptions, PostgresStorage};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to the test server that, once armed with a command tag
/// (`INSERT`, `UPDATE`, `COMMIT`, ...), cuts the connection that was about
/// to receive the next "command complete" with that tag, without passing it on.
#[derive(Clone)]
struct Proxy {
    port: u16,
    armed: Arc<Mutex<Option<&'static str>>>,
    cuts: Arc<Mutex<u32>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            armed: Arc::default(),
            cuts: Arc::default(),
        };
        let server = server_address();
        let shared = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&server).await else {
                    continue;
                };
                tokio::spawn(shared.clone().pipe(client, upstream));
            }
        });
        proxy
    }

    /// The test database's URL through the proxy (no TLS, so every byte
    /// from the server is a typed message).
    fn url(&self) -> String {
        let direct = url();
        let rest = direct.split_once("://").map_or(direct.as_str(), |(_, rest)| rest);
        let path = rest.split_once('/').map_or("test", |(_, path)| path);
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        format!("postgres://127.0.0.1:{}/{path}?sslmode=disable", self.port)
    }

    /// Cuts the connection that next completes a command tagged `tag`.
    fn arm(&self, tag: &'static str) {
        *self.armed.lock().unwrap() = Some(tag);
    }

    /// How many connections were cut so far.
    fn cuts(&self) -> u32 {
        *self.cuts.lock().unwrap()
    }

    async fn pipe(self, client: TcpStream, upstream: TcpStream) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = upstream.into_split();
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        'read: while let Ok(n) = server_read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..n]);
            // Pass on whole messages: a type byte, then a length that counts itself.
            let mut start = 0;
            while buffer.len() - start >= 5 {
                let len = u32::from_be_bytes(buffer[start + 1..start + 5].try_into().unwrap()) as usize;
                let end = start + 1 + len;
                if buffer.len() < end {
                    break;
                }
                if buffer[start] == b'C' {
                    let tag = String::from_utf8_lossy(&buffer[start + 5..end - 1]).to_string();
                    let mut armed = self.armed.lock().unwrap();
                    if armed.is_some_and(|prefix| tag.starts_with(prefix)) {
                        *armed = None;
                        *self.cuts.lock().unwrap() += 1;
                        break 'read;
                    }
                }
                if client_write.write_all(&buffer[start..end]).await.is_err() {
                    break 'read;
                }
                start = end;
            }
            buffer.drain(..start);
        }
        up.abort();
        let _ = client_write.shutdown().await;
    }
}

/// host:port of the test server.
fn server_address() -> String {
    let direct = url();
    let rest = direct.split_once("://").map_or(direct.as_str(), |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    match host.contains(':') {
        true => host.to_owned(),
        false => format!("{host}:5432"),
    }
}

/// A store in a fresh schema, reached through a new proxy; poll-only, so
/// the only traffic is the test's own.
async fn store() -> Option<(PostgresStorage, Proxy, DropSchema)> {
    if !common::available().await {
        return None;
    }
    let proxy = Proxy::start().await;
    let schema = fresh_schema();
    let store = PostgresStorage::connect_options(
        ConnectOptions::new(proxy.url())
            .schema(schema.as_str())
            .connections(2)
            .listen(false),
    )
    .await
    .expect("connect through the proxy");
    Some((store, proxy, DropSchema(schema)))
}

fn task(new: NewTask) -> Task {
    new.into_task(&Settings::default(), OffsetDateTime::now_utc())
        .unwrap()
}

fn request(limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: "w".into(),
        queue: omniq_core::DEFAULT_QUEUE.into(),
        limit,
        lease_for: Duration::from_secs(30),
        now: OffsetDateTime::now_utc(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_answer_was_lost_answers_that_it_was_stored() {
    let Some((store, proxy, _schema)) = store().await else {
        return;
    };
    // Without a key: one statement (an INSERT announcing the queue, so a SELECT).
    let plain = task(NewTask::new("plain"));
    proxy.arm("SELECT");
    let answer = store
        .enqueue(vec![plain.clone()])
        .await
        .expect("the enqueue was stored");
    assert_eq!(proxy.cuts(), 1, "the proxy cut the enqueue's answer");
    assert_eq!(
        answer,
        [Enqueued {
            id: plain.id,
            duplicate: false
        }]
    );
    assert_eq!(store.get(plain.id).await.unwrap().status, TaskStatus::Pending);

    // With a key: a transaction, cut at its commit.
    let keyed = task(NewTask::new("keyed").unique_key("k"));
    proxy.arm("COMMIT");
    let answer = store
        .enqueue(vec![keyed.clone()])
        .await
        .expect("the enqueue was stored");
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(
        answer,
        [Enqueued {
            id: keyed.id,
            duplicate: false
        }]
    );
    // A duplicate of it, cut at its commit: nothing of it is stored, and
    // the answer still names the holder.
    let again = task(NewTask::new("keyed").unique_key("k"));
    proxy.arm("COMMIT");
    let answer = store
        .enqueue(vec![again])
        .await
        .expect("the duplicate is answered");
    assert_eq!(proxy.cuts(), 3);
    assert_eq!(
        answer,
        [Enqueued {
            id: keyed.id,
            duplicate: true
        }]
    );
    assert_eq!(store.counts().await.unwrap().pending, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_hands_over_what_it_claimed() {
    let Some((store, proxy, _schema)) = store().await else {
        return;
    };
    let tasks: Vec<Task> = (0..3).map(|_| task(NewTask::new("t"))).collect();
    store.enqueue(tasks.clone()).await.unwrap();
    proxy.arm("UPDATE");
    let claimed = store.claim(request(2)).await.expect("the claim is read back");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(claimed.len(), 2, "the two tasks the lost claim took");
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.running, counts.pending),
        (2, 1),
        "no other claim was made"
    );
    // The tasks handed over are really this caller's: their finishes apply.
    for claimed in &claimed {
        assert_eq!(claimed.attempts, 1);
        let answer = store
            .finish(
                vec![Finish {
                    id: claimed.id,
                    token: claimed.lease.as_ref().unwrap().token,
                    outcome: Outcome::Complete {
                        result: serde_json::json!(1),
                    },
                }],
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        assert!(matches!(
            answer[0],
            FinishOutcome::Applied {
                status: TaskStatus::Completed,
                ..
            }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_whose_answer_was_lost_answers_that_it_applied() {
    let Some((store, proxy, _schema)) = store().await else {
        return;
    };
    store
        .enqueue(vec![
            task(NewTask::new("a")),
            task(NewTask::new("b").max_retries(3)),
        ])
        .await
        .unwrap();
    let claimed = store.claim(request(2)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let finish = |task: &Task, outcome| Finish {
        id: task.id,
        token: task.lease.as_ref().unwrap().token,
        outcome,
    };
    // A completion: the one fenced UPDATE.
    proxy.arm("UPDATE");
    let answer = store
        .finish(
            vec![finish(
                &claimed[0],
                Outcome::Complete {
                    result: serde_json::json!("done"),
                },
            )],
            OffsetDateTime::now_utc(),
        )
        .await
        .expect("the finish is read back");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(
        answer,
        [FinishOutcome::Applied {
            status: TaskStatus::Completed,
            next: None
        }]
    );
    assert_eq!(
        store.get(claimed[0].id).await.unwrap().result,
        Some(serde_json::json!("done"))
    );
    // A retry: the transaction, cut at its commit.
    let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
    proxy.arm("COMMIT");
    let answer = store
        .finish(
            vec![finish(
                &claimed[1],
                Outcome::Retry {
                    error: TaskError::new("handler", "again", 1, true),
                    at: later,
                },
            )],
            OffsetDateTime::now_utc(),
        )
        .await
        .expect("the finish is read back");
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(
        answer,
        [FinishOutcome::Applied {
            status: TaskStatus::Pending,
            next: None
        }]
    );
    let retried = store.get(claimed[1].id).await.unwrap();
    assert_eq!((retried.status, retried.attempts), (TaskStatus::Pending, 1));
}
