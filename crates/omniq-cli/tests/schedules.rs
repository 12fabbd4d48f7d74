//! `omniq schedules` lists a store's cron schedules, and pauses, resumes and
//! removes one, on both embedded backends.

mod common;

use common::store;
use omniq::{BackendKind, NewTask, OmniQ, Settings};

#[test]
fn schedules_are_listed_paused_resumed_and_removed() {
    for backend in [BackendKind::File, BackendKind::Sqlite] {
        let s = store(backend);
        assert!(s.run(&["schedules"]).contains("no schedules"));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let settings = Settings::builder()
                .backend(backend)
                .base_dir(&s.base)
                .build()
                .unwrap();
            let queue = OmniQ::open(settings).await.unwrap();
            queue
                .schedule_task(
                    "nightly-report",
                    "0 0 3 * * *",
                    NewTask::new("add").args(vec![1.into(), 2.into()]),
                )
                .timezone("Europe/Berlin")
                .create()
                .await
                .unwrap();
        });
        let table = s.run(&["schedules"]);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table.contains("nightly-report")
                && table.contains("0 0 3 * * *")
                && table.contains("Europe/Berlin"),
            "{table}"
        );
        let listed: serde_json::Value = serde_json::from_str(&s.run(&["schedules", "--json"])).unwrap();
        assert_eq!(listed[0]["name"], "nightly-report");
        assert_eq!(listed[0]["task"]["func_path"], "add");
        assert!(listed[0]["next_run"].is_string());

        assert!(s
            .run(&["schedules", "pause", "nightly-report"])
            .contains("paused"));
        let listed: serde_json::Value = serde_json::from_str(&s.run(&["schedules", "--json"])).unwrap();
        assert_eq!(listed[0]["paused"], true);
        assert!(s.run(&["schedules"]).contains("paused"));
        s.run(&["schedules", "resume", "nightly-report"]);
        assert!(s
            .run(&["schedules", "remove", "nightly-report"])
            .contains("removed"));
        assert!(s.run(&["schedules"]).contains("no schedules"));
        let err = s.fail(&["schedules", "remove", "nightly-report"]);
        assert!(err.contains("no schedule named"), "{err}");
    }
}

/// A schedule of one name in both stores: `migrate` replaces the
/// destination's and says so, or keeps it with `--schedules keep`.
#[test]
fn migrate_names_each_schedule_it_replaced_or_kept() {
    let from = store(BackendKind::File);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let to_dir = tempfile::tempdir().unwrap();
    let make = |backend: BackendKind, base: std::path::PathBuf, expression: &'static str| {
        runtime.block_on(async move {
            let settings = Settings::builder()
                .backend(backend)
                .base_dir(&base)
                .build()
                .unwrap();
            let queue = OmniQ::open(settings).await.unwrap();
            queue
                .schedule_task("nightly", expression, NewTask::new("add"))
                .create()
                .await
                .unwrap();
        })
    };
    make(BackendKind::File, from.base.clone(), "0 */5 * * * *");
    make(BackendKind::Sqlite, to_dir.path().to_owned(), "* * * * *");
    let source = format!("file:{}", from.base.display());
    let destination = format!("sqlite:{}", to_dir.path().join("omniq.db").display());
    let expression = || {
        runtime.block_on(async {
            let settings = Settings::builder()
                .backend(BackendKind::Sqlite)
                .base_dir(to_dir.path())
                .build()
                .unwrap();
            OmniQ::open(settings).await.unwrap().schedules().await.unwrap()[0]
                .expression
                .clone()
        })
    };
    let kept = from.run(&[
        "migrate",
        "--from",
        &source,
        "--to",
        &destination,
        "--schedules",
        "keep",
    ]);
    assert!(
        kept.contains("schedule nightly: kept the destination's"),
        "{kept}"
    );
    assert_eq!(expression(), "* * * * *");
    let replaced = from.run(&["migrate", "--from", &source, "--to", &destination]);
    assert!(
        replaced.contains("schedule nightly: replaced the destination's"),
        "{replaced}"
    );
    assert_eq!(expression(), "0 */5 * * * *");
    let refused = from.fail(&[
        "migrate",
        "--from",
        &source,
        "--to",
        &destination,
        "--schedules",
        "merge",
    ]);
    assert!(refused.contains("expected replace or keep"), "{refused}");
}
