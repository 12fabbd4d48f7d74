//! The `omniq` binary's queue commands (`queues`, `pause`, `resume`,
//! `list --queue`, `stats --queue`) and `omniq dashboard`, on both backends.

mod common;

use common::{both, Store};
use omniq::{OmniQ, Settings, TaskId};

/// Enqueues, into the store, tasks in the `emails` queue with priorities and a
/// unique key.
fn add_emails(s: &Store) -> TaskId {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = Settings::builder()
            .backend(s.backend)
            .base_dir(&s.base)
            .build()
            .unwrap();
        let queue = OmniQ::open(settings).await.unwrap();
        queue
            .task("send", &"a@example.com")
            .unwrap()
            .queue("emails")
            .priority(5)
            .enqueue()
            .await
            .unwrap();
        queue
            .task("send", &"b@example.com")
            .unwrap()
            .queue("emails")
            .unique_key("newsletter:7")
            .enqueue()
            .await
            .unwrap()
    })
}

#[test]
fn queues_pause_resume_and_per_queue_views() {
    for s in both() {
        let keyed = add_emails(&s).to_string();
        let json: Vec<serde_json::Value> = serde_json::from_str(&s.run(&["queues", "--json"])).unwrap();
        let names: Vec<&str> = json.iter().map(|q| q["queue"].as_str().unwrap()).collect();
        assert_eq!(names, ["default", "emails"]);
        assert_eq!(json[1]["counts"]["pending"], 2);
        assert_eq!(json[1]["paused"], false);
        assert!(json[1]["oldest_pending_age_s"].as_f64().unwrap() >= 0.0);
        assert!(
            json[0]["oldest_pending_age_s"].is_null(),
            "default's pending task is due later"
        );

        assert!(s.run(&["pause", "emails"]).contains("paused queue emails"));
        let table = s.run(&["queues"]);
        let emails = table.lines().find(|l| l.starts_with("emails")).unwrap();
        assert!(emails.contains("paused"), "{table}");
        let stats = s.run(&["stats", "--queue", "emails"]);
        assert!(stats.contains("queue      emails (paused)"), "{stats}");
        let counts: serde_json::Value =
            serde_json::from_str(&s.run(&["stats", "--queue", "emails", "--json"])).unwrap();
        assert_eq!(counts["pending"], 2);
        assert_eq!(counts["completed"], 0);
        let none: serde_json::Value =
            serde_json::from_str(&s.run(&["stats", "--queue", "nothing", "--json"])).unwrap();
        assert_eq!(none["pending"], 0);
        s.run(&["resume", "emails"]);
        assert!(!s.run(&["queues"]).contains("paused"));

        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&s.run(&["list", "--queue", "emails", "--json"])).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t["queue"] == "emails"));
        let table = s.run(&["list", "--queue", "emails"]);
        assert!(
            table.contains("PRIORITY") && table.contains("UNIQUE_KEY"),
            "{table}"
        );
        assert!(table.contains("newsletter:7"), "{table}");
        let plain = s.run(&["list", "--queue", "default"]);
        assert!(
            !plain.contains("UNIQUE_KEY") && plain.contains("QUEUE"),
            "{plain}"
        );
        let show = s.run(&["show", &keyed]);
        assert!(show.contains("queue        emails"), "{show}");
        assert!(show.contains("unique_key   newsletter:7"), "{show}");

        for bad in [
            vec!["pause", "a/b"],
            vec!["list", "--queue", ".."],
            vec!["stats", "--queue", ""],
        ] {
            let err = s.fail(&bad);
            assert!(err.contains("queue"), "{bad:?}: {err}");
        }
    }
}

/// A raw HTTP/1.0 GET on `addr`, as a browser's first request: the status
/// line and the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/html\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn dashboard_serves_the_store_and_refuses_an_open_address_without_a_token() {
    use std::io::BufRead;
    for s in both() {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("omniq"))
            .args(["--backend", s.backend.as_str(), "--base-dir"])
            .arg(&s.base)
            .args(["dashboard", "--bind", "127.0.0.1:0"])
            .env_remove("OMNIQ_DASHBOARD_TOKEN")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the URL");
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let counts = http_get(addr, "/api/counts");
        assert!(counts.starts_with("HTTP/1.0 200"), "{counts}");
        assert!(counts.contains("\"failed\":1"), "{counts}");
        let page = http_get(addr, &format!("/tasks/{}", s.failed));
        assert!(page.contains("it is broken"), "{page}");
        child.kill().unwrap();
        child.wait().unwrap();

        let err = s.fail(&["dashboard", "--bind", "0.0.0.0:0"]);
        assert!(err.contains("token"), "{err}");
    }
}

#[test]
fn workers_lists_the_pools_that_report_in() {
    for s in both() {
        assert!(
            s.run(&["workers"]).contains("no worker pools"),
            "the pool that made the store shut down and left"
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let settings = Settings::builder()
                .backend(s.backend)
                .base_dir(&s.base)
                .build()
                .unwrap();
            let queue = OmniQ::open(settings).await.unwrap();
            let now = time::OffsetDateTime::now_utc();
            let beat = |id: &str, last_seen: time::OffsetDateTime| omniq::WorkerBeat {
                worker_id: id.into(),
                host: "web-1".into(),
                pid: 4321,
                version: "0.1.0".into(),
                queues: vec![("default".into(), 4), ("emails".into(), 2)],
                running: 3,
                done: Default::default(),
                started_at: last_seen,
                last_seen,
                expires_at: last_seen + std::time::Duration::from_secs(20),
            };
            queue.storage().beat(beat("pid4321-alive", now)).await.unwrap();
            queue
                .storage()
                .beat(beat("pid99-gone", now - std::time::Duration::from_secs(120)))
                .await
                .unwrap();
        });
        let table = s.run(&["workers"]);
        let alive = table.lines().find(|l| l.starts_with("pid4321-alive")).unwrap();
        assert!(
            alive.contains("web-1") && alive.contains("default=4,emails=2") && alive.contains("alive"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("pid99-gone") && l.contains("missing")),
            "{table}"
        );
        let json: Vec<serde_json::Value> = serde_json::from_str(&s.run(&["workers", "--json"])).unwrap();
        assert_eq!(json.len(), 2);
        assert_eq!(json[0]["worker_id"], "pid4321-alive");
        assert_eq!(json[0]["alive"], true);
        assert_eq!(json[0]["running"], 3);
        assert_eq!(json[1]["alive"], false);
    }
}

#[test]
fn list_filters_by_handler() {
    for s in both() {
        let json: Vec<serde_json::Value> =
            serde_json::from_str(&s.run(&["list", "--handler", "broken", "--json"])).unwrap();
        assert_eq!(json.len(), 1, "{:?}", s.backend);
        assert_eq!(json[0]["id"], s.failed.to_string());
        let adds: Vec<serde_json::Value> =
            serde_json::from_str(&s.run(&["list", "--handler", "add", "--json"])).unwrap();
        assert_eq!(adds.len(), 2);
        assert!(s.run(&["list", "--handler", "nothing"]).lines().count() <= 1);
    }
}

#[test]
fn show_lists_the_failed_attempts() {
    for s in both() {
        let shown = s.run(&["show", &s.failed.to_string()]);
        assert!(shown.contains("failed attempts:"), "{shown}");
        let line = shown.lines().find(|l| l.trim_start().starts_with("#1")).unwrap();
        assert!(
            line.contains("it is broken") && line.contains("worker pid"),
            "{shown}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&s.run(&["show", &s.failed.to_string(), "--json"])).unwrap();
        assert_eq!(json["errors"][0]["message"], "it is broken");
        assert!(json["errors"][0]["worker_id"]
            .as_str()
            .unwrap()
            .starts_with("pid"));
        assert!(!s.run(&["show", &s.done.to_string()]).contains("failed attempts"));
    }
}

#[test]
fn queues_set_changes_the_flow_control_settings_and_queues_shows_them() {
    for s in both() {
        add_emails(&s);
        let said = s.run(&[
            "queues",
            "set",
            "emails",
            "--limit",
            "5",
            "--per-key",
            "1",
            "--rate",
            "100/s",
        ]);
        assert!(said.contains("at most 5 running"), "{said}");
        assert!(said.contains("1 per concurrency key"), "{said}");
        let table = s.run(&["queues"]);
        let emails = table.lines().find(|l| l.starts_with("emails")).unwrap();
        assert!(emails.contains("0/5"), "{table}");
        assert!(emails.contains("100/s"), "{table}");
        // Settings not named stay; `none` clears one.
        s.run(&[
            "queues",
            "set",
            "emails",
            "--limit",
            "none",
            "--key-rate",
            "6/m",
            "--hold-failed",
            "true",
        ]);
        let json: Vec<serde_json::Value> = serde_json::from_str(&s.run(&["queues", "--json"])).unwrap();
        let emails = json.iter().find(|q| q["queue"] == "emails").unwrap();
        assert_eq!(
            emails["limits"],
            serde_json::json!({"per_key": 1, "hold_failed": true,
                "rate": {"count": 100, "per": {"secs": 1, "nanos": 0}},
                "key_rate": {"count": 6, "per": {"secs": 60, "nanos": 0}}})
        );
        assert_eq!(emails["running_under_lease"], 0);
        // A queue with settings and no task is listed.
        s.run(&["queues", "set", "api", "--limit", "1"]);
        assert!(s.run(&["queues"]).lines().any(|l| l.starts_with("api")));
        // Values out of range get a clear error and change nothing.
        for (flag, value, says) in [
            ("--limit", "0", "1 to 100000"),
            ("--limit", "x", "not a whole number"),
            ("--rate", "0/s", "1 to 1000000"),
            ("--rate", "5/d", "period unit"),
        ] {
            let error = s.fail(&["queues", "set", "emails", flag, value]);
            assert!(error.contains(says), "{flag} {value}: {error}");
        }
        let error = s.fail(&["queues", "set", "fresh", "--hold-failed", "true"]);
        assert!(error.contains("per-key limit"), "{error}");
        s.run(&["queues", "clear", "emails"]);
        let json: Vec<serde_json::Value> = serde_json::from_str(&s.run(&["queues", "--json"])).unwrap();
        let emails = json.iter().find(|q| q["queue"] == "emails").unwrap();
        assert_eq!(emails["limits"], serde_json::json!({}));
    }
}
