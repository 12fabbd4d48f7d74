//! What protects a dashboard before any page runs: the host names a
//! token-less dashboard answers to (DNS rebinding), the origins requests may
//! come from, the headers that keep pages out of frames, one shared watcher
//! for every live stream and their cap, and the mount path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use omniq_core::{MemoryStorage, Storage};
use omniq_web::{check_prefix, router, Options};
use omniq_worker::Signals;
use tower::ServiceExt;

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn request(method: &str, path: &str, host: &str, origin: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn pause(csrf: &str) -> String {
    format!(r#"{{"action": "pause", "queue": "default", "csrf": "{csrf}"}}"#)
}

/// A page of a name the attacker controls, resolved to 127.0.0.1, reads the
/// CSRF token and pauses a queue: refused, on both requests.
#[tokio::test]
async fn a_rebound_host_name_is_refused_without_a_token() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let app = router(store.clone(), Signals::new(), Options::default());
    let evil = "rebind.attacker.example";
    let origin = Some("http://rebind.attacker.example");
    let (status, _, _) = send(&app, request("GET", "/api/csrf", evil, origin, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&app, request("POST", "/api/actions", evil, origin, &pause("x"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(store.paused().await.unwrap().is_empty());

    // Loopback names answer, with or without a port.
    for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST"] {
        let (status, _, body) = send(&app, request("GET", "/api/csrf", host, None, "")).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert!(body.contains("csrf"));
    }
    // The dashboard's own page posts with its own origin: accepted.
    let (_, _, body) = send(&app, request("GET", "/api/csrf", "127.0.0.1:8080", None, "")).await;
    let csrf: serde_json::Value = serde_json::from_str(&body).unwrap();
    let csrf = csrf["csrf"].as_str().unwrap();
    let (status, _, _) = send(
        &app,
        request(
            "POST",
            "/api/actions",
            "127.0.0.1:8080",
            Some("http://127.0.0.1:8080"),
            &pause(csrf),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(store.paused().await.unwrap(), ["default"]);
    // Another origin, even with the token read some other way: refused.
    let (status, _, _) = send(
        &app,
        request(
            "POST",
            "/api/actions",
            "127.0.0.1:8080",
            Some("http://evil.example"),
            &pause(csrf),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Names given with `--allow-host` answer; a dashboard with a token answers
/// every name (the cookie is the browser's proof).
#[tokio::test]
async fn allowed_names_and_tokens_open_other_hosts() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let allowed = Options {
        allowed_hosts: vec!["queue.internal".into()],
        ..Options::default()
    };
    let app = router(store.clone(), Signals::new(), allowed);
    let (status, _, _) = send(
        &app,
        request("GET", "/api/counts", "queue.internal:8080", None, ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, request("GET", "/api/counts", "other.internal", None, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let guarded = Options {
        token: Some("t0ken".into()),
        ..Options::default()
    };
    let app = router(store, Signals::new(), guarded);
    let mut req = request("GET", "/api/counts", "jobs.example.com", None, "");
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
    let (status, _, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every answer, pages, login and refusals alike, forbids framing and
/// inline scripts and styles.
#[tokio::test]
async fn every_answer_forbids_framing() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let app = router(store.clone(), Signals::new(), Options::default());
    let guarded = router(
        store,
        Signals::new(),
        Options {
            token: Some("t".into()),
            ..Options::default()
        },
    );
    for (app, path, host) in [
        (&app, "/", "127.0.0.1"),
        (&app, "/confirm?action=purge&age=7d", "127.0.0.1"),
        (&app, "/tasks", "127.0.0.1"),
        (&app, "/", "rebind.attacker.example"),
        (&guarded, "/login", "127.0.0.1"),
    ] {
        let (_, headers, _) = send(app, request("GET", path, host, None, "")).await;
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
    }
    // The page's style is a file of its own, which the policy allows.
    let (status, headers, body) = send(&app, request("GET", "/", "127.0.0.1", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("/assets/style.css") && !body.contains("<style"));
    let (status, _, css) = send(&app, request("GET", "/assets/style.css", "127.0.0.1", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains("body{"));
    drop(headers);
}

/// A store that counts its `counts` calls.
#[derive(Debug)]
struct Counting {
    inner: MemoryStorage,
    counts: AtomicUsize,
}

#[omniq_core::async_trait]
impl Storage for Counting {
    fn backend_name(&self) -> &'static str {
        "counting"
    }
    async fn enqueue(&self, t: Vec<omniq_core::Task>) -> omniq_core::Result<Vec<omniq_core::Enqueued>> {
        self.inner.enqueue(t).await
    }
    async fn import(&self, t: Vec<omniq_core::Task>) -> omniq_core::Result<Vec<omniq_core::Enqueued>> {
        self.inner.import(t).await
    }
    async fn claim(&self, r: omniq_core::ClaimRequest) -> omniq_core::Result<Vec<omniq_core::Task>> {
        self.inner.claim(r).await
    }
    async fn renew(
        &self,
        l: &[omniq_core::LeaseRef],
        d: Duration,
        n: time::OffsetDateTime,
    ) -> omniq_core::Result<Vec<omniq_core::RenewOutcome>> {
        self.inner.renew(l, d, n).await
    }
    async fn set_progress(
        &self,
        l: omniq_core::LeaseRef,
        p: omniq_core::Progress,
    ) -> omniq_core::Result<bool> {
        self.inner.set_progress(l, p).await
    }
    async fn finish(
        &self,
        f: Vec<omniq_core::Finish>,
        n: time::OffsetDateTime,
    ) -> omniq_core::Result<Vec<omniq_core::FinishOutcome>> {
        self.inner.finish(f, n).await
    }
    async fn next_due(&self, q: &[String]) -> omniq_core::Result<Option<time::OffsetDateTime>> {
        self.inner.next_due(q).await
    }
    async fn get(&self, id: omniq_core::TaskId) -> omniq_core::Result<omniq_core::Task> {
        self.inner.get(id).await
    }
    async fn list(&self, q: omniq_core::ListQuery) -> omniq_core::Result<Vec<omniq_core::Task>> {
        self.inner.list(q).await
    }
    async fn cancel(
        &self,
        id: omniq_core::TaskId,
        n: time::OffsetDateTime,
    ) -> omniq_core::Result<Vec<omniq_core::TaskId>> {
        self.inner.cancel(id, n).await
    }
    async fn retry(&self, id: omniq_core::TaskId, n: time::OffsetDateTime) -> omniq_core::Result<()> {
        self.inner.retry(id, n).await
    }
    async fn counts(&self) -> omniq_core::Result<omniq_core::StatusCounts> {
        self.counts.fetch_add(1, Ordering::SeqCst);
        self.inner.counts().await
    }
    async fn set_paused(&self, q: &str, p: bool) -> omniq_core::Result<()> {
        self.inner.set_paused(q, p).await
    }
    async fn paused(&self) -> omniq_core::Result<Vec<String>> {
        self.inner.paused().await
    }
    async fn set_queue_limits(&self, queue: &str, limits: omniq_core::QueueLimits) -> omniq_core::Result<()> {
        self.inner.set_queue_limits(queue, limits).await
    }
    async fn queue_flows(&self, now: time::OffsetDateTime) -> omniq_core::Result<Vec<omniq_core::QueueFlow>> {
        self.inner.queue_flows(now).await
    }
    async fn queue_stats(&self) -> omniq_core::Result<Vec<omniq_core::QueueStats>> {
        self.inner.queue_stats().await
    }
    async fn put_schedule(
        &self,
        s: omniq_core::Schedule,
        m: omniq_core::PutSchedule,
    ) -> omniq_core::Result<omniq_core::PutAnswer> {
        self.inner.put_schedule(s, m).await
    }
    async fn schedules(&self) -> omniq_core::Result<Vec<omniq_core::Schedule>> {
        self.inner.schedules().await
    }
    async fn remove_schedule(&self, n: &str) -> omniq_core::Result<bool> {
        self.inner.remove_schedule(n).await
    }
    async fn set_schedule_paused(&self, n: &str, p: bool) -> omniq_core::Result<bool> {
        self.inner.set_schedule_paused(n, p).await
    }
    async fn fire_schedule(
        &self,
        n: &str,
        d: time::OffsetDateTime,
        x: time::OffsetDateTime,
        t: omniq_core::Task,
    ) -> omniq_core::Result<Option<omniq_core::Enqueued>> {
        self.inner.fire_schedule(n, d, x, t).await
    }
    async fn skip_schedule(
        &self,
        n: &str,
        d: time::OffsetDateTime,
        x: time::OffsetDateTime,
    ) -> omniq_core::Result<bool> {
        self.inner.skip_schedule(n, d, x).await
    }
    async fn purge(&self, b: time::OffsetDateTime) -> omniq_core::Result<u64> {
        self.inner.purge(b).await
    }
    async fn prune(
        &self,
        status: omniq_core::TaskStatus,
        before: time::OffsetDateTime,
        limit: usize,
    ) -> omniq_core::Result<u64> {
        self.inner.prune(status, before, limit).await
    }
    async fn beat(&self, beat: omniq_core::WorkerBeat) -> omniq_core::Result<()> {
        self.inner.beat(beat).await
    }
    async fn workers(&self) -> omniq_core::Result<Vec<omniq_core::WorkerBeat>> {
        self.inner.workers().await
    }
    async fn remove_worker(&self, worker_id: &str) -> omniq_core::Result<bool> {
        self.inner.remove_worker(worker_id).await
    }
    async fn requeue_expired(&self, n: time::OffsetDateTime) -> omniq_core::Result<Vec<omniq_core::TaskId>> {
        self.inner.requeue_expired(n).await
    }
}

/// Fifty open pages cost the store what one does: one watcher compares the
/// counts every two seconds for all of them; past the cap, a stream is
/// refused; and a pause made on the dashboard reaches every open page.
#[tokio::test(start_paused = true)]
async fn open_streams_share_one_watcher_and_are_capped() {
    let store = Arc::new(Counting {
        inner: MemoryStorage::new(),
        counts: AtomicUsize::new(0),
    });
    let app = router(store.clone(), Signals::new(), Options::default());
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for _ in 0..50 {
        let response = app
            .clone()
            .oneshot(request("GET", "/events", "127.0.0.1", None, ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let events_tx = events_tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    if String::from_utf8_lossy(data).contains("change") {
                        let _ = events_tx.send(());
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = store.counts.load(Ordering::SeqCst);
    assert!(calls <= 12, "{calls} calls of counts in 20 s for 50 streams");

    // The cap: 64 at once.
    let mut held = Vec::new();
    for _ in 50..omniq_web::MAX_STREAMS {
        let response = app
            .clone()
            .oneshot(request("GET", "/events", "127.0.0.1", None, ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let refused = app
        .clone()
        .oneshot(request("GET", "/events", "127.0.0.1", None, ""))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    let again = app
        .clone()
        .oneshot(request("GET", "/events", "127.0.0.1", None, ""))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    // A pause on the dashboard: every open page hears it.
    let (_, _, body) = send(&app, request("GET", "/api/csrf", "127.0.0.1", None, "")).await;
    let csrf: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _, _) = send(
        &app,
        request(
            "POST",
            "/api/actions",
            "127.0.0.1",
            None,
            &pause(csrf["csrf"].as_str().unwrap()),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("every stream hears the pause");
    }
    for reader in readers {
        reader.abort();
    }
}

#[test]
fn prefixes_are_checked_and_made_canonical() {
    assert_eq!(check_prefix("").unwrap(), "");
    assert_eq!(check_prefix("/").unwrap(), "");
    assert_eq!(check_prefix("omniq").unwrap(), "/omniq");
    assert_eq!(check_prefix("/omniq/").unwrap(), "/omniq");
    assert_eq!(check_prefix("/ops/omniq").unwrap(), "/ops/omniq");
    for bad in ["/{*rest}", "/a b", "/../x", "//x//y", "/:id"] {
        assert!(
            matches!(check_prefix(bad), Err(omniq_core::Error::InvalidConfig { .. })),
            "{bad}"
        );
    }
}

/// `serve` under a prefix answers `/omniq` and sends `/omniq/` there; a
/// prefix it cannot serve is an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_both_forms_of_its_prefix() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    for bad in ["/{*rest}", "/a b"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = Options {
            prefix: bad.into(),
            ..Options::default()
        };
        let refused = omniq_web::serve(listener, store.clone(), Signals::new(), options, async {}).await;
        assert!(
            matches!(refused, Err(omniq_core::Error::InvalidConfig { .. })),
            "{refused:?}"
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Options {
        prefix: "omniq".into(),
        ..Options::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(omniq_web::serve(
        listener,
        store,
        Signals::new(),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let status_of = |path: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ask = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(ask.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(status_of("/omniq").await.starts_with("HTTP/1.1 200"));
    let slash = status_of("/omniq/").await;
    assert!(slash.starts_with("HTTP/1.1 308"), "{slash}");
    assert!(
        slash.to_ascii_lowercase().contains("location: /omniq\r\n"),
        "{slash}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
