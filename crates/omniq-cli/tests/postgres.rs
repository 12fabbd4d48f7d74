//! The `omniq` binary on PostgreSQL: a store migrated from a file store is
//! read, paused and listed through `--database-url` and `OMNIQ_PG_SCHEMA`;
//! a schema that holds no store is an error, and reading creates nothing.
//! Skips where no server answers, except with `OMNIQ_REQUIRE_POSTGRES=1`.

mod common;

use common::store;
use omniq::BackendKind;

#[test]
fn every_command_reads_and_steers_a_postgres_store() {
    let url =
        std::env::var("OMNIQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into());
    let schema = format!("omniq_cli{}", std::process::id());
    let s = store(BackendKind::File);
    let pg = |args: &[&str]| {
        let mut cmd = assert_cmd::Command::cargo_bin("omniq").unwrap();
        cmd.env_remove("OMNIQ_BACKEND")
            .env_remove("OMNIQ_DATABASE_URL")
            .env("OMNIQ_PG_SCHEMA", &schema)
            .args(["--database-url", &url])
            .args(args);
        cmd.output().unwrap()
    };
    // Reading a schema that holds no store says so, and creates nothing.
    let missing = pg(&["stats"]);
    let err = String::from_utf8_lossy(&missing.stderr).into_owned();
    if err.contains("cannot connect") {
        assert!(
            std::env::var("OMNIQ_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "no PostgreSQL at {url}: {err}"
        );
        eprintln!("no PostgreSQL at {url}; skipping");
        return;
    }
    assert!(!missing.status.success());
    assert!(err.contains("holds no OmniQ store"), "{err}");

    let to = format!("{url}#{schema}");
    let migrated = s.run(&[
        "migrate",
        "--from",
        &format!("file:{}", s.base.display()),
        "--to",
        &to,
    ]);
    assert!(migrated.contains("copied 3"), "{migrated}");
    assert!(!migrated.contains("password"), "{migrated}");
    let stats = pg(&["stats", "--json"]);
    let counts: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        counts,
        serde_json::json!({"pending": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 0})
    );
    assert!(pg(&["pause", "default"]).status.success());
    let queues: serde_json::Value = serde_json::from_slice(&pg(&["queues", "--json"]).stdout).unwrap();
    assert_eq!(queues[0]["paused"], true);
    let shown = pg(&["show", &s.failed.to_string()]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("it is broken"));
    assert!(pg(&["retry", &s.failed.to_string()]).status.success());
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&pg(&["list", "--json", "--status", "pending"]).stdout).unwrap();
    assert_eq!(listed.len(), 2);

    // One grammar: the schema after a `#`, or --schema, as well as OMNIQ_PG_SCHEMA.
    let direct = |args: &[&str]| {
        let mut cmd = assert_cmd::Command::cargo_bin("omniq").unwrap();
        cmd.env_remove("OMNIQ_BACKEND")
            .env_remove("OMNIQ_DATABASE_URL")
            .env_remove("OMNIQ_PG_SCHEMA")
            .args(args);
        cmd.output().unwrap()
    };
    for args in [
        vec!["--database-url", to.as_str(), "stats", "--json"],
        vec![
            "--database-url",
            url.as_str(),
            "--schema",
            schema.as_str(),
            "stats",
            "--json",
        ],
    ] {
        let out = direct(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(counts["pending"], 2, "{args:?}");
    }
    let header = String::from_utf8(direct(&["--database-url", to.as_str(), "stats"]).stdout).unwrap();
    assert!(
        header.contains(&format!("#{schema}")) && !header.contains("##"),
        "{header}"
    );
    let conflict = direct(&["--database-url", to.as_str(), "--schema", "other", "stats"]);
    assert!(!conflict.status.success());
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("different schemas"));

    // `check` reads a PostgreSQL store: its version, then a row that does
    // not read back, which it names and fails on.
    let checked = pg(&["check"]);
    let text = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(
        checked.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        text.contains("schema version") && text.contains("no problems found"),
        "{text}"
    );
    let damage = std::process::Command::new("psql")
        .args([
            url.as_str(),
            "-qc",
            &format!(
                "UPDATE \"{schema}\".tasks SET record = json_build_object('id', id) WHERE id = '{}'",
                s.done
            ),
        ])
        .output()
        .unwrap();
    assert!(
        damage.status.success(),
        "{}",
        String::from_utf8_lossy(&damage.stderr)
    );
    let checked = pg(&["check", "--json"]);
    assert!(!checked.status.success());
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(report["unreadable"][0]["id"], s.done.to_string());
    assert_eq!(report["healthy"], false);

    let mut conn = std::process::Command::new("psql");
    conn.args([url.as_str(), "-qc", &format!("DROP SCHEMA \"{schema}\" CASCADE")]);
    let _ = conn.output();
}
