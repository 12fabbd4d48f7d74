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
