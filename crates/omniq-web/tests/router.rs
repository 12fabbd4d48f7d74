//! The dashboard's router through tower's `oneshot`: every page and API route
//! on a store seeded with every status, on the memory, file and SQLite
//! backends; the token, CSRF and read-only rules; escaping.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use omniq_core::{MemoryStorage, Storage, TaskStatus};
use omniq_web::{check_bind, router, Options};
use omniq_worker::Signals;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tower::ServiceExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_api_route_answers_on_every_backend() {
    for (backend, store, _guard) in stores().await {
        let seeded = seed(&*store).await;
        let app = router(store.clone(), Signals::new(), Options::default());

        let overview = send(&app, get("/")).await;
        assert_eq!(overview.status, StatusCode::OK, "{backend}");
        for needle in [
            "pending",
            "running",
            "completed",
            "failed",
            "cancelled",
            "reports",
            "paused",
            "web-test",
        ] {
            assert!(
                overview.body.contains(needle),
                "{backend}: the overview lacks {needle}"
            );
        }
        assert!(overview.body.contains("<svg"), "{backend}: the throughput chart");

        let list = send(&app, get("/tasks")).await;
        assert_eq!(list.status, StatusCode::OK);
        assert!(
            list.body.contains(&seeded.failed.to_string()) && list.body.contains(&seeded.pending.to_string())
        );
        let failed = send(&app, get("/tasks?status=failed&queue=&func=&q=")).await;
        assert!(failed.body.contains(&seeded.failed.to_string()));
        assert!(
            !failed.body.contains(&seeded.pending.to_string()),
            "{backend}: the status filter"
        );
        let by_func = send(&app, get("/tasks?func=report.build")).await;
        assert!(by_func.body.contains(&seeded.completed.to_string()));
        assert!(!by_func.body.contains(&seeded.failed.to_string()));
        let needle = &seeded.pending.to_string()[24..];
        let by_text = send(&app, get(&format!("/tasks?q={needle}"))).await;
        assert!(by_text.body.contains(&seeded.pending.to_string()));
        assert!(!by_text.body.contains(&seeded.failed.to_string()));
        let bad = send(&app, get("/tasks?status=done")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);

        // The payload and the error hold a script: both show as text.
        let detail = send(&app, get(&format!("/tasks/{}", seeded.failed))).await;
        assert_eq!(detail.status, StatusCode::OK);
        assert!(!detail.body.contains(XSS), "{backend}: unescaped payload");
        assert!(detail.body.contains("&lt;script&gt;"), "{backend}");
        assert!(detail.body.contains("bad address") && detail.body.contains("not retryable"));
        assert!(detail.body.contains("Retry"), "a failed task offers a retry");
        assert!(
            detail.body.contains("Failed attempts") && detail.body.contains("id=\"attempts\""),
            "{backend}: the attempt history"
        );
        assert!(
            detail.body.contains("web-test"),
            "{backend}: the worker of the failed attempt"
        );
        // A running task's progress, its message escaped.
        let running = send(&app, get(&format!("/tasks/{}", seeded.running))).await;
        assert!(
            running.body.contains("Progress") && running.body.contains("25%"),
            "{backend}"
        );
        assert!(running.body.contains("step 1 of 4 &lt;script&gt;"), "{backend}");
        let done = send(&app, get(&format!("/tasks/{}", seeded.completed))).await;
        assert!(done.body.contains("&quot;pages&quot;: 12") || done.body.contains("\"pages\": 12"));
        // Its key window and meta, the meta value escaped.
        assert!(done.body.contains("Key held until"), "{backend}");
        assert!(done.body.contains("completed, failed, cancelled"), "{backend}");
        assert!(
            done.body.contains("<code>note</code>") && !done.body.contains(XSS),
            "{backend}"
        );
        assert!(done.body.contains("&lt;script&gt;alert"), "{backend}");
        assert_eq!(
            send(&app, get("/tasks/not-an-id")).await.status,
            StatusCode::BAD_REQUEST
        );
        let missing = send(&app, get("/tasks/0190f0c2-8c4e-7a3b-9f1e-2d4c6b8a0e1f")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(!missing.body.contains("panicked") && !missing.body.contains("src/"));

        let queues = send(&app, get("/queues")).await;
        assert!(
            queues.body.contains("Resume") && queues.body.contains("Pause"),
            "{backend}"
        );
        assert!(
            queues.body.contains("0/3 running · 1 per key · 20/s"),
            "{backend}: the flow-control settings"
        );
        assert_eq!(
            send(&app, get("/fragments/overview")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, get("/fragments/tasks?status=pending")).await.status,
            StatusCode::OK
        );
        let script = send(&app, get("/assets/live.js")).await;
        assert!(script.body.contains("EventSource"));

        let counts: Value = serde_json::from_str(&send(&app, get("/api/counts")).await.body).unwrap();
        assert_eq!(
            counts,
            json!({"pending": 1, "running": 2, "completed": 1, "failed": 1, "cancelled": 1})
        );
        let queues: Value = serde_json::from_str(&send(&app, get("/api/queues")).await.body).unwrap();
        assert_eq!(queues.as_array().unwrap().len(), 2);
        assert_eq!(queues[1]["paused"], true);
        let tasks: Value =
            serde_json::from_str(&send(&app, get("/api/tasks?status=failed")).await.body).unwrap();
        assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(
            tasks["tasks"][0]["kwargs"]["to"], XSS,
            "JSON keeps the payload as it is"
        );
        let task: Value = serde_json::from_str(
            &send(&app, get(&format!("/api/tasks/{}", seeded.pending)))
                .await
                .body,
        )
        .unwrap();
        assert_eq!(task["status"], "pending");

        let metrics = send(&app, get("/metrics")).await;
        assert!(metrics.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert!(
            metrics
                .body
                .contains("omniq_tasks{queue=\"default\",status=\"failed\"} 1"),
            "{}",
            metrics.body
        );
        assert!(metrics.body.contains("omniq_queue_paused{queue=\"reports\"} 1"));
        assert!(metrics
            .body
            .contains("omniq_oldest_pending_age_seconds{queue=\"default\"}"));

        // The pools that report in: the living one, the missing one marked,
        // the host name (a script here) escaped.
        let workers = send(&app, get("/workers")).await;
        assert_eq!(workers.status, StatusCode::OK, "{backend}");
        assert!(
            workers.body.contains("web-test") && workers.body.contains("gone-worker"),
            "{backend}"
        );
        assert!(
            workers.body.contains("alive") && workers.body.contains("missing"),
            "{backend}"
        );
        assert!(
            !workers.body.contains(XSS) && workers.body.contains("&lt;script&gt;"),
            "{backend}"
        );
        assert!(
            overview.body.contains("/workers"),
            "{backend}: the navigation links the workers page"
        );
        let api: Value = serde_json::from_str(&send(&app, get("/api/workers")).await.body).unwrap();
        assert_eq!(api[0]["worker_id"], "web-test", "{backend}: the living first");
        assert_eq!(
            (api[0]["alive"].clone(), api[1]["alive"].clone()),
            (json!(true), json!(false))
        );
        assert!(
            metrics.body.contains("omniq_workers{state=\"alive\"} 1"),
            "{}",
            metrics.body
        );
        assert!(metrics.body.contains("omniq_workers{state=\"missing\"} 1"));
        assert!(metrics.body.contains("omniq_worker_attempts_total{worker=\"web-test\",host=\"<script>alert('owned')</script>\",outcome=\"completed\"} 40"), "{}", metrics.body);
        assert!(metrics.body.contains(
            "omniq_worker_running_tasks{worker=\"web-test\",host=\"<script>alert('owned')</script>\"} 2"
        ));

        let events = app.clone().oneshot(get("/events")).await.unwrap();
        assert_eq!(events.status(), StatusCode::OK);
        assert_eq!(events.headers()[header::CONTENT_TYPE], "text/event-stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_ask_confirmation_need_the_csrf_token_and_say_what_changed() {
    for (backend, store, _guard) in stores().await {
        let seeded = seed(&*store).await;
        let app = router(store.clone(), Signals::new(), Options::default());
        let confirm = send(&app, get(&format!("/confirm?action=retry&id={}", seeded.failed))).await;
        assert_eq!(confirm.status, StatusCode::OK);
        assert!(confirm.body.contains("back to pending"), "{}", confirm.body);
        let csrf = csrf_of(&confirm.body);

        // Without the token, or with a wrong one: refused, nothing changed.
        for form in [
            format!("action=retry&id={}", seeded.failed),
            format!("action=retry&id={}&csrf=nope", seeded.failed),
        ] {
            let refused = send(&app, post_form("/act", &form)).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{backend}");
        }
        assert_eq!(store.get(seeded.failed).await.unwrap().status, TaskStatus::Failed);

        let done = send(
            &app,
            post_form("/act", &format!("action=retry&id={}&csrf={csrf}", seeded.failed)),
        )
        .await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert!(done.body.contains("pending again"));
        assert_eq!(
            store.get(seeded.failed).await.unwrap().status,
            TaskStatus::Pending
        );

        let resumed = send(
            &app,
            post_form("/act", &format!("action=resume&queue=reports&csrf={csrf}")),
        )
        .await;
        assert!(resumed.body.contains("running again"));
        assert!(store.paused().await.unwrap().is_empty());
        let cancelled = send(
            &app,
            post_form(
                "/act",
                &format!("action=cancel&id={}&csrf={csrf}", seeded.pending),
            ),
        )
        .await;
        assert!(cancelled.body.contains("Cancelled 1 task"), "{}", cancelled.body);
        let purged = send(
            &app,
            post_form("/act", &format!("action=purge&age=0s&csrf={csrf}")),
        )
        .await;
        assert!(
            purged.body.contains("finished task(s)"),
            "{backend}: {}",
            purged.body
        );
        let left = store.counts().await.unwrap();
        assert_eq!(left.completed, 0, "{backend}: the completed task was purged");
        let bad = send(
            &app,
            post_form("/act", &format!("action=purge&age=soon&csrf={csrf}")),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let bad = send(
            &app,
            post_form("/act", &format!("action=pause&queue=a%2Fb&csrf={csrf}")),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);

        // A queue's flow-control settings: the queues page's form asks for
        // a confirmation that states them, whose POST stores exactly them.
        let queues = send(&app, get("/queues")).await;
        assert!(queues.body.contains("Edit limits") && queues.body.contains("value=\"20/s\""));
        let confirm = send(
            &app,
            get("/confirm?action=limits&queue=reports&limit=4&per_key=&rate=10%2Fs"),
        )
        .await;
        assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
        assert!(
            confirm
                .body
                .contains("queue reports, for every process, to: at most 4 running, 10/s"),
            "{}",
            confirm.body
        );
        let set = send(
            &app,
            post_form(
                "/act",
                &format!("action=limits&queue=reports&limit=4&per_key=&rate=10%2Fs&csrf={csrf}"),
            ),
        )
        .await;
        assert!(
            set.body.contains("Queue reports: at most 4 running, 10/s."),
            "{}",
            set.body
        );
        let flows = store.queue_flows(OffsetDateTime::now_utc()).await.unwrap();
        let expected = omniq_core::QueueLimits {
            limit: Some(4),
            rate: Some("10/s".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(flows[0].limits, expected, "{backend}");
        for bad in ["limit=0", "limit=x", "rate=5%2Fd", "hold_failed=on"] {
            let refused = send(
                &app,
                post_form("/act", &format!("action=limits&queue=reports&{bad}&csrf={csrf}")),
            )
            .await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{backend}: {bad}");
        }
        assert_eq!(
            store.queue_flows(OffsetDateTime::now_utc()).await.unwrap()[0].limits,
            expected
        );
        let cleared = send(
            &app,
            post_form("/act", &format!("action=limits&queue=reports&csrf={csrf}")),
        )
        .await;
        assert!(
            cleared.body.contains("Queue reports has no limits."),
            "{}",
            cleared.body
        );
        assert!(store
            .queue_flows(OffsetDateTime::now_utc())
            .await
            .unwrap()
            .is_empty());

        // The JSON API: the same rules.
        let api = |body: Value, csrf: Option<&str>| {
            let mut request = Request::post("/api/actions").header(header::CONTENT_TYPE, "application/json");
            if let Some(csrf) = csrf {
                request = request.header("x-csrf-token", csrf);
            }
            request.body(Body::from(body.to_string())).unwrap()
        };
        let refused = send(&app, api(json!({"action": "pause", "queue": "default"}), None)).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let token: Value = serde_json::from_str(&send(&app, get("/api/csrf")).await.body).unwrap();
        let paused = send(
            &app,
            api(
                json!({"action": "pause", "queue": "default"}),
                token["csrf"].as_str(),
            ),
        )
        .await;
        assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
        assert_eq!(store.paused().await.unwrap(), ["default"]);
        // The retried task is pending now: a second retry is a conflict.
        let conflict = send(
            &app,
            api(
                json!({"action": "retry", "id": seeded.failed.to_string()}),
                Some(&csrf),
            ),
        )
        .await;
        assert_eq!(conflict.status, StatusCode::CONFLICT);
    }
}

#[tokio::test]
async fn a_token_guards_every_route_and_the_login_sets_a_cookie() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    seed(&*store).await;
    let options = Options {
        token: Some("s3cret".into()),
        ..Options::default()
    };
    let app = router(store.clone(), Signals::new(), options);
    let page = send(&app, get("/")).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers[header::LOCATION], "/login");
    for path in ["/api/counts", "/metrics", "/events", "/tasks"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        assert_eq!(
            send(&app, request).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let wrong = Request::get("/api/counts")
        .header(header::AUTHORIZATION, "Bearer s3cre")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.status, StatusCode::UNAUTHORIZED);
    let right = Request::get("/api/counts")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, right).await.status, StatusCode::OK);
    // A program with the bearer token needs no CSRF token.
    let act = Request::post("/api/actions")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"action": "pause", "queue": "default"}).to_string(),
        ))
        .unwrap();
    assert_eq!(send(&app, act).await.status, StatusCode::OK);

    assert_eq!(send(&app, get("/login")).await.status, StatusCode::OK);
    let refused = send(&app, post_form("/login", "token=guess")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let login = send(&app, post_form("/login", "token=s3cret")).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let cookie = login.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = Request::get("/")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .body(Body::empty())
        .unwrap();
    let page = send(&app, with_cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    // A browser with the cookie still needs the CSRF token to change anything.
    let forged = Request::post("/act")
        .header(header::COOKIE, cookie.split(';').next().unwrap())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("action=resume&queue=default"))
        .unwrap();
    assert_eq!(send(&app, forged).await.status, StatusCode::FORBIDDEN);
    assert_eq!(store.paused().await.unwrap(), ["default", "reports"]);
}

#[tokio::test]
async fn a_read_only_dashboard_hides_and_refuses_actions() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let seeded = seed(&*store).await;
    let options = Options {
        read_only: true,
        ..Options::default()
    };
    let app = router(store.clone(), Signals::new(), options);
    let detail = send(&app, get(&format!("/tasks/{}", seeded.failed))).await;
    assert!(!detail.body.contains("action=retry"), "no retry link");
    assert!(!send(&app, get("/queues")).await.body.contains("action=resume"));
    assert!(!send(&app, get("/")).await.body.contains("Purge"));
    let confirm = send(&app, get(&format!("/confirm?action=retry&id={}", seeded.failed))).await;
    assert_eq!(confirm.status, StatusCode::FORBIDDEN);
    let token: Value = serde_json::from_str(&send(&app, get("/api/csrf")).await.body).unwrap();
    let csrf = token["csrf"].as_str().unwrap();
    let act = send(
        &app,
        post_form("/act", &format!("action=retry&id={}&csrf={csrf}", seeded.failed)),
    )
    .await;
    assert_eq!(act.status, StatusCode::FORBIDDEN);
    assert_eq!(store.get(seeded.failed).await.unwrap().status, TaskStatus::Failed);
}

#[tokio::test]
async fn links_follow_the_prefix() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    seed(&*store).await;
    let options = Options {
        prefix: "/omniq/".into(),
        ..Options::default()
    };
    let app = Router::new().nest("/omniq", router(store, Signals::new(), options));
    let page = send(&app, get("/omniq")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("href=\"/omniq/tasks\"") && page.body.contains("/omniq/assets/live.js"));
    assert_eq!(send(&app, get("/omniq/tasks")).await.status, StatusCode::OK);
}

#[test]
fn only_loopback_may_go_without_a_token() {
    let open = Options::default();
    let guarded = Options {
        token: Some("t".into()),
        ..Options::default()
    };
    assert!(check_bind("127.0.0.1:8080".parse().unwrap(), &open).is_ok());
    assert!(check_bind("[::1]:8080".parse().unwrap(), &open).is_ok());
    let refused = check_bind("0.0.0.0:8080".parse().unwrap(), &open).unwrap_err();
    assert!(refused.to_string().contains("token"), "{refused}");
    assert!(check_bind("0.0.0.0:8080".parse().unwrap(), &guarded).is_ok());
}

/// Under a prefix with a token, only the login form and the script are open,
/// and a path that merely ends like them is not.
#[tokio::test]
async fn only_the_login_and_the_script_are_open_under_a_prefix() {
    let store: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let options = Options {
        prefix: "/omniq".into(),
        token: Some("t0ken".into()),
        ..Options::default()
    };
    let app = Router::new().nest("/omniq", router(store, Signals::new(), options));
    assert_eq!(send(&app, get("/omniq/login")).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, get("/omniq/assets/live.js")).await.status,
        StatusCode::OK
    );
    let page = send(&app, get("/omniq")).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers[header::LOCATION], "/omniq/login");
    let sneaky = Request::get("/omniq/api/tasks/login")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, sneaky).await.status, StatusCode::UNAUTHORIZED);
}
