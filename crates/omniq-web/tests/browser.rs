//! The dashboard in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini). It reads the counts, opens a
//! failed task, retries it, sees a task enqueued by the test appear without a
//! reload, is sent to the login form on a non-loopback bind with a token, and
//! saves a screenshot under `target/`.
//!
//! Where Chromium or chromedriver is missing the test says so and passes,
//! except with `OMNIQ_REQUIRE_BROWSER=1` (as `.ci/run` sets), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use omniq_core::{
    ClaimRequest, Durability, Finish, NewTask, Outcome, Settings, Storage, TaskError, TaskId, TaskStatus,
};
use omniq_web::Options;
use omniq_worker::Signals;
use serde_json::json;
use time::OffsetDateTime;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver and waits (at most 20 s) until it accepts connections.
async fn start_driver() -> (Driver, u16) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (driver, port)
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    // chromedriver listens on loopback over plain HTTP.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver")
}

/// A store with a failed, a completed and a pending task.
async fn seed(store: &dyn Storage) -> TaskId {
    let now = OffsetDateTime::now_utc();
    let new = |task: NewTask| task.into_task(&Settings::default(), now).unwrap();
    let failed = new(NewTask::with_payload("email.send", &json!({"to": "<b>ada</b>"}))
        .unwrap()
        .max_retries(0));
    let done = new(NewTask::new("report.build").queue("reports"));
    let waiting = new(NewTask::new("later").eta(now + Duration::from_secs(3600)));
    let id = failed.id;
    store.enqueue(vec![failed, done, waiting]).await.unwrap();
    let mut claimed = Vec::new();
    for queue in ["default", "reports"] {
        claimed.extend(
            store
                .claim(ClaimRequest {
                    queue: queue.into(),
                    worker_id: "browser-test".into(),
                    limit: 5,
                    lease_for: Duration::from_secs(60),
                    now,
                })
                .await
                .unwrap(),
        );
    }
    let finishes = claimed
        .iter()
        .map(|t| Finish {
            id: t.id,
            token: t.lease.as_ref().unwrap().token,
            outcome: match t.id == id {
                true => Outcome::Fail {
                    error: TaskError::new("handler", "the mail server said no", 1, false),
                },
                false => Outcome::Complete { result: json!("ok") },
            },
        })
        .collect();
    store.finish(finishes, now).await.unwrap();
    id
}

/// Serves the dashboard on `bind`; returns its address.
async fn serve(
    store: Arc<dyn Storage>,
    signals: Arc<Signals>,
    bind: &str,
    options: Options,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(omniq_web::serve(
        listener,
        store,
        signals,
        options,
        std::future::pending(),
    ));
    addr
}

/// The text of the element `css`, waiting up to 10 s for `until` to hold
/// (the page updates itself; WebDriver can only look).
async fn text_until(client: &Client, css: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if until(&text) || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        let message = "skipping the browser test: Debian's chromium and chromium-driver are not installed \
                       (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var("OMNIQ_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "{message}"
        );
        eprintln!("{message}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(
        omniq_file::FileStorage::open_path(dir.path(), Durability::Normal)
            .await
            .unwrap(),
    );
    let failed = seed(&*store).await;
    let signals = Signals::new();
    let addr = serve(store.clone(), signals.clone(), "127.0.0.1:0", Options::default()).await;
    let base = format!("http://{addr}");

    let (_driver, port) = start_driver().await;
    let client = browser(port).await;

    // The counts.
    client.goto(&format!("{base}/")).await.unwrap();
    assert!(text_until(&client, "#count-failed", |t| t.starts_with('1'))
        .await
        .starts_with('1'));
    assert!(text_until(&client, "#count-completed", |t| t.starts_with('1'))
        .await
        .starts_with('1'));

    // A task enqueued now shows without a reload: the page follows /events.
    let marker = client.find(Locator::Css("#count-pending")).await.unwrap();
    assert!(marker.text().await.unwrap().starts_with('1'));
    let task = NewTask::new("fresh")
        .eta(OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .into_task(&Settings::default(), OffsetDateTime::now_utc())
        .unwrap();
    store.enqueue(vec![task]).await.unwrap();
    signals.task_enqueued();
    let pending = text_until(&client, "#count-pending", |t| t.starts_with('2')).await;
    assert!(
        pending.starts_with('2'),
        "the new task did not appear: {pending:?}"
    );
    let shot = target_dir().join("dashboard.png");
    std::fs::write(&shot, client.screenshot().await.unwrap()).unwrap();
    eprintln!("saved {}", shot.display());

    // The failed task, its payload shown as text, and its retry.
    client.goto(&format!("{base}/tasks/{failed}")).await.unwrap();
    let error = client
        .find(Locator::Css("#error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(error.contains("the mail server said no"), "{error}");
    let kwargs = client
        .find(Locator::Css("#kwargs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        kwargs.contains("<b>ada</b>"),
        "the payload shows as text: {kwargs}"
    );
    client
        .find(Locator::LinkText("Retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let changed = text_until(&client, "#changed", |t| !t.is_empty()).await;
    assert!(changed.contains("pending again"), "{changed}");
    assert_eq!(store.get(failed).await.unwrap().status, TaskStatus::Pending);
    client
        .find(Locator::LinkText("Back"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let badge = text_until(&client, "h1 .status", |t| t == "pending").await;
    assert_eq!(badge, "pending");

    // On an address other machines reach, the token is asked for first.
    assert!(omniq_web::check_bind("0.0.0.0:0".parse().unwrap(), &Options::default()).is_err());
    let guarded = Options {
        token: Some("open-sesame".into()),
        ..Options::default()
    };
    let open = serve(store.clone(), signals.clone(), "0.0.0.0:0", guarded).await;
    client
        .goto(&format!("http://127.0.0.1:{}/", open.port()))
        .await
        .unwrap();
    let url = client.current_url().await.unwrap();
    assert!(url.path().ends_with("/login"), "{url}");
    let field = client.find(Locator::Css("input[name=token]")).await.unwrap();
    field.send_keys("wrong").await.unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refusal = text_until(&client, ".error", |t| !t.is_empty()).await;
    assert!(refusal.contains("not the token"), "{refusal}");
    let field = client.find(Locator::Css("input[name=token]")).await.unwrap();
    field.send_keys("open-sesame").await.unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_until(&client, "#count-failed", |t| !t.is_empty())
        .await
        .contains("failed"));
    client.close().await.unwrap();
}
